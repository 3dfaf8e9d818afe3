//! Data: a channel folder and its `ContentType` → an in-memory [`Dataset`].
//!
//! [`load_channel`] is the one entry point: [`format`] reads the `ContentType`, and one file per
//! format reads the files: [`idx`] (images and labels told apart by their headers, sizes checked
//! against the bytes that really arrive), [`csv`], [`parquet`] and [`numpy`]. What comes out
//! is samples as bytes (images, pixels 0–255) or floats (table rows), labels, and an [`Input`]
//! describing them; the training core, `evaluation`, `predict` and `serve` see that description,
//! never a format. [`scale`] standardizes table features with the training data's statistics.

mod csv;
mod folders;
pub mod format;
mod idx;
mod numpy;
mod parquet;
pub mod picture;
pub mod scale;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::user;
use crate::files;

pub use format::Format;
pub use idx::{parse_header, peek_header, read_idx, write_idx, IdxFile, IdxKind};
pub use numpy::parse_npy_header;
#[cfg(test)]
pub(crate) use numpy::tests::npy as numpy_test_npy;
pub use picture::Shape;
pub use scale::Standardize;
pub use table::{parse_feature, MAX_FEATURES};

/// How deep a channel folder may nest.
const MAX_DEPTH: usize = 16;

/// What one sample is, as the model's first layer takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Images of one shape, grey or RGB, pixels 0–255 scaled by 1/255.
    Image(Shape),
    /// Rows of named numeric features, standardized per feature ([`scale`]).
    Table { names: Vec<String> },
}

impl Input {
    pub fn features(&self) -> usize {
        match self {
            Input::Image(shape) => shape.len(),
            Input::Table { names } => names.len(),
        }
    }

    /// The images' shape; `None` for a table.
    pub fn image(&self) -> Option<Shape> {
        match *self {
            Input::Image(shape) => Some(shape),
            Input::Table { .. } => None,
        }
    }

    /// `28x28 grey images` or `30 features`, for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Input::Image(shape) => format!("{} images", shape.describe()),
            Input::Table { names } => format!("{} features", names.len()),
        }
    }
}

