//! The model `predict` and `serve` classify with: a model folder, or a `model.tar.gz` as
//! SageMaker stores it, unpacked without trusting its entries.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::artifacts::{self, ModelCard, MAX_CARD, MODEL_FILE, WEIGHTS_FILE};
use crate::data::Input;
use crate::files;
use crate::model::Mlp;

/// The largest `model.safetensors` taken from an archive (`model.json`'s is `MAX_CARD`).
const MAX_WEIGHTS: u64 = 4 << 30;

/// A loaded model and what `model.json` says about its input.
pub struct Loaded {
    pub model: Mlp,
    pub card: ModelCard,
    /// The input `model.json` describes, checked against the weights.
    pub input: Input,
    /// The weights in plain memory, for a small model's small batches.
    pub small: Option<crate::evaluation::SmallMlp>,
}

impl Loaded {
    /// Raw values (pixels 0–255, or table features as sent) → what the first layer takes:
    /// table features standardized as in training, in place. Returns the scale the forward
    /// pass multiplies by.
    pub fn prepare(&self, values: &mut [f32]) -> f64 {
        if let Some(s) = &self.card.input.standardize {
            s.apply(values);
        }
        self.card.input.scale
    }
}

/// Loads a model folder, or a `model.tar.gz` (or plain tar) through a private temporary folder.
pub fn load_model(path: &Path) -> Result<Loaded> {
    let meta = fs::metadata(path).with_context(|| format!("model {}", path.display()))?;
    let (model, card) = if meta.is_dir() {
        artifacts::load_model_dir(path, Device::Cpu)?
    } else {
        let dir = tempfile::Builder::new().prefix("smtrain-model-").tempdir()?;
        extract_model(path, dir.path())?;
        artifacts::load_model_dir(dir.path(), Device::Cpu)
            .with_context(|| format!("model {}", path.display()))?
    };
    let input =
        card.input.input(model.sizes()[0]).map_err(|why| anyhow::anyhow!("{MODEL_FILE}: {why}"))?;
    let classes = *model.sizes().last().expect("a model has layers");
    if card.class_names.len() != classes {
        bail!("{MODEL_FILE}: {} class names for {classes} classes", card.class_names.len());
    }
    let small = crate::evaluation::SmallMlp::of(&model);
    Ok(Loaded { model, card, input, small })
}

