//! Where each channel's data comes from (`inputdataconfig.json`, `--channel`, S3, the folders in
//! `input/data/`, the installed Fashion-MNIST), loading it, and the checks that it leaves
//! something to train on and score.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use tracing::info;

use super::Options;
use crate::config::TrainConfig;
use crate::contract::{ChannelSpec, InputMode, JobFiles, Paths};
use crate::data::{self, Dataset, Format, Standardize};
use crate::error::user;
use crate::s3::{self, ChannelArg, Location, S3Uri};

/// Where Debian's `dataset-fashion-mnist` installs the real data (and where the image keeps it).
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The channels this trainer reads.
pub const CHANNELS: [&str; 3] = ["train", "validation", "test"];

/// Where one channel's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder read in a format (SageMaker's File mode layout).
    Dir(PathBuf, Format),
    /// An explicit pair of files (the installed Fashion-MNIST).
    Pair { images: PathBuf, labels: PathBuf },
    /// An S3 prefix, downloaded into `input/data/<channel>/` before any data is loaded.
    S3(S3Uri, Format),
}

/// A job's data, loaded and checked.
pub struct Data {
    pub train: Dataset,
    pub validation: Option<Dataset>,
    pub test: Option<Dataset>,
    pub load_seconds: f64,
    /// Table features' standardization, once [`Data::standardize`] has applied it.
    pub scaling: Option<Standardize>,
}

impl Data {
    fn sets(&self) -> impl Iterator<Item = (&'static str, &Dataset)> {
        [
            ("train", Some(&self.train)),
            ("validation", self.validation.as_ref()),
            ("test", self.test.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, d)| d.map(|d| (n, d)))
    }

    /// The largest label of any channel.
    pub fn max_label(&self) -> Option<u8> {
        self.sets().filter_map(|(_, d)| d.max_label()).max()
    }

    /// Settles `cfg`'s classes from the data and checks every label against them. `max_label`
    /// is over every host's data in a multi-host job. Class folders name the classes unless
    /// `class_names` does.
    pub fn resolve_classes(&self, cfg: &mut TrainConfig, max_label: Option<u8>) -> Result<()> {
        if let (true, Some(names)) = (cfg.class_names.is_empty(), &self.train.classes) {
            if cfg.num_classes == 0 || cfg.num_classes == names.len() {
                cfg.class_names = names.clone();
            }
        }
        cfg.resolve_classes(max_label, self.train.format.is_idx());
        for (name, set) in self.sets() {
            data::check_labels(name, set, cfg.num_classes)?;
        }
        info!(classes = cfg.num_classes, names = ?crate::error::clip(&cfg.class_names.join(", "), 200), "classes");
        Ok(())
    }

    /// Standardizes table features with `stats` (the training data's, over every host), in
    /// every channel; images are left as they are.
    pub fn standardize(&mut self, stats: Option<&data::scale::Moments>) {
        let Some(stats) = stats else { return };
        let scaling = stats.standardize();
        for set in [Some(&mut self.train), self.validation.as_mut(), self.test.as_mut()]
            .into_iter()
            .flatten()
        {
            if let data::Values::Floats(v) = &mut set.values {
                scaling.apply(v);
            }
        }
        self.scaling = Some(scaling);
    }

