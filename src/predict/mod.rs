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

mod images;
mod load;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::Tensor;

use crate::artifacts;
use crate::data::Input;
use crate::error::one_clean_line;
use crate::evaluation::{self, Predictions};
use crate::files;

pub use images::{read_images, Images};
pub use load::{extract_model, load_model, Loaded};

/// Every input was classified.
pub const EXIT_OK: u8 = 0;
/// One or more inputs could not be classified (each named on stderr), all of them included;
/// the others' lines were written.
pub const EXIT_SOME_FAILED: u8 = 1;
/// The command itself failed: the model could not be loaded, the options are wrong, or the
/// output could not be written.
pub const EXIT_FAILED: u8 = 2;

/// The closing part of `train predict --help`.
pub const HELP: &str = "\
OUTPUT: one JSON object per image and line (JSON Lines), in the order of the arguments:
  {\"source\":\"shoe.png\",\"class\":9,\"class_name\":\"Ankle boot\",
   \"probabilities\":[...one per class...],
   \"top_k\":[{\"class\":9,\"class_name\":\"Ankle boot\",\"probability\":0.97},...]}
  An IDX file's images are named FILE#INDEX (0-based). \"class\" is the first index of the
  largest logit, as in training's accuracy; top_k lists the K most likely classes, best first.

INPUT: PNG or JPEG pictures of any size and colour type, converted to the model's input shape
  (model.json's input.shape: 28x28 grey for Fashion-MNIST) exactly as in training: colour to
  grey or grey to RGB, then resized bilinearly with antialiasing; light objects on a black
  background as in Fashion-MNIST (--invert for dark on light). Or IDX image files of the model's
  size, gzipped or not. Files are told apart by their content, not their names. Pixel values
  0-255 are scaled by model.json's input.scale.
  A model trained on a table (model.json's input.kind \"table\") reads CSV files instead: one
  row of features per line, without the label, no header; each row's line is named FILE:LINE.
  Features are standardized with model.json's input.standardize, as in training.

ERRORS: a file that cannot be classified (missing, not an image, an IDX file of another
  size, a CMYK JPEG, truncated) gets one line on stderr, `error: FILE: why`; the other files are still classified.
  A summary line follows on stderr.

EXIT CODES: 0 every image classified; 1 one or more files, up to all of them, could not be
  classified (the others' lines were written); 2 the command failed: the model could not be
  loaded, the options are wrong or the output could not be written.";

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

/// Classifies one file's images (`count × features` bytes).
pub fn classify(loaded: &Loaded, pixels: &[u8], invert: bool) -> Predictions {
    let features = loaded.model.sizes()[0];
    let count = pixels.len() / features;
    if loaded.small.as_ref().is_some_and(|s| s.fits(count)) {
        let values: Vec<f32> =
            pixels.iter().map(|&v| f32::from(if invert { 255 - v } else { v })).collect();
        return forward(loaded, &values, count, loaded.card.input.scale);
    }
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

/// Refuses pixel values that look scaled to 0–1: every value between 0 and 1 and at least one
/// with a fraction. Models take 0–255, and such an image would be answered as a nearly black
/// one, a confident and useless prediction. Whole numbers (PNG, JPEG, IDX and uint8 pixels)
/// never trip it; a black image of zeros is read as sent.
pub fn check_pixel_scale(pixels: &[f32]) -> std::result::Result<(), String> {
    // The range first: it stops at the first pixel over 1, the usual case, in a few values.
    let unit = pixels.iter().all(|p| (0.0..=1.0).contains(p));
    if unit && pixels.iter().any(|p| p.fract() != 0.0) {
        return Err("every pixel value lies between 0 and 1, with fractions, as in images \
                    scaled to 0-1; the model takes 0 to 255: multiply by 255 (or send the \
                    uint8 pixels)"
            .into());
    }
    Ok(())
}

/// Classifies rows of table features as sent (`count × features` floats): standardized as in
/// training, then the same forward pass.
pub fn classify_rows(loaded: &Loaded, mut rows: Vec<f32>) -> Predictions {
    let features = loaded.model.sizes()[0];
    let scale = loaded.prepare(&mut rows);
    forward(loaded, &rows, rows.len() / features, scale)
}

/// The forward pass of `count` inputs (`values`, already standardized for a table), each value
/// times `scale`: natively for a small model's small batch, else through libtorch. `predict` and
/// `serve` both come here, so the same batch gets the same bits from either.
pub fn forward(loaded: &Loaded, values: &[f32], count: usize, scale: f64) -> Predictions {
    match loaded.small.as_ref().filter(|s| s.fits(count)) {
        Some(small) => small.predict(values, scale as f32),
        None => {
            let features = loaded.model.sizes()[0] as i64;
            let t = Tensor::from_slice(values).view([count as i64, features]);
            evaluation::predict(&loaded.model, &t, scale)
        }
    }
}

/// The largest CSV file `predict` reads for a table model.
const MAX_TABLE_FILE: u64 = 1 << 30;

/// One input file's predictions, and how its samples are named: `file#i` for an IDX file's
/// images, `file:line` for a CSV file's rows, the file alone for one picture.
fn classify_file(
    loaded: &Loaded,
    path: &Path,
    invert: bool,
) -> std::result::Result<(Predictions, Option<char>), String> {
    match &loaded.input {
        Input::Image(shape) => {
            let images = read_images(path, *shape)?;
            let p = classify(loaded, &images.pixels, invert);
            Ok((p, images.idx.then_some('#')))
        }
        Input::Table { names } => {
            let text = files::read_limited(path, MAX_TABLE_FILE).map_err(|e| {
                let m = format!("{e:#}");
                m.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&m).to_string()
            })?;
            let rows = crate::data::table::rows_from_csv(&text, names.len())?;
            Ok((classify_rows(loaded, rows), Some(':')))
        }
    }
}

/// Runs the command: loads the model, classifies, writes the lines to stdout or `out_file`;
/// returns the exit code.
pub fn main(opts: &Options, out_file: Option<&Path>) -> u8 {
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let loaded = match load_model(&opts.model) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "error: {}", one_clean_line(&format!("{e:#}")));
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
            let _ = writeln!(err, "error: {}", one_clean_line(&format!("{e:#}")));
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
        let (p, naming) = match classify_file(loaded, path, opts.invert) {
            Ok(done) => done,
            Err(why) => {
                summary.failed += 1;
                let why = one_clean_line(&format!("{}: {why}", path.display()));
                let _ = writeln!(err, "error: {why}");
                continue;
            }
        };
        for i in 0..p.len() {
            let source = match naming {
                Some('#') => format!("{}#{i}", path.display()),
                Some(_) => format!("{}:{}", path.display(), i + 1),
                None => path.display().to_string(),
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
