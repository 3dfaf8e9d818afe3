//! `train predict`: classifies images with a trained model, one JSON line per image.
//!
//! The model is a model folder (`model.json` + `model.safetensors`) or a `model.tar.gz` as
//! SageMaker stores it. Inputs are PNG or JPEG files of exactly the model's input size in 8-bit
//! (or 16-bit) grayscale, or IDX image files (gzipped or not), told apart by their content. Like
//! Fashion-MNIST, images are light objects on a black background (pixel 0 is background);
//! `--invert` takes 255 − pixel for dark-on-light pictures. Pixels are scaled by `model.json`'s
//! `input.scale`, and each file's images are classified in the batches `train::evaluate` uses, so
//! an IDX test file gets exactly the predictions behind the job's reported test accuracy.
//!
//! A file that cannot be classified (missing, wrong size, not an image, wrong channel count,
//! corrupt) gets one line on stderr; the other files are still classified.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::{Device, Tensor};

use crate::artifacts::{self, ModelCard, MAX_CARD, MODEL_FILE, WEIGHTS_FILE};
use crate::data::{self, IdxKind};
use crate::evaluation::{self, Predictions};
use crate::files;
use crate::model::Mlp;

/// Every input was classified.
pub const EXIT_OK: u8 = 0;
/// Some inputs could not be classified (each named on stderr); the others' lines were written.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Nothing was classified: the model could not be loaded, the options are wrong, or the output
/// could not be written.
pub const EXIT_FAILED: u8 = 2;

/// The closing part of `train predict --help`.
pub const HELP: &str = "\
OUTPUT: one JSON object per image and line (JSON Lines), in the order of the arguments:
  {\"source\":\"shoe.png\",\"class\":9,\"class_name\":\"Ankle boot\",
   \"probabilities\":[...one per class...],
   \"top_k\":[{\"class\":9,\"class_name\":\"Ankle boot\",\"probability\":0.97},...]}
  An IDX file's images are named FILE#INDEX (0-based). \"class\" is the first index of the
  largest logit, as in training's accuracy; top_k lists the K most likely classes, best first.

INPUT: PNG or JPEG images of exactly the model's input size (28x28 for Fashion-MNIST), 8- or
  16-bit grayscale, light objects on a black background as in Fashion-MNIST (--invert for dark on
  light); or IDX image files, gzipped or not. Files are told apart by their content, not their
  names. Pixel values 0-255 are scaled by model.json's input.scale.

ERRORS: a file that cannot be classified (missing, not an image, wrong size, not grayscale,
  truncated) gets one line on stderr, `error: FILE: why`; the other files are still classified.
  A summary line follows on stderr.

EXIT CODES: 0 every image classified; 1 some files could not be classified (the others' lines
  were written); 2 nothing was classified: the model could not be loaded, the options are wrong
  or the output could not be written.";

/// The largest PNG or JPEG file read (a 28×28 image is a few hundred bytes).
const MAX_IMAGE_FILE: u64 = 64 << 20;
/// The largest `model.safetensors` taken from an archive (`model.json`'s is `MAX_CARD`).
const MAX_WEIGHTS: u64 = 4 << 30;

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC: [u8; 3] = [0xff, 0xd8, 0xff];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, Clone)]
pub struct Options {
    /// A model folder or a `model.tar.gz`.
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    /// How many classes each line's `top_k` lists.
    pub top_k: usize,
    /// 255 − pixel before scaling.
    pub invert: bool,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    pub files: usize,
    pub failed: usize,
}

/// One line of output: one image.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// The file, or `file#index` (0-based) for an image of an IDX file.
    pub source: String,
    /// The predicted class: the first index of the largest logit.
    pub class: usize,
    pub class_name: &'a str,
    /// Softmax probabilities, one per class.
    pub probabilities: &'a [f32],
    /// The `--top-k` most likely classes, best first.
    pub top_k: Vec<Ranked<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Ranked<'a> {
    pub class: usize,
    pub class_name: &'a str,
    pub probability: f32,
}

/// A loaded model and what `model.json` says about its input.
pub struct Loaded {
    pub model: Mlp,
    pub card: ModelCard,
}