/// Every sample's values, row-major: pixels as bytes (scaled at each batch, which keeps the
/// 47 MB Fashion-MNIST training set at 47 MB), or table features as floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Bytes(v) => v.len(),
            Values::Floats(v) => v.len(),
        }
    }

    fn split_off(&mut self, at: usize) -> Values {
        match self {
            Values::Bytes(v) => Values::Bytes(v.split_off(at)),
            Values::Floats(v) => Values::Floats(v.split_off(at)),
        }
    }

    /// The values as an `n × width` CPU tensor, of the values' own type.
    pub fn tensor(&self, width: usize) -> tch::Tensor {
        let t = match self {
            Values::Bytes(v) => tch::Tensor::from_slice(v),
            Values::Floats(v) => tch::Tensor::from_slice(v),
        };
        t.view([(self.len() / width.max(1)) as i64, width as i64])
    }

    /// What each value is multiplied by before the first layer.
    pub fn scale(&self) -> f64 {
        match self {
            Values::Bytes(_) => 1.0 / 255.0,
            Values::Floats(_) => 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len × features` values, row-major.
    pub values: Values,
    /// Class indices from 0.
    pub labels: Vec<u8>,
    pub input: Input,
    /// The format the files were read in.
    pub format: Format,
    /// BLAKE3 of the values and labels as read, so a model records exactly what it learned
    /// from.
    pub fingerprint: String,
    /// Where the data came from, for logs and `model.json`.
    pub source: String,
    /// Class names the data itself gives (class folders), in label order.
    pub classes: Option<Vec<String>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn features(&self) -> usize {
        self.input.features()
    }

    /// Image bytes and shape, for the pictures; `None` for tables.
    pub fn images(&self) -> Option<(&[u8], Shape)> {
        match (&self.values, self.input.image()) {
            (Values::Bytes(v), Some(shape)) => Some((v, shape)),
            _ => None,
        }
    }

    /// The largest label, or `None` with no samples.
    pub fn max_label(&self) -> Option<u8> {
        self.labels.iter().copied().max()
    }

    /// Pairs an images file with a labels file, checking they fit together.
    pub fn from_files(images: IdxFile, labels: IdxFile) -> Result<Self> {
        let IdxKind::Images { count, rows, cols } = images.kind else {
            return Err(user(format!(
                "{}: holds {}, not images",
                images.path.display(),
                images.kind
            )));
        };
        let IdxKind::Labels { count: n_labels } = labels.kind else {
            return Err(user(format!(
                "{}: holds {}, not labels",
                labels.path.display(),
                labels.kind
            )));
        };
        if count != n_labels {
            return Err(user(format!(
                "{} holds {count} images but {} holds {n_labels} labels; counts must match",
                images.path.display(),
                labels.path.display()
            )));
        }
        if count == 0 || rows == 0 || cols == 0 {
            return Err(user(format!(
                "{}: holds {}; no data to use",
                images.path.display(),
                images.kind
            )));
        }
        // A digest of the two files' digests, each made by the thread that read the file.
        // BLAKE3, not SHA-256: SHA-256 runs at ~120 MB/s on a small cloud core, half the time
        // of loading Fashion-MNIST; BLAKE3 runs at several GB/s.
        let mut hash = blake3::Hasher::new();
        hash.update(&images.digest);
        hash.update(&labels.digest);
        let fingerprint = format!("blake3:{}", hash.finalize().to_hex());
        let source = format!("{} + {}", images.path.display(), labels.path.display());
        Ok(Self {
            values: Values::Bytes(images.data),
            labels: labels.data,
            input: Input::Image(Shape::new(rows, cols, 1)),
            format: Format::Idx,
            fingerprint,
            source,
            classes: None,
        })
    }

    /// Splits off the last `fraction` of samples (for `validation_split`, as Keras does).
    pub fn split_tail(mut self, fraction: f64) -> (Dataset, Dataset) {
        let n = self.len();
        let tail = ((n as f64) * fraction).round() as usize;
        let head_len = n - tail;
        let feat = self.features();
        let tail_values = self.values.split_off(head_len * feat);
        let tail_labels = self.labels.split_off(head_len);
        let tail = Dataset {
            values: tail_values,
            labels: tail_labels,
            source: format!("last {tail} samples of {}", self.source),
            fingerprint: format!("{}[{head_len}..]", self.fingerprint),
            ..self.clone()
        };
        self.source = format!("first {head_len} samples of {}", self.source);
        self.fingerprint = format!("{}[..{head_len}]", self.fingerprint);
        (self, tail)
    }
}

/// Every regular file under `dir`, recursively, sorted; names starting with `.` or `_` (hidden
/// files, `_SUCCESS` markers) are skipped, as AWS's containers skip them.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(user(format!("{}: nested more than {MAX_DEPTH} folders deep", dir.display())));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(['.', '_']) {
            tracing::debug!(path = %path.display(), "skipping hidden file");
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| files::io_error(&path, e))?;
        if meta.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads a channel folder in the format its `ContentType` names; pictures keep the first one's
/// shape.
pub fn load_channel(channel: &str, dir: &Path, format: Format) -> Result<Dataset> {
    load_channel_as(channel, dir, format, &picture::Want::default())
}

/// [`load_channel`], with pictures given the shape `pictures` asks for.
pub fn load_channel_as(
    channel: &str,
    dir: &Path,
    format: Format,
    pictures: &picture::Want,
) -> Result<Dataset> {
    if !dir.is_dir() {
        let what = match std::fs::metadata(dir) {
            Ok(_) => "is not a folder (SageMaker puts a channel's files in a folder of its name)",
            Err(_) => "does not exist",
        };
        return Err(user(format!("channel \"{channel}\": folder {} {what}", dir.display())));
    }
    let mut files = Vec::new();
    walk(dir, 0, &mut files)?;
    if files.is_empty() && format != Format::Idx {
        return Err(user(format!(
            "channel \"{channel}\" ({}): holds no files to read as {format}",
            dir.display()
        )));
    }
    match format {
        Format::Idx => load_idx_channel(channel, dir, files),
        Format::Csv { header } => csv::read(channel, dir, &files, header),
        Format::Parquet => parquet::read(channel, dir, &files),
        Format::Npy => numpy::read_npy(channel, dir, &files),
        Format::Npz => numpy::read_npz(channel, dir, &files),
        Format::Images => folders::read(channel, dir, &files, pictures),
    }
}

/// Finds the one images file and the one labels file in a channel folder and loads them.
fn load_idx_channel(channel: &str, dir: &Path, files: Vec<PathBuf>) -> Result<Dataset> {
    let (mut images, mut labels, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for path in files {
        match peek_header(&path)? {
            Ok(IdxKind::Images { .. }) => images.push(path),
            Ok(IdxKind::Labels { .. }) => labels.push(path),
            Err(why) => other.push(format!("{} ({why})", rel(&path, dir))),
        }
    }
    if images.len() != 1 || labels.len() != 1 || !other.is_empty() {
        let list = |v: &[PathBuf]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                some_of(v.iter().map(|p| rel(p, dir)).collect())
            }
        };
        let mut msg = format!(
            "channel \"{channel}\" ({}): expected exactly one IDX images file and one IDX labels \
             file; found images: {}; labels: {}",
            dir.display(),
            list(&images),
            list(&labels)
        );
        if !other.is_empty() {
            msg.push_str(&format!("; other files: {}", some_of(other)));
        }
        return Err(user(msg));
    }
    load_pair(&images[0], &labels[0])
}

/// Loads an explicit images/labels pair, decompressing both at once.
pub fn load_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let (img, lab) = std::thread::scope(|s| {
        let img = std::thread::Builder::new().spawn_scoped(s, || read_idx(images));
        let lab = read_idx(labels);
        let img = img.map_err(|e| crate::error::no_thread(e, "read an images file"));
        (img.and_then(|h| h.join().expect("IDX reader panicked")), lab)
    });
    Dataset::from_files(img?, lab?)
}

/// Refuses labels that are not below `classes`, naming the first.
pub fn check_labels(channel: &str, set: &Dataset, classes: usize) -> Result<()> {
    match set.labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        Some((i, &l)) => Err(user(format!(
            "channel \"{channel}\" ({}): label {l} at sample {i} is not below num_classes \
             {classes}",
            set.source
        ))),
        None => Ok(()),
    }
}

/// The first few of `items`, and how many more: a channel of 20,000 stray files must not make
/// a failure reason of megabytes.
pub(crate) fn some_of(items: Vec<String>) -> String {
    const SHOWN: usize = 5;
    let more = items.len().saturating_sub(SHOWN);
    let mut text = items.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

pub(crate) fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::idx::tests::{images, labels, msg};
    use super::*;

    #[test]
    fn channel_finds_files_by_header_in_nested_folders() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        images(&d.path().join("a/b"), "whatever.bin", 3, true);
        labels(d.path(), "x-images-idx3.gz", &[0, 1, 9], false);
        std::fs::write(d.path().join(".DS_Store"), b"junk").unwrap();
        let ds = load_channel("train", d.path(), Format::Idx).unwrap();
        assert_eq!((ds.len(), ds.input.image(), ds.features()), (3, Some(Shape::new(2, 3, 1)), 6));
        assert_eq!(ds.labels, [0, 1, 9]);
        assert!(ds.fingerprint.starts_with("blake3:"));
    }

    #[test]
    fn channel_errors_list_what_was_found() {
        let d = tempfile::tempdir().unwrap();
        images(d.path(), "i1", 3, false);
        images(d.path(), "i2", 3, false);
        std::fs::write(d.path().join("notes.txt"), b"hi there").unwrap();
        let m = msg(load_channel("train", d.path(), Format::Idx));
        assert!(m.contains("found images: i1, i2; labels: none"), "{m}");
        assert!(m.contains("other files: notes.txt (is not an IDX file"), "{m}");
        let m = msg(load_channel("test", &d.path().join("nope"), Format::Idx));
        assert!(m.contains("channel \"test\": folder") && m.contains("does not exist"), "{m}");
    }

    #[test]
    fn pairs_must_agree_and_labels_fit_the_classes() {
        let d = tempfile::tempdir().unwrap();
        let i = images(d.path(), "i", 3, false);
        let l = labels(d.path(), "l", &[0, 1], false);
        assert!(msg(load_pair(&i, &l)).contains("holds 3 images but"));
        let l = labels(d.path(), "l", &[0, 1, 10], false);
        let ds = load_pair(&i, &l).unwrap();
        assert!(msg(check_labels("train", &ds, 10).map(|_| ds.clone()))
            .contains("label 10 at sample 2 is not below num_classes 10"));
        check_labels("train", &ds, 11).unwrap();
        assert!(msg(load_pair(&l, &i)).contains("not images"));
    }

    #[test]
    fn split_tail_holds_out_the_last_samples() {
        let d = tempfile::tempdir().unwrap();
        let i = images(d.path(), "i", 10, false);
        let l = labels(d.path(), "l", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], false);
        let (train, val) = load_pair(&i, &l).unwrap().split_tail(0.2);
        assert_eq!((train.len(), val.len()), (8, 2));
        assert_eq!(val.labels, [8, 9]);
        assert_eq!(val.images().map(|(v, _)| v.len()), Some(12));
    }
}
