//! Where each channel's data comes from (`inputdataconfig.json`, `--channel`, S3, the installed
//! Fashion-MNIST), loading it, and the checks that it leaves something to train on and score.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use tracing::info;

use super::Options;
use crate::config::TrainConfig;
use crate::contract::{ChannelSpec, InputMode, JobFiles, Paths};
use crate::data::{self, Dataset};
use crate::error::user;
use crate::s3::{self, ChannelArg, Location, S3Uri};

/// Where Debian's `dataset-fashion-mnist` installs the real data (and where the image keeps it).
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The channels this trainer reads.
pub const CHANNELS: [&str; 3] = ["train", "validation", "test"];

/// Where one channel's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder searched for one images and one labels file (SageMaker's File mode layout).
    Dir(PathBuf),
    /// An explicit pair of files (the installed Fashion-MNIST).
    Pair { images: PathBuf, labels: PathBuf },
    /// An S3 prefix, downloaded into `input/data/<channel>/` before any data is loaded.
    S3(S3Uri),
}

/// A job's data, loaded and checked.
pub struct Data {
    pub train: Dataset,
    pub validation: Option<Dataset>,
    pub test: Option<Dataset>,
    pub load_seconds: f64,
}

/// Resolves, fetches and loads every channel, holds out `validation_split` when there is no
/// validation channel, and checks the sets against each other.
pub fn load(
    paths: &Paths,
    files: &JobFiles,
    opts: &Options,
    cfg: &TrainConfig,
    stop: &AtomicBool,
) -> Result<Data> {
    let sources = resolve_channels(paths, files, &opts.channels)?;
    let sources = fetch_remote(paths, sources, stop)?;
    let started = Instant::now();
    let mut sets = load_channels(&sources, cfg.num_classes)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let train = sets.remove("train").expect("train channel resolved");
    let split_used = !sets.contains_key("validation") && cfg.validation_split > 0.0;
    let (train, validation) = match sets.remove("validation") {
        Some(v) => (train, Some(v)),
        None if split_used => {
            let (t, v) = train.split_tail(cfg.validation_split);
            (t, Some(v))
        }
        None => (train, None),
    };
    let test = sets.remove("test");
    check_shapes(&train, [("validation", &validation), ("test", &test)])?;
    check_sizes(cfg, split_used, &train, validation.as_ref(), test.as_ref())?;
    info!(
        train = train.len(),
        validation = validation.as_ref().map_or(0, Dataset::len),
        test = test.as_ref().map_or(0, Dataset::len),
        image = %format!("{}x{}", train.rows, train.cols),
        seconds = format!("{load_seconds:.3}"),
        "data loaded"
    );
    Ok(Data { train, validation, test, load_seconds })
}

/// Decides where each channel's data comes from: `inputdataconfig.json`'s channels, with the
/// command line's `--channel`s added or replacing those of the same name.
pub fn resolve_channels(
    paths: &Paths,
    files: &JobFiles,
    cli: &[ChannelArg],
) -> Result<BTreeMap<String, Source>> {
    let config_file = paths.input_data_config();
    let empty = Default::default();
    let channels = files.input_data.as_ref().unwrap_or(&empty);
    if channels.is_empty() && cli.is_empty() {
        refuse_unconfigured_data(paths)?;
        info!(
            dir = DEFAULT_DATA_DIR,
            "no channels configured: training on the installed Fashion-MNIST"
        );
        return Ok(default_sources(Path::new(DEFAULT_DATA_DIR)));
    }
    check_cli_channels(cli)?;
    let origin = match (channels.is_empty(), cli.is_empty()) {
        (false, true) => config_file.display().to_string(),
        (true, false) => "--channel".to_string(),
        _ => format!("{} and --channel", config_file.display()),
    };
    let mut names: Vec<&str> = channels.keys().map(String::as_str).collect();
    names.extend(cli.iter().map(|c| c.name.as_str()).filter(|n| !channels.contains_key(*n)));
    if !names.contains(&"train") {
        return Err(user(format!(
            "{origin}: channels {names:?} are configured but \"train\" is not (train is \
             required; validation and test are optional)"
        )));
    }
    let mut out = BTreeMap::new();
    for (name, spec) in channels {
        if !CHANNELS.contains(&name.as_str()) {
            return Err(user(format!(
                "{}: channel \"{name}\" is not one this trainer reads (train, validation, test)",
                config_file.display()
            )));
        }
        if cli.iter().any(|c| &c.name == name) {
            continue;
        }
        check_readable(&config_file, name, spec)?;
        info!(channel = %name, mode = ?spec.mode(), distribution = spec.distribution.as_deref().unwrap_or("-"), "channel");
        out.insert(name.clone(), Source::Dir(paths.channel_dir(name)));
    }
    for c in cli {
        let (source, from) = match &c.location {
            Location::S3(uri) => (Source::S3(uri.clone()), uri.to_string()),
            Location::Local(dir) => (Source::Dir(dir.clone()), dir.display().to_string()),
        };
        info!(channel = %c.name, %from, "channel from the command line");
        out.insert(c.name.clone(), source);
    }
    Ok(out)
}