impl Loaded {
    /// The input's rows and columns, as `model.json` gives them.
    pub fn shape(&self) -> (usize, usize) {
        (self.card.input.shape[0], self.card.input.shape[1])
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
    let [rows, cols] = card.input.shape;
    let features = model.sizes()[0];
    if rows.checked_mul(cols) != Some(features) {
        bail!("{MODEL_FILE}: input shape {rows}x{cols} does not match the first layer's {features} inputs");
    }
    let classes = *model.sizes().last().expect("a model has layers");
    if card.class_names.len() != classes {
        bail!("{MODEL_FILE}: {} class names for {classes} classes", card.class_names.len());
    }
    Ok(Loaded { model, card })
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
    let reader: Box<dyn Read> = if n == 2 && magic == GZIP_MAGIC {
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
            WEIGHTS_FILE => MAX_WEIGHTS,
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

/// One input file's images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// `count × rows × cols` bytes.
    pub pixels: Vec<u8>,
    /// From an IDX file (images named `file#index`), else one PNG or JPEG image.
    pub idx: bool,
}

/// Reads one input file's images; `Err` says why it cannot be classified, in words for the user.
pub fn read_images(
    path: &Path,
    (rows, cols): (usize, usize),
) -> std::result::Result<Images, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    if meta.is_dir() {
        return Err("is a folder, not an image file".into());
    }
    // A FIFO would block and a device never end: only regular files are read.
    let mut file = files::open_regular(path).map_err(|e| strip_path(path, &e))?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    let head = &head[..n];
    if head.starts_with(&PNG_MAGIC) || head.starts_with(&JPEG_MAGIC) {
        Ok(Images { pixels: read_picture(path, meta.len(), (rows, cols))?, idx: false })
    } else if head.starts_with(&GZIP_MAGIC) || head.starts_with(&[0, 0, 8]) {
        Ok(Images { pixels: read_idx_images(path, (rows, cols))?, idx: true })
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

fn read_idx_images(
    path: &Path,
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    // read_idx's errors name the file; the caller names it too.
    let idx = data::read_idx(path).map_err(|e| strip_path(path, &e))?;
    match idx.kind {
        IdxKind::Images { rows: r, cols: c, .. } if (r, c) == (rows, cols) => Ok(idx.data),
        IdxKind::Images { count, rows: r, cols: c } => {
            Err(format!("holds {count} images of {r}x{c} pixels; the model expects {rows}x{cols}"))
        }
        IdxKind::Labels { count } => Err(format!("is an IDX file of {count} labels, not images")),
    }
}

/// Whether a JPEG's last scan ends with the end-of-image marker. The decoder fills a truncated
/// scan with grey rather than failing, which would classify a half image without a word.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xff, 0xda];
    const EOI: [u8; 2] = [0xff, 0xd9];
    // Inside entropy-coded data 0xff is always followed by 0x00 or a restart marker, so the
    // first EOI after the last scan header ends the image.
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == SOS) else { return false };
    bytes[last_scan..].windows(2).any(|w| w == EOI)
}

fn read_picture(
    path: &Path,
    len: u64,
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    if len > MAX_IMAGE_FILE {
        return Err(format!("is {len} bytes, over the {MAX_IMAGE_FILE}-byte limit for an image"));
    }
    let bytes = files::read_limited(path, MAX_IMAGE_FILE).map_err(|e| strip_path(path, &e))?;
    decode_picture(&bytes, (rows, cols))
}

/// A PNG or JPEG picture's grey pixels, `rows × cols` of them, told apart by content; `Err` says
/// in words why it cannot be classified. The one decoder of pictures, for `predict` and `serve`.
pub fn decode_picture(
    bytes: &[u8],
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    if bytes.starts_with(&PNG_MAGIC) {
        read_png(bytes, (rows, cols))
    } else if bytes.starts_with(&JPEG_MAGIC) {
        read_jpeg(bytes, (rows, cols))
    } else {
        Err("is not a PNG or JPEG image".into())
    }
}

/// `Err` unless the picture is `cols` wide and `rows` high; checked from the header, before the
/// pixels are decoded.
fn check_size(w: usize, h: usize, (rows, cols): (usize, usize)) -> std::result::Result<(), String> {
    if (w, h) == (cols, rows) {
        Ok(())
    } else {
        Err(format!("is {w}x{h} pixels (width x height); the model expects {cols}x{rows}"))
    }
}

fn not_grayscale(what: &str) -> String {
    format!("has {what}; expected 1 (grayscale): convert it to 8-bit grayscale first")
}

fn read_png(bytes: &[u8], shape: (usize, usize)) -> std::result::Result<Vec<u8>, String> {
    let unreadable = |e: png::DecodingError| format!("is not a readable PNG image: {e}");
    let mut decoder =
        png::Decoder::new_with_limits(io::Cursor::new(bytes), png::Limits { bytes: 64 << 20 });
    // Grey levels of 1, 2, 4 or 16 bits become 8-bit ones.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let info = reader.info();
    check_size(info.width as usize, info.height as usize, shape)?;
    match info.color_type {
        png::ColorType::Grayscale => {}
        png::ColorType::GrayscaleAlpha => {
            return Err(not_grayscale("2 channels (grayscale and alpha)"))
        }
        png::ColorType::Rgb => return Err(not_grayscale("3 channels (RGB)")),
        png::ColorType::Rgba => return Err(not_grayscale("4 channels (RGBA)")),
        png::ColorType::Indexed => return Err(not_grayscale("a colour palette (indexed colour)")),
    }
    let mut buf = vec![0; reader.output_buffer_size().ok_or("is too large an image")?];
    let frame = reader.next_frame(&mut buf).map_err(unreadable)?;
    buf.truncate(frame.buffer_size());
    match frame.color_type {
        png::ColorType::Grayscale => Ok(buf),
        // A grey level marked transparent (tRNS) comes out with an alpha channel: keep the grey.
        png::ColorType::GrayscaleAlpha => Ok(buf.into_iter().step_by(2).collect()),
        other => Err(format!("decodes to {other:?} pixels; expected grayscale")),
    }
}

fn read_jpeg(bytes: &[u8], shape: (usize, usize)) -> std::result::Result<Vec<u8>, String> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let unreadable =
        |e: zune_jpeg::errors::DecodeErrors| format!("is not a readable JPEG image: {e}");
    let options = DecoderOptions::default().set_max_width(16384).set_max_height(16384);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(unreadable)?;
    let info = decoder.info().ok_or("is not a readable JPEG image")?;
    check_size(info.width as usize, info.height as usize, shape)?;
    match decoder.input_colorspace() {
        Some(ColorSpace::Luma) => {}
        Some(ColorSpace::CMYK | ColorSpace::YCCK) => {
            return Err(not_grayscale("4 channels (CMYK)"))
        }
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::BGR) => {
            return Err(not_grayscale("3 channels (colour)"))
        }
        other => return Err(format!("has colour space {other:?}; expected grayscale")),
    }
    if !jpeg_is_complete(bytes) {
        return Err("is a truncated JPEG image (no end-of-image marker after its last scan)".into());
    }
    decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
    let pixels = decoder.decode().map_err(unreadable)?;
    if pixels.len() != shape.0 * shape.1 {
        return Err(format!(
            "decodes to {} bytes, not {} grey pixels",
            pixels.len(),
            shape.0 * shape.1
        ));
    }
    Ok(pixels)
}

