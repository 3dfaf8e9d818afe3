//! The images `predict` classifies: PNG, JPEG and IDX files, told apart by their content, given
//! the model's input shape (pictures converted and resized as in training, [`picture`]), or
//! refused in words.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::data::{self, picture, IdxKind, Shape};
use crate::files;

/// The largest PNG or JPEG file read (a 28×28 image is a few hundred bytes).
const MAX_IMAGE_FILE: u64 = 64 << 20;

/// One input file's images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// `count` images of the model's shape.
    pub pixels: Vec<u8>,
    /// From an IDX file (images named `file#index`), else one PNG or JPEG image.
    pub idx: bool,
}

/// Reads one input file's images; `Err` says why it cannot be classified, in words for the user.
pub fn read_images(path: &Path, shape: Shape) -> std::result::Result<Images, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    if meta.is_dir() {
        return Err("is a folder, not an image file".into());
    }
    // A FIFO would block and a device never end: only regular files are read.
    let mut file = files::open_regular(path).map_err(|e| strip_path(path, &e))?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    let head = &head[..n];
    if picture::is_picture(head) {
        Ok(Images { pixels: read_picture(path, meta.len(), shape)?, idx: false })
    } else if head.starts_with(&files::GZIP_MAGIC) || head.starts_with(&[0, 0, 8]) {
        Ok(Images { pixels: read_idx_images(path, shape)?, idx: true })
    } else if n == 0 {
        Err("is empty, not a PNG, JPEG or IDX image file".into())
    } else {
        let hex: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "is not a PNG, JPEG or IDX image file (it starts with bytes {})",
            hex.join(" ")
        ))
    }
}

/// An error about `path` in words, without the path (the caller names the file).
fn strip_path(path: &Path, e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

fn io_reason(e: &io::Error) -> String {
    // "No such file or directory (os error 2)" without the number.
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

/// An IDX file's grey images, of the model's size; for an RGB model each grey is repeated.
fn read_idx_images(path: &Path, shape: Shape) -> std::result::Result<Vec<u8>, String> {
    let (rows, cols) = (shape.rows, shape.cols);
    // read_idx's errors name the file; the caller names it too.
    let idx = data::read_idx(path).map_err(|e| strip_path(path, &e))?;
    match idx.kind {
        IdxKind::Images { rows: r, cols: c, .. } if (r, c) == (rows, cols) => {
            Ok(picture::convert(idx.data, Shape { channels: 1, ..shape }, shape.channels))
        }
        IdxKind::Images { count, rows: r, cols: c } => {
            Err(format!("holds {count} images of {r}x{c} pixels; the model expects {rows}x{cols}"))
        }
        IdxKind::Labels { count } => Err(format!("is an IDX file of {count} labels, not images")),
    }
}

fn read_picture(path: &Path, len: u64, shape: Shape) -> std::result::Result<Vec<u8>, String> {
    if len > MAX_IMAGE_FILE {
        return Err(format!("is {len} bytes, over the {MAX_IMAGE_FILE}-byte limit for an image"));
    }
    let bytes = files::read_limited(path, MAX_IMAGE_FILE).map_err(|e| strip_path(path, &e))?;
    picture::load(&bytes, shape, true, picture::MAX_PIXELS)
}
