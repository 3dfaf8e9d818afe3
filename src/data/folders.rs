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
//! Pictures are PNG or JPEG files of any colour type, given one shape by [`picture`]: the
//! `image_size` and `image_channels` hyperparameters, or else the channel's first picture,
//! decide it. They are decoded on all cores straight into one buffer of bytes, as IDX images
//! are held. Class folders are read in a fixed shuffled order; `.lst` files in their own order.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use tracing::info;

use super::picture::{self, Shape, Want};
use super::{table, Dataset, Format, Input, Values};
use crate::error::user;
use crate::files;

/// The largest picture file read (a 28×28 image is a few hundred bytes).
const MAX_FILE: u64 = 64 << 20;

/// One picture and its class.
struct Item {
    path: PathBuf,
    label: u8,
}

/// Reads an image channel; `files` are every file below `dir`, sorted.
pub fn read(channel: &str, dir: &Path, files: &[PathBuf], want: &Want) -> Result<Dataset> {
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
    let (pixels, shape) = decode_all(&items, want)?;
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
        input: Input::Image(shape),
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

/// Every picture's pixels in one shape, decoded on all cores (each reading its own files) into
/// one buffer.
fn decode_all(items: &[Item], want: &Want) -> Result<(Vec<u8>, Shape)> {
    let first = &items[0].path;
    let head = files::read_limited(first, MAX_FILE)?;
    let own = picture::header(&head).map_err(|why| user(format!("{}: {why}", first.display())))?;
    let (rows, cols) = want.size.unwrap_or((own.rows, own.cols));
    let shape = Shape::new(rows, cols, want.channels.unwrap_or(own.channels));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = pixel_limit(want, cores);
    if want.size.is_none() && own.pixels() > limit {
        return Err(user(format!(
            "{}: is {}x{} pixels (height x width), over the limit of {limit} pixels per \
             picture at their own size; set image_size to resize pictures",
            first.display(),
            own.rows,
            own.cols
        )));
    }
    let size = shape.len();
    let total = items.len().checked_mul(size).ok_or_else(|| user("too many pixels"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| {
        user(format!(
            "{} pictures of {} need {total} bytes, more than this host can allocate; set a \
             smaller image_size",
            items.len(),
            shape.describe()
        ))
    })?;
    out.resize(total, 0);
    let per = items.len().div_ceil(cores).max(1);
    let resize = want.size.is_some();
    std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * size)
            .zip(items.chunks(per))
            .map(|(buf, part)| {
                s.spawn(move || -> Result<()> {
                    for (dst, item) in buf.chunks_exact_mut(size).zip(part) {
                        dst.copy_from_slice(&decode(item, shape, resize, limit, first)?);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("picture decoder panicked"))
    })?;
    Ok((out, shape))
}

/// The most pixels one picture may have. Without `image_size` every picture keeps its own size,
/// one for all, and the set's buffer bounds it; with it, each decoder thread holds one picture
/// at a time, and those take at most an eighth of the free memory.
fn pixel_limit(want: &Want, threads: usize) -> usize {
    if want.size.is_none() {
        return picture::MAX_PIXELS / 4;
    }
    // A decoded pixel takes up to 8 bytes (16-bit RGBA) before it is converted.
    let free = crate::budget::room().map_or(u64::MAX, |r| r.free());
    let by_memory = free / 8 / (threads as u64 * 8);
    (by_memory.min(picture::MAX_PIXELS as u64) as usize).max(1 << 20)
}

fn decode(item: &Item, shape: Shape, resize: bool, limit: usize, first: &Path) -> Result<Vec<u8>> {
    let bytes = files::read_limited(&item.path, MAX_FILE)?;
    picture::load(&bytes, shape, resize, limit).map_err(|why| {
        let same = if why.contains("over the limit") && !resize {
            "; set image_size to resize pictures".to_string()
        } else if why.starts_with("is ") && why.contains("; expected") {
            format!(
                " ({} is {}x{}): every picture of a channel must have one size, or set \
                 image_size to resize them",
                first.display(),
                shape.rows,
                shape.cols
            )
        } else {
            String::new()
        };
        user(format!("{}: {why}{same}", item.path.display()))
    })
}