/// Classifies one file's images (`count × features` bytes).
pub fn classify(loaded: &Loaded, pixels: &[u8], invert: bool) -> Predictions {
    let features = loaded.model.sizes()[0];
    let count = pixels.len() / features;
    let t = if invert {
        let inv: Vec<u8> = pixels.iter().map(|&v| 255 - v).collect();
        Tensor::from_slice(&inv)
    } else {
        Tensor::from_slice(pixels)
    };
    evaluation::predict(
        &loaded.model,
        &t.view([count as i64, features as i64]),
        loaded.card.input.scale,
    )
}

/// Runs the command: loads the model, classifies, writes the lines to stdout or `out_file`;
/// returns the exit code.
pub fn main(opts: &Options, out_file: Option<&Path>) -> u8 {
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let loaded = match load_model(&opts.model) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            return EXIT_FAILED;
        }
    };
    let result = match out_file {
        Some(path) => {
            let mut buf = Vec::new();
            run(opts, &loaded, &mut buf, &mut err).and_then(|s| {
                write_out(path, &buf).with_context(|| format!("-o {}", path.display()))?;
                Ok(s)
            })
        }
        None => {
            let stdout = io::stdout();
            run(opts, &loaded, &mut io::BufWriter::new(stdout.lock()), &mut err)
        }
    };
    match result {
        Ok(s) => {
            let plural =
                |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            let mut line = format!(
                "classified {} from {}",
                plural(s.images, "image"),
                plural(s.files - s.failed, "file")
            );
            if s.failed > 0 {
                line += &format!("; {} could not be classified", plural(s.failed, "file"));
            }
            let _ = writeln!(err, "{line}");
            if s.failed > 0 {
                EXIT_SOME_FAILED
            } else {
                EXIT_OK
            }
        }
        // A reader that stopped early (`| head`) is not an error worth a message.
        Err(e) if broken_pipe(&e) => EXIT_FAILED,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            EXIT_FAILED
        }
    }
}

