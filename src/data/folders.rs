//! Image channels (`application/x-image`), in the two layouts SageMaker's built-in image
//! classifiers read:
//!
//! - one folder per class, `train/<class name>/<any name>.png|.jpg|.jpeg`, as Keras'
//!   `image_dataset_from_directory` and torchvision's `ImageFolder` read them: class indices
//!   follow the sorted folder names, which become the class names;
//! - `.lst` files, as the MXNet image-classification algorithm reads them: tab-separated
//!   `index⇥label⇥path` lines, the paths relative to the channel. A channel holding a `.lst` file
//!   is read by its lists alone.
//!
//! Pictures are grayscale PNG or JPEG, all of one size (the first decides); they are decoded on
//! all cores straight into one buffer of bytes, as IDX images are held. Class folders are read
//! in a fixed shuffled order; `.lst` files in their own order.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use tracing::info;

use super::{table, Dataset, Format, Input, Values};
use crate::error::user;
use crate::files;

/// The largest picture file read (a 28×28 image is a few hundred bytes).
const MAX_FILE: u64 = 64 << 20;
/// The most pixels one image may have: 4096 × 4096, far beyond what a dense network takes,
/// checked from the first picture's header before anything is allocated for the set.
const MAX_PIXELS: usize = 1 << 24;

/// One picture and its class.
struct Item {
    path: PathBuf,
    label: u8,
}

/// Reads an image channel; `files` are every file below `dir`, sorted.
pub fn read(channel: &str, dir: &Path, files: &[PathBuf]) -> Result<Dataset> {
    let lists: Vec<&PathBuf> = files.iter().filter(|p| has_extension(p, &["lst"])).collect();
    let (items, classes, layout) = if lists.is_empty() {
        let (items, classes) = from_folders(channel, dir)?;
        (items, Some(classes), "class folders")
    } else {
        (from_lists(dir, &lists)?, None, ".lst files")
    };
    if items.is_empty() {
        return Err(user(format!("channel \"{channel}\" ({}): holds no picture", dir.display())));
    }
    let (pixels, (rows, cols)) = decode_all(&items)?;
    let labels: Vec<u8> = items.iter().map(|i| i.label).collect();
    let mut hash = blake3::Hasher::new();
    hash.update(&pixels);
    hash.update(&labels);
    if let Some(names) = &classes {
        hash.update(names.join("\n").as_bytes());
    }
    Ok(Dataset {
        values: Values::Bytes(pixels),
        labels,
        input: Input::Image { rows, cols },
        format: Format::Images,
        fingerprint: format!("blake3:{}", hash.finalize().to_hex()),
        source: format!("{} ({} pictures, {layout})", dir.display(), items.len()),
        classes,
    })
}

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_picture(path: &Path) -> bool {
    has_extension(path, &["png", "jpg", "jpeg"])
}

/// One class per folder, in sorted name order; its pictures at any depth below it.
fn from_folders(channel: &str, dir: &Path) -> Result<(Vec<Item>, Vec<String>)> {
    let root = dir.canonicalize().map_err(|e| files::io_error(dir, e))?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| files::io_error(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| files::io_error(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    let (mut classes, mut items, mut ignored) = (Vec::new(), Vec::new(), 0usize);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(['.', '_']) {
            continue;
        }
        if !path.is_dir() {
            ignored += 1;
            continue;
        }
        let real = path.canonicalize().map_err(|e| files::io_error(&path, e))?;
        if !real.starts_with(&root) {
            return Err(user(format!(
                "{}: class folder {name:?} is a link to {}, outside the channel; copy the \
                 pictures into the channel instead",
                dir.display(),
                real.display()
            )));
        }
        if classes.len() == 256 {
            return Err(user(format!(
                "{}: more than 256 class folders; at most 256 classes are allowed",
                dir.display()
            )));
        }
        let mut found = Vec::new();
        super::walk(&path, 1, &mut found)?;
        let before = items.len();
        for p in found {
            if is_picture(&p) {
                items.push(Item { path: p, label: classes.len() as u8 });
            } else {
                ignored += 1;
            }
        }
        if items.len() == before {
            return Err(user(format!(
                "{}: class folder {name:?} holds no PNG or JPEG picture",
                dir.display()
            )));
        }
        classes.push(name);
    }
    if classes.len() < 2 {
        return Err(user(format!(
            "channel \"{channel}\" ({}): has {} class folder(s) ({}); a classifier needs at least \
             two: lay pictures out as {channel}/<class name>/<picture>.png",
            dir.display(),
            classes.len(),
            classes.join(", ")
        )));
    }
    if ignored > 0 {
        info!(%channel, ignored, "files outside class folders, or not pictures, were ignored");
    }
    // Folder order would put whole classes last, and `validation_split` holds out the last
    // samples: a fixed shuffle (the same on every machine and run) mixes them, as Keras does.
    use rand::{seq::SliceRandom, SeedableRng};
    items.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x1a9e5));
    Ok((items, classes))
}