    /// This host's training features' statistics; `None` for images.
    pub fn moments(&self) -> Option<data::scale::Moments> {
        match &self.train.values {
            data::Values::Floats(v) => Some(data::scale::Moments::of(v, self.train.features())),
            data::Values::Bytes(_) => None,
        }
    }
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
    let want = data::picture::Want { size: cfg.image_size, channels: cfg.image_channels };
    let mut sets = load_channels(&sources, &want)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let train = sets.remove("train").expect("train channel resolved");
    let split_used = !sets.contains_key("validation") && cfg.validation_split > 0.0;
    let (train, mut validation) = match sets.remove("validation") {
        Some(v) => (train, Some(v)),
        None if split_used => {
            let (t, v) = train.split_tail(cfg.validation_split);
            (t, Some(v))
        }
        None => (train, None),
    };
    let mut test = sets.remove("test");
    for (name, set) in [("validation", &mut validation), ("test", &mut test)] {
        if let Some(set) = set {
            align_classes(name, &train, set)?;
        }
    }
    check_shapes(&train, [("validation", &validation), ("test", &test)])?;
    check_sizes(cfg, split_used, &train, validation.as_ref(), test.as_ref())?;
    info!(
        train = train.len(),
        validation = validation.as_ref().map_or(0, Dataset::len),
        test = test.as_ref().map_or(0, Dataset::len),
        input = %train.input.describe(),
        format = %train.format,
        seconds = format!("{load_seconds:.3}"),
        "data loaded"
    );
    Ok(Data { train, validation, test, load_seconds, scaling: None })
}