/// Writes `-o`'s file: a regular file (or a link's target) by temporary name and rename, so a
/// reader never sees half of it; into a device or FIFO as it is, since replacing `/dev/null`
/// or a pipe with a regular file would break whatever else uses it.
fn write_out(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("is a folder; name a file to write the lines to"),
        Ok(m) if !m.is_file() => {
            let mut f = fs::OpenOptions::new().write(true).open(path)?;
            f.write_all(bytes)?;
            return Ok(f.flush()?);
        }
        _ => {}
    }
    // A link is kept and its target replaced, as a shell's `>` would write through it.
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(t) => t,
            Err(_) => {
                let link = fs::read_link(path)?;
                path.parent().unwrap_or(Path::new(".")).join(link)
            }
        },
        _ => path.to_path_buf(),
    };
    artifacts::write_atomic(&target, bytes)
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    let kind = e.downcast_ref::<io::Error>().map(io::Error::kind).or_else(|| {
        e.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind)
    });
    kind == Some(io::ErrorKind::BrokenPipe)
}

/// Classifies every input, writing one JSON line per image to `out` and one line per failed
/// file to `err`. Only errors writing `out` end the run early.
pub fn run(
    opts: &Options,
    loaded: &Loaded,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Summary> {
    let names = &loaded.card.class_names;
    if opts.top_k == 0 || opts.top_k > names.len() {
        bail!("--top-k {}: the model has {} classes", opts.top_k, names.len());
    }
    let mut summary = Summary { images: 0, files: opts.inputs.len(), failed: 0 };
    for path in &opts.inputs {
        let images = match read_images(path, loaded.shape()) {
            Ok(images) => images,
            Err(why) => {
                summary.failed += 1;
                let _ = writeln!(err, "error: {}: {why}", path.display());
                continue;
            }
        };
        let p = classify(loaded, &images.pixels, opts.invert);
        for i in 0..p.len() {
            let source = if images.idx {
                format!("{}#{i}", path.display())
            } else {
                path.display().to_string()
            };
            let line = Line {
                source,
                class: p.classes[i],
                class_name: &names[p.classes[i]],
                probabilities: p.probabilities(i),
                top_k: p
                    .top_k(i, opts.top_k)
                    .into_iter()
                    .map(|c| Ranked {
                        class: c,
                        class_name: &names[c],
                        probability: p.probabilities(i)[c],
                    })
                    .collect(),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        summary.images += p.len();
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::metrics::Metrics;
    use crate::model;

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
        let cfg = TrainConfig::default();
        let m = Mlp::glorot(&model::layer_sizes(784, &[16], 10), 1, Device::Cpu);
        let card = ModelCard::new(&cfg, &m, [28, 28], Default::default(), "cpu".into());
        let metrics = Metrics {
            epochs: vec![],
            test: None,
            early_stop: None,
            data_load_seconds: 0.0,
            train_seconds: 0.0,
        };
        artifacts::write_model_dir(d.path(), &m, &card, &metrics).unwrap();
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

    fn encode_png(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn grayscale_pngs_of_any_depth_become_8_bit_pixels() {
        use png::{BitDepth, ColorType::Grayscale};
        // 16-bit: the high byte of each big-endian sample.
        let sixteen = encode_png(2, 1, Grayscale, BitDepth::Sixteen, &[0xab, 0x12, 0x00, 0xff]);
        assert_eq!(read_png(&sixteen, (1, 2)), Ok(vec![0xab, 0x00]));
        // 4-bit: 0..15 spread over 0..255.
        let four = encode_png(2, 1, Grayscale, BitDepth::Four, &[0x0f]);
        assert_eq!(read_png(&four, (1, 2)), Ok(vec![0, 255]));
        // Height and width are told apart: a 2-wide, 1-high picture is not 1 wide and 2 high.
        let err = read_png(&four, (2, 1)).unwrap_err();
        assert_eq!(err, "is 2x1 pixels (width x height); the model expects 1x2");
        let cut = &sixteen[..sixteen.len() - 20];
        assert!(read_png(cut, (1, 2)).unwrap_err().starts_with("is not a readable PNG image"));
    }

    #[test]
    fn jpeg_completeness_looks_after_the_last_scan() {
        let whole = [0xff, 0xd8, 0xff, 0xda, 1, 2, 0xff, 0x00, 3, 0xff, 0xd9];
        assert!(jpeg_is_complete(&whole));
        assert!(!jpeg_is_complete(&whole[..9]));
        // An end marker before the last scan (an embedded thumbnail's) does not count.
        let thumb = [0xff, 0xd8, 0xff, 0xda, 0xff, 0xd9, 0xff, 0xda, 5, 6];
        assert!(!jpeg_is_complete(&thumb));
        assert!(!jpeg_is_complete(&[0xff, 0xd8, 0xff, 0xd9]), "no scan at all");
    }
}
