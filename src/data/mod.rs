//! Data: IDX files (gzipped or not) → an in-memory [`Dataset`] of bytes.
//!
//! A channel folder is searched recursively, as an S3 prefix lays it out; images and labels are
//! told apart by their IDX header, never by their names, and
//! their sizes are checked against the bytes that really arrive ([`idx`]).

mod idx;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::user;
use crate::files;

pub use idx::{parse_header, peek_header, read_idx, write_idx, IdxFile, IdxKind};

/// How deep a channel folder may nest.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len × rows × cols` pixels, row-major.
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
    /// BLAKE3 of the images and labels, so a model records exactly what it learned from.
    pub fingerprint: String,
    /// Where the data came from, for logs and `model.json`.
    pub source: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// Pairs an images file with a labels file, checking they fit together.
    pub fn from_files(images: IdxFile, labels: IdxFile, num_classes: usize) -> Result<Self> {
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
        if let Some((i, &l)) =
            labels.data.iter().enumerate().find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(user(format!(
                "{}: label {l} at index {i} is not below num_classes {num_classes}",
                labels.path.display()
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
        Ok(Self { images: images.data, labels: labels.data, rows, cols, fingerprint, source })
    }

    /// Splits off the last `fraction` of samples (for `validation_split`, as Keras does).
    pub fn split_tail(mut self, fraction: f64) -> (Dataset, Dataset) {
        let n = self.len();
        let tail = ((n as f64) * fraction).round() as usize;
        let head_len = n - tail;
        let feat = self.features();
        let tail_images = self.images.split_off(head_len * feat);
        let tail_labels = self.labels.split_off(head_len);
        let tail = Dataset {
            images: tail_images,
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

/// Every regular file under `dir`, recursively, sorted; dot-files are skipped.
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
        if entry.file_name().to_string_lossy().starts_with('.') {
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

/// Finds the one images file and the one labels file in a channel folder and loads them.
pub fn load_channel(channel: &str, dir: &Path, num_classes: usize) -> Result<Dataset> {
    if !dir.is_dir() {
        let what = match std::fs::metadata(dir) {
            Ok(_) => "is not a folder (SageMaker puts a channel's files in a folder of its name)",
            Err(_) => "does not exist",
        };
        return Err(user(format!("channel \"{channel}\": folder {} {what}", dir.display())));
    }
    let mut files = Vec::new();
    walk(dir, 0, &mut files)?;
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
    load_pair(&images[0], &labels[0], num_classes)
}

/// Loads an explicit images/labels pair, decompressing both at once.
pub fn load_pair(images: &Path, labels: &Path, num_classes: usize) -> Result<Dataset> {
    let (img, lab) = std::thread::scope(|s| {
        let img = std::thread::Builder::new().spawn_scoped(s, || read_idx(images));
        let lab = read_idx(labels);
        let img = img.map_err(|e| crate::error::no_thread(e, "read an images file"));
        (img.and_then(|h| h.join().expect("IDX reader panicked")), lab)
    });
    Dataset::from_files(img?, lab?, num_classes)
}

/// The first few of `items`, and how many more: a channel of 20,000 stray files must not make
/// a failure reason of megabytes.
fn some_of(items: Vec<String>) -> String {
    const SHOWN: usize = 5;
    let more = items.len().saturating_sub(SHOWN);
    let mut text = items.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn rel(path: &Path, base: &Path) -> String {
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
        let ds = load_channel("train", d.path(), 10).unwrap();
        assert_eq!((ds.len(), ds.rows, ds.cols, ds.features()), (3, 2, 3, 6));
        assert_eq!(ds.labels, [0, 1, 9]);
        assert!(ds.fingerprint.starts_with("blake3:"));
    }

    #[test]
    fn channel_errors_list_what_was_found() {
        let d = tempfile::tempdir().unwrap();
        images(d.path(), "i1", 3, false);
        images(d.path(), "i2", 3, false);
        std::fs::write(d.path().join("notes.txt"), b"hi there").unwrap();
        let m = msg(load_channel("train", d.path(), 10));
        assert!(m.contains("found images: i1, i2; labels: none"), "{m}");
        assert!(m.contains("other files: notes.txt (is not an IDX file"), "{m}");
        let m = msg(load_channel("test", &d.path().join("nope"), 10));
        assert!(m.contains("channel \"test\": folder") && m.contains("does not exist"), "{m}");
    }

    #[test]
    fn pairs_must_agree_and_labels_fit_the_classes() {
        let d = tempfile::tempdir().unwrap();
        let i = images(d.path(), "i", 3, false);
        let l = labels(d.path(), "l", &[0, 1], false);
        assert!(msg(load_pair(&i, &l, 10)).contains("holds 3 images but"));
        let l = labels(d.path(), "l", &[0, 1, 10], false);
        assert!(
            msg(load_pair(&i, &l, 10)).contains("label 10 at index 2 is not below num_classes 10")
        );
        assert!(msg(load_pair(&l, &i, 10)).contains("not images"));
    }

    #[test]
    fn split_tail_holds_out_the_last_samples() {
        let d = tempfile::tempdir().unwrap();
        let i = images(d.path(), "i", 10, false);
        let l = labels(d.path(), "l", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], false);
        let (train, val) = load_pair(&i, &l, 10).unwrap().split_tail(0.2);
        assert_eq!((train.len(), val.len()), (8, 2));
        assert_eq!(val.labels, [8, 9]);
        assert_eq!(val.images.len(), 12);
    }
}