/// The pictures and labels the `.lst` files name, in their order.
fn from_lists(dir: &Path, lists: &[&PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for list in lists {
        let text = files::read_limited(list, 1 << 30)?;
        let text = String::from_utf8(text)
            .map_err(|_| user(format!("{}: is not UTF-8 text", list.display())))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", list.display(), i + 1);
            let item = lst_line(dir, line).map_err(|why| user(format!("{at}: {why}")))?;
            items.push(item);
        }
    }
    Ok(items)
}

/// `index⇥label⇥path`: the label a whole number from 0 (MXNet writes `1.000000`), the path
/// relative to the channel and inside it, naming a file that exists.
fn lst_line(dir: &Path, line: &str) -> std::result::Result<Item, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [_, label, rel] = fields[..] else {
        return Err(format!(
            "has {} tab-separated fields; expected 3: index, label, relative path",
            fields.len()
        ));
    };
    let value: f64 =
        label.trim().parse().map_err(|_| format!("label {label:?} is not a number"))?;
    let label = table::label(value)?;
    let rel = Path::new(rel.trim());
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("path {} points outside the channel", rel.display()));
    }
    let path = dir.join(rel);
    if !path.is_file() {
        return Err(format!("{} does not exist in the channel", rel.display()));
    }
    Ok(Item { path, label })
}

/// Every picture's pixels, decoded on all cores into one buffer, and their one size.
fn decode_all(items: &[Item]) -> Result<(Vec<u8>, (usize, usize))> {
    let first = &items[0].path;
    let head = files::read_limited(first, MAX_FILE)?;
    let shape = crate::predict::picture_size(&head)
        .map_err(|why| user(format!("{}: {why}", first.display())))?;
    let pixels = shape.0.checked_mul(shape.1).filter(|&p| p > 0 && p <= MAX_PIXELS);
    let size = pixels.ok_or_else(|| {
        user(format!(
            "{}: is {}x{} pixels; at most {MAX_PIXELS} pixels per image are allowed",
            first.display(),
            shape.1,
            shape.0
        ))
    })?;
    let total = items.len().checked_mul(size).ok_or_else(|| user("too many pixels"))?;
    let mut out = vec![0u8; total];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = items.len().div_ceil(cores).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * size)
            .zip(items.chunks(per))
            .map(|(buf, part)| {
                s.spawn(move || -> Result<()> {
                    for (dst, item) in buf.chunks_exact_mut(size).zip(part) {
                        dst.copy_from_slice(&decode(item, shape, first)?);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("picture decoder panicked"))
    })?;
    Ok((out, shape))
}

fn decode(item: &Item, shape: (usize, usize), first: &Path) -> Result<Vec<u8>> {
    let bytes = files::read_limited(&item.path, MAX_FILE)?;
    crate::predict::decode_picture(&bytes, shape).map_err(|why| {
        let same = if why.contains("pixels (width x height)") {
            format!(
                "; {} is {}x{}: every picture of a channel must have one size",
                first.display(),
                shape.1,
                shape.0
            )
        } else {
            String::new()
        };
        user(format!("{}: {why}{same}", item.path.display()))
    })
}