/// Decides where each channel's data comes from: `inputdataconfig.json`'s channels, with the
/// command line's `--channel`s added or replacing those of the same name; with neither, the
/// channel folders in `input/data/`, or, with none there, the installed Fashion-MNIST.
pub fn resolve_channels(
    paths: &Paths,
    files: &JobFiles,
    cli: &[ChannelArg],
) -> Result<BTreeMap<String, Source>> {
    let config_file = paths.input_data_config();
    let empty = Default::default();
    let channels = files.input_data.as_ref().unwrap_or(&empty);
    if channels.is_empty() && cli.is_empty() {
        if let Some(found) = data_dir_channels(paths)? {
            return Ok(found);
        }
        info!(
            dir = DEFAULT_DATA_DIR,
            "no channels configured and input/data is empty: training on the installed \
             Fashion-MNIST"
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
        let format = channel_format(&config_file, name, spec)?;
        info!(channel = %name, mode = ?spec.mode(), distribution = spec.distribution.as_deref().unwrap_or("-"), %format, "channel");
        out.insert(name.clone(), Source::Dir(paths.channel_dir(name), format));
    }
    for c in cli {
        // A --channel that replaces a configured channel keeps its ContentType.
        let format = match channels.get(&c.name) {
            Some(spec) => channel_format(&config_file, &c.name, spec)?,
            None => Format::Idx,
        };
        let (source, from) = match &c.location {
            Location::S3(uri) => (Source::S3(uri.clone(), format), uri.to_string()),
            Location::Local(dir) => (Source::Dir(dir.clone(), format), dir.display().to_string()),
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

/// A channel's `ContentType`, parsed.
fn channel_format(config_file: &Path, name: &str, spec: &ChannelSpec) -> Result<Format> {
    Format::parse(spec.content_type.as_deref())
        .map_err(|why| user(format!("{}: channel \"{name}\": {why}", config_file.display())))
}

/// With no channels configured, the folders `train`, `validation` and `test` in `input/data/`
/// are the channels: what `docker run -v DIR:/opt/ml` with data laid out there means. `None`
/// when `input/data/` is missing or empty. Anything else there is refused rather than ignored.
fn data_dir_channels(paths: &Paths) -> Result<Option<BTreeMap<String, Source>>> {
    let dir = paths.data_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(user(format!("{}: cannot be listed: {e}", dir.display()))),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let stray: Vec<String> = names
        .iter()
        .filter_map(|n| match (CHANNELS.contains(&n.as_str()), dir.join(n).is_dir()) {
            (true, true) => None,
            (true, false) => Some(format!("{n} (not a folder)")),
            (false, _) => Some(crate::error::quote(n)),
        })
        .collect();
    let rule = "with no channels configured, the channels are the folders train (required), \
                validation and test found there";
    if !stray.is_empty() {
        return Err(user(format!(
            "{}: holds {}, which this trainer does not read: {rule}; move or remove the rest",
            dir.display(),
            crate::error::clip(&stray.join(", "), 200)
        )));
    }
    if !names.iter().any(|n| n == "train") {
        return Err(user(format!(
            "{}: holds {} but no train folder: {rule}",
            dir.display(),
            names.join(", ")
        )));
    }
    info!(
        dir = %dir.display(),
        channels = ?names,
        "no channels configured: training on the channel folders in input/data"
    );
    Ok(Some(
        names
            .into_iter()
            .map(|n| (n.clone(), Source::Dir(paths.channel_dir(&n), Format::Idx)))
            .collect(),
    ))
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
            Source::S3(uri, _) => Some(s3::ChannelDownload {
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
            Source::S3(_, format) => {
                let dir = paths.channel_dir(&name);
                (name, Source::Dir(dir, format))
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
    want: &data::picture::Want,
) -> Result<BTreeMap<String, Dataset>> {
    std::thread::scope(|s| {
        let loads: Vec<_> = sources
            .iter()
            .map(|(name, src)| {
                let load =
                    move || load_source(name, src, want).map_err(|e| unreadable_is_user(e, name));
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

fn load_source(name: &str, src: &Source, want: &data::picture::Want) -> Result<Dataset> {
    match src {
        Source::Dir(dir, format) => data::load_channel_as(name, dir, *format, want),
        Source::Pair { images, labels } => {
            if !images.exists() {
                return Err(user(format!(
                    "channel \"{name}\": {} does not exist (install Debian's \
                     dataset-fashion-mnist, or configure channels)",
                    images.display()
                )));
            }
            data::load_pair(images, labels)
        }
        Source::S3(uri, _) => {
            anyhow::bail!("channel \"{name}\": {uri} was not downloaded before loading")
        }
    }
}

/// A channel's file or folder that this process may not read (`chmod 000`, another owner) is
/// the job's input to fix, not a fault of the trainer: `err` as a user error when a permission
/// error caused it.
fn unreadable_is_user(err: anyhow::Error, name: &str) -> anyhow::Error {
    let denied = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if !denied || crate::error::is_user_error(&err) {
        return err;
    }
    // SAFETY: geteuid and getegid only read the process's credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    user(format!(
        "channel \"{name}\": {err:#}: make its folders readable and searchable, and its files \
         readable, by the user the job runs as (uid {uid}, gid {gid})"
    ))
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

/// Class folders are numbered in each channel's own sorted order: a test channel without some
/// class would number the rest differently. Its labels are renumbered by name into the training
/// channel's classes, and a class the training channel lacks is refused.
fn align_classes(name: &str, train: &Dataset, set: &mut Dataset) -> Result<()> {
    let (Some(want), Some(have)) = (&train.classes, &set.classes) else { return Ok(()) };
    let mut map = Vec::with_capacity(have.len());
    for class in have {
        let i = want.iter().position(|w| w == class).ok_or_else(|| {
            user(format!(
                "channel \"{name}\" has class folder {class:?}, which channel \"train\" does \
                 not have (train's classes: {})",
                crate::error::clip(&want.join(", "), 300)
            ))
        })?;
        map.push(i as u8);
    }
    set.labels.iter_mut().for_each(|l| *l = map[*l as usize]);
    set.classes = Some(want.clone());
    Ok(())
}

fn check_shapes<'a>(
    train: &Dataset,
    others: impl IntoIterator<Item = (&'a str, &'a Option<Dataset>)>,
) -> Result<()> {
    for (name, set) in others {
        if let Some(d) = set {
            let same = match (&d.input, &train.input) {
                (data::Input::Table { names: a }, data::Input::Table { names: b }) => {
                    a.len() == b.len()
                }
                (a, b) => a == b,
            };
            if !same {
                let hint = match (&d.input, &train.input) {
                    (data::Input::Image(_), data::Input::Image(_)) => {
                        "; set image_size and image_channels to give every channel's pictures \
                         one shape"
                    }
                    _ => "",
                };
                return Err(user(format!(
                    "channel \"{name}\" has {} but \"train\" has {} ({} and {}){hint}",
                    d.input.describe(),
                    train.input.describe(),
                    d.source,
                    train.source
                )));
            }
        }
    }
    Ok(())
}