/// Copies `model.json` and `model.safetensors` out of a tar archive (gzipped or not) into `dir`.
/// Only those two names are written, at names of our choosing, so no entry can write elsewhere;
/// still, an archive with entries that would leave its folder (`..`, absolute paths) is refused
/// whole, as are the two files when they are links or larger than any real model.
pub fn extract_model(archive: &Path, dir: &Path) -> Result<()> {
    let what = || format!("model archive {}", archive.display());
    let mut file = files::open_regular(archive).with_context(what)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).with_context(what)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(file);
    let reader: Box<dyn Read> = if n == 2 && magic == files::GZIP_MAGIC {
        Box::new(flate2::read::MultiGzDecoder::new(head))
    } else {
        Box::new(head)
    };
    let mut tar = tar::Archive::new(reader);
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let entries = tar.entries().with_context(|| format!("{}: not a tar archive", what()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: not a readable tar archive", what()))?;
        let path = entry.path().with_context(what)?.into_owned();
        if path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
        {
            bail!(
                "{}: entry {} would leave the archive's folder; refusing it",
                what(),
                path.display()
            );
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let limit = match name {
            MODEL_FILE => MAX_CARD,
            // With model.json already read, the weights may be no larger than its layers need
            // (what loading checks too): a header claiming more is refused before any write.
            WEIGHTS_FILE => weights_limit(dir).unwrap_or(MAX_WEIGHTS),
            _ => continue,
        };
        let parent: PathBuf = path
            .parent()
            .map(|p| {
                p.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
            })
            .unwrap_or_default();
        if found.iter().any(|(n, _)| n == name) {
            bail!("{}: holds more than one {name}", what());
        }
        if !entry.header().entry_type().is_file() {
            bail!(
                "{}: {} is a {:?} entry, not a regular file",
                what(),
                path.display(),
                entry.header().entry_type()
            );
        }
        let size = entry.header().size().with_context(what)?;
        if size > limit {
            bail!("{}: {} is {size} bytes, over the {limit}-byte limit", what(), path.display());
        }
        let mut out = File::options().write(true).create_new(true).open(dir.join(name))?;
        let copied = io::copy(&mut (&mut entry).take(limit + 1), &mut out)
            .with_context(|| format!("{}: reading {}", what(), path.display()))?;
        if copied > limit {
            bail!("{}: {} is over the {limit}-byte limit", what(), path.display());
        }
        found.push((name.to_string(), parent));
    }
    for name in [MODEL_FILE, WEIGHTS_FILE] {
        if !found.iter().any(|(n, _)| n == name) {
            bail!(
                "{}: holds no {name} (a model archive holds {MODEL_FILE} and {WEIGHTS_FILE}, as \
                 the job's model folder)",
                what()
            );
        }
    }
    if found[0].1 != found[1].1 {
        bail!("{}: {MODEL_FILE} and {WEIGHTS_FILE} are in different folders", what());
    }
    Ok(())
}

/// The most bytes `model.safetensors` may hold for the `model.json` already extracted into
/// `dir`: its layers' float32 weights and a header of at most `MAX_CARD`. `None` before that
/// card is there, or when it cannot be read (loading then says why).
fn weights_limit(dir: &Path) -> Option<u64> {
    let card: ModelCard = serde_json::from_slice(&fs::read(dir.join(MODEL_FILE)).ok()?).ok()?;
    let params = crate::model::param_count_checked(&card.architecture.layer_sizes)?;
    (params as u64).checked_mul(4)?.checked_add(MAX_CARD).map(|n| n.min(MAX_WEIGHTS))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A tar entry with the raw `name` (unchecked, as a hostile archive could hold it).
    fn entry(
        b: &mut tar::Builder<impl Write>,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        claimed: Option<u64>,
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(claimed.unwrap_or(data.len() as u64));
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// A real model folder's two files.
    fn model_files() -> (Vec<u8>, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        artifacts::write_test_model(d.path(), 16);
        (
            fs::read(d.path().join(MODEL_FILE)).unwrap(),
            fs::read(d.path().join(WEIGHTS_FILE)).unwrap(),
        )
    }

    /// An entry's name, type, data, and the size its header claims (default: the data's).
    type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<u64>);

    /// Writes a gzipped tar of `entries` and tries to extract a model from it.
    fn extract(entries: &[Entry]) -> (tempfile::TempDir, Result<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let path = d.join("model.tar.gz");
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), Default::default());
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, claimed) in entries {
            entry(&mut b, name, *kind, data, *claimed);
        }
        b.into_inner().unwrap().finish().unwrap();
        let out = d.join("out");
        fs::create_dir(&out).unwrap();
        let result = extract_model(&path, &out).map(|()| out);
        (tmp, result)
    }

    #[test]
    fn a_model_archive_is_extracted_and_loads() {
        use tar::EntryType::{Directory, Regular};
        let (card, weights) = model_files();
        for prefix in ["", "./", "model/"] {
            let (c, w) = (format!("{prefix}{MODEL_FILE}"), format!("{prefix}{WEIGHTS_FILE}"));
            let (_tmp, dir) = extract(&[
                ("model/", Directory, b"", None),
                (&c, Regular, &card, None),
                (&w, Regular, &weights, None),
                ("metrics.json", Regular, b"{}", None),
            ]);
            let dir = dir.unwrap();
            let mut names: Vec<_> =
                fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            assert_eq!(names, [MODEL_FILE, WEIGHTS_FILE], "prefix {prefix:?}");
            let (m, back) = artifacts::load_model_dir(&dir, Device::Cpu).unwrap();
            assert_eq!(m.sizes(), [784, 16, 10]);
            assert_eq!(back.class_names.len(), 10);
        }
    }

    #[test]
    fn hostile_or_incomplete_archives_are_refused() {
        use tar::EntryType::{Regular, Symlink};
        let (card, weights) = model_files();
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (
                vec![
                    ("../evil", Regular, &b"x"[..], None),
                    (MODEL_FILE, Regular, &card, None),
                    (WEIGHTS_FILE, Regular, &weights, None),
                ],
                "entry ../evil would leave the archive's folder",
            ),
            (
                vec![
                    ("/etc/model.json", Regular, &card[..], None),
                    (WEIGHTS_FILE, Regular, &weights, None),
                ],
                "entry /etc/model.json would leave",
            ),
            (
                vec![(MODEL_FILE, Symlink, b"", None), (WEIGHTS_FILE, Regular, &weights, None)],
                "model.json is a Symlink entry, not a regular file",
            ),
            (vec![(MODEL_FILE, Regular, &card, None)], "holds no model.safetensors"),
            (
                vec![(MODEL_FILE, Regular, &card, None), (MODEL_FILE, Regular, &card, None)],
                "holds more than one model.json",
            ),
            (
                vec![
                    (MODEL_FILE, Regular, b"", Some(MAX_CARD + 1)),
                    (WEIGHTS_FILE, Regular, &weights, None),
                ],
                "over the 16777216-byte limit",
            ),
            (
                // A weights header claiming far more than model.json's layers need, refused
                // from the header before anything is written.
                vec![
                    (MODEL_FILE, Regular, &card, None),
                    (WEIGHTS_FILE, Regular, &weights, Some(1 << 30)),
                ],
                "model.safetensors is 1073741824 bytes, over the 16828136-byte limit",
            ),
            (
                vec![
                    ("a/model.json", Regular, &card, None),
                    ("b/model.safetensors", Regular, &weights, None),
                ],
                "are in different folders",
            ),
        ];
        for (entries, want) in cases {
            let err = format!("{:#}", extract(&entries).1.unwrap_err());
            assert!(err.contains(want), "{err}\nwant: {want}");
        }
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("m.tar.gz"), "not an archive at all").unwrap();
        assert!(extract_model(&d.path().join("m.tar.gz"), d.path()).is_err());
    }
}