/// `--channel`s name each channel once, and only channels this trainer reads.
fn check_cli_channels(cli: &[ChannelArg]) -> Result<()> {
    for (i, c) in cli.iter().enumerate() {
        if cli[..i].iter().any(|d| d.name == c.name) {
            return Err(user(format!("--channel {}: given more than once", c.name)));
        }
        if !CHANNELS.contains(&c.name.as_str()) {
            return Err(user(format!(
                "--channel {}: \"{}\" is not a channel this trainer reads (train, validation, \
                 test)",
                c.name, c.name
            )));
        }
    }
    Ok(())
}

/// A channel of `inputdataconfig.json` in a mode and record format this trainer reads.
fn check_readable(config_file: &Path, name: &str, spec: &ChannelSpec) -> Result<()> {
    if spec.mode() == InputMode::Pipe {
        return Err(user(format!(
            "{}: channel \"{name}\" uses Pipe mode, which this trainer does not support yet; use \
             File or FastFile",
            config_file.display()
        )));
    }
    if spec.record_wrapper.as_deref().is_some_and(|w| !w.eq_ignore_ascii_case("None")) {
        return Err(user(format!(
            "{}: channel \"{name}\" uses RecordWrapperType {}, which this trainer does not read; \
             use None (plain IDX files)",
            config_file.display(),
            spec.record_wrapper.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// With no channels configured the job trains on the installed Fashion-MNIST; data laid out
/// under `input/data/` would then be silently ignored, which is never what was meant.
fn refuse_unconfigured_data(paths: &Paths) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(paths.data_dir()) else { return Ok(()) };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(user(format!(
        "{} configures no channels, but {} holds {}: declare the channels there (or pass \
         --channel), or remove that data to train on the installed Fashion-MNIST",
        paths.input_data_config().display(),
        paths.data_dir().display(),
        crate::error::clip(&found.join(", "), 200)
    )))
}

/// Downloads the channels that live in S3 into their `input/data/<channel>/` folders, all
/// listed before any is downloaded, and points their sources there.
fn fetch_remote(
    paths: &Paths,
    sources: BTreeMap<String, Source>,
    stop: &AtomicBool,
) -> Result<BTreeMap<String, Source>> {
    let remote: Vec<s3::ChannelDownload> = sources
        .iter()
        .filter_map(|(name, src)| match src {
            Source::S3(uri) => Some(s3::ChannelDownload {
                name: name.clone(),
                uri: uri.clone(),
                dir: paths.channel_dir(name),
            }),
            _ => None,
        })
        .collect();
    if remote.is_empty() {
        return Ok(sources);
    }
    s3::download_channels(&remote, stop)?;
    Ok(sources
        .into_iter()
        .map(|(name, src)| match src {
            Source::S3(_) => {
                let dir = paths.channel_dir(&name);
                (name, Source::Dir(dir))
            }
            other => (name, other),
        })
        .collect())
}

/// The installed Fashion-MNIST as train and test channels.
pub fn default_sources(dir: &Path) -> BTreeMap<String, Source> {
    let pair = |prefix: &str| Source::Pair {
        images: dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        labels: dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
    };
    BTreeMap::from([("train".to_string(), pair("train")), ("test".to_string(), pair("t10k"))])
}

/// Loads every channel, all at once: decompressing and hashing the files is most of the cost,
/// and it runs in parallel.
fn load_channels(
    sources: &BTreeMap<String, Source>,
    classes: usize,
) -> Result<BTreeMap<String, Dataset>> {
    std::thread::scope(|s| {
        let loads: Vec<_> = sources
            .iter()
            .map(|(name, src)| {
                let load = move || load_source(name, src, classes);
                (name, std::thread::Builder::new().spawn_scoped(s, load))
            })
            .collect();
        loads
            .into_iter()
            .map(|(name, h)| {
                let h = h.map_err(|e| crate::error::no_thread(e, "load a channel"))?;
                Ok((name.clone(), h.join().expect("channel loader panicked")?))
            })
            .collect()
    })
}

fn load_source(name: &str, src: &Source, classes: usize) -> Result<Dataset> {
    match src {
        Source::Dir(dir) => data::load_channel(name, dir, classes),
        Source::Pair { images, labels } => {
            if !images.exists() {
                return Err(user(format!(
                    "channel \"{name}\": {} does not exist (install Debian's \
                     dataset-fashion-mnist, or configure channels)",
                    images.display()
                )));
            }
            data::load_pair(images, labels, classes)
        }
        Source::S3(uri) => {
            anyhow::bail!("channel \"{name}\": {uri} was not downloaded before loading")
        }
    }
}

/// Refuses data that leaves nothing to learn from or to score: a model trained on no samples
/// would be reported as a success with a loss of `null`.
fn check_sizes(
    cfg: &TrainConfig,
    split_used: bool,
    train: &Dataset,
    validation: Option<&Dataset>,
    test: Option<&Dataset>,
) -> Result<()> {
    let held_out = validation.map_or(0, Dataset::len);
    let split = |left: &str| {
        format!(
            "hyperparameter \"validation_split\" is {}: of {} training samples it holds out {} \
             and leaves {} {left}",
            cfg.validation_split,
            train.len() + held_out,
            held_out,
            train.len()
        )
    };
    if train.is_empty() {
        return Err(user(if split_used {
            split("to train on; lower it, or give a validation channel")
        } else {
            format!("channel \"train\" has no samples to train on ({})", train.source)
        }));
    }
    for (name, set) in [("validation", validation), ("test", test)] {
        if let Some(d) = set.filter(|d| d.is_empty()) {
            return Err(user(if name == "validation" && split_used {
                split("to train on, but none to validate on; raise it or give a validation channel")
            } else {
                format!("channel \"{name}\" has no samples to score ({})", d.source)
            }));
        }
    }
    if cfg.early_stopping_patience > 0 && validation.is_none() {
        return Err(user(format!(
            "hyperparameter \"early_stopping_patience\" is {}, but there is no validation data \
             to watch: add a validation channel or set validation_split",
            cfg.early_stopping_patience
        )));
    }
    Ok(())
}

fn check_shapes<'a>(
    train: &Dataset,
    others: impl IntoIterator<Item = (&'a str, &'a Option<Dataset>)>,
) -> Result<()> {
    for (name, set) in others {
        if let Some(d) = set {
            if (d.rows, d.cols) != (train.rows, train.cols) {
                return Err(user(format!(
                    "channel \"{name}\" has {}x{} images but \"train\" has {}x{} ({})",
                    d.rows, d.cols, train.rows, train.cols, d.source
                )));
            }
        }
    }
    Ok(())
}
