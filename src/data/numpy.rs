//! NumPy channels: features `x` and labels `y`, as `numpy.save` and `numpy.savez` write them.
//!
//! - `application/x-npy`: the channel holds `x.npy` and `y.npy`.
//! - `application/x-npz`: the channel holds one or more `.npz` archives, each with arrays `x`
//!   and `y` (`numpy.savez(f, x=…, y=…)`, compressed or not), joined in sorted path order.
//!
//! `x` of `uint8` and shape (N, H, W) is images: pixels ÷ 255, exactly as IDX (augmentation
//! available). Any other `x` (N, …) of numbers or booleans is a table of N rows, its trailing
//! dimensions flattened into features. `y` is (N,) or (N, 1) whole numbers from 0.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::table::{self, MAX_FEATURES};
use super::{Dataset, Format, Input, Shape, Values};
use crate::error::user;
use crate::files;

/// The most one array may hold, as the IDX reader's limit.
const MAX_DATA: u64 = 16 << 30;

/// What a `.npy` header says.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// The dtype, e.g. `<f4` or `|u1`.
    pub descr: String,
    pub shape: Vec<usize>,
    /// Where the data starts.
    pub data_at: usize,
}

impl NpyHeader {
    /// Bytes per value, for the dtypes read here; `None` for any other.
    fn item_size(&self) -> Option<usize> {
        let d = self.descr.as_str();
        let (order, kind) = d.split_at(1.min(d.len()));
        if !matches!(order, "<" | "|" | "=") {
            return None;
        }
        match kind {
            "u1" | "i1" | "b1" => Some(1),
            "u2" | "i2" | "f2" => Some(2),
            "u4" | "i4" | "f4" => Some(4),
            "u8" | "i8" | "f8" => Some(8),
            _ => None,
        }
    }

    fn count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

/// Parses a `.npy` header (format 1 to 3). C order only; the error says what is wrong.
pub fn parse_npy_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("is not a .npy array (no \\x93NUMPY header)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("has .npy format version {v}, which is not read here")),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("has a truncated .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|d| d.split('\'').nth(1))
        .ok_or("has a .npy header without descr")?
        .to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("is in Fortran order; save it in C order (numpy.ascontiguousarray)".into());
    }
    let shape = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("has a .npy header without a shape")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("has a .npy shape ({shape}) that is not sizes")))
        .collect::<Result<_, _>>()?;
    Ok(NpyHeader { descr, shape, data_at: start + len })
}

/// One array, read whole: its header and data bytes (checked against the shape).
struct Array {
    header: NpyHeader,
    data: Vec<u8>,
}

/// Reads one array from `r`, trusting no size in it: the buffer grows with the bytes that
/// arrive, and their count must be exactly what the shape needs.
fn read_array(r: &mut dyn Read, what: &str) -> Result<Array, String> {
    let io = |e: std::io::Error| format!("{what}: cannot be read: {e}");
    let mut head = vec![0u8; 10];
    let n = read_up_to(r, &mut head).map_err(io)?;
    head.truncate(n);
    if n < 10 || !head.starts_with(b"\x93NUMPY") {
        return Err(format!("{what} is not a .npy array (no \\x93NUMPY header)"));
    }
    if head[6] >= 2 {
        let mut more = [0u8; 2];
        let m = read_up_to(r, &mut more).map_err(io)?;
        head.extend_from_slice(&more[..m]);
    }
    let len = match (head[6], head.len()) {
        (1, _) => u16::from_le_bytes([head[8], head[9]]) as usize,
        (2 | 3, 12) => u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
        (v, _) => {
            return Err(format!("{what} has .npy format version {v}, which is not read here"))
        }
    };
    if len > 1 << 20 {
        return Err(format!("{what} has a .npy header of {len} bytes; at most 1 MiB is read"));
    }
    r.take(len as u64).read_to_end(&mut head).map_err(io)?;
    let header = parse_npy_header(&head).map_err(|why| format!("{what} {why}"))?;
    let item = header.item_size().ok_or_else(|| {
        format!(
            "{what} has dtype {:?}; expected little-endian numbers or booleans (uint8, int, \
             float)",
            header.descr
        )
    })?;
    let want =
        header
            .count()
            .and_then(|c| c.checked_mul(item))
            .filter(|&b| b as u64 <= MAX_DATA)
            .ok_or_else(|| format!("{what} has shape {:?}, over the 16 GiB limit", header.shape))?;
    let mut data = Vec::new();
    r.take(want as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{what}: cannot be read: {e}"))?;
    if data.len() != want {
        return Err(format!(
            "{what} holds {} bytes of data; its shape {:?} of {} needs {want}",
            data.len(),
            header.shape,
            header.descr
        ));
    }
    Ok(Array { header, data })
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a channel of `x.npy` and `y.npy`.
pub fn read_npy(channel: &str, dir: &Path, paths: &[PathBuf]) -> Result<Dataset> {
    let find = |stem: &str| {
        paths.iter().find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case(&format!("{stem}.npy")))
        })
    };
    let (Some(x), Some(y)) = (find("x"), find("y")) else {
        return Err(user(format!(
            "channel \"{channel}\" ({}): ContentType application/x-npy needs x.npy (features) \
             and y.npy (labels); found {}",
            dir.display(),
            super::some_of(paths.iter().map(|p| super::rel(p, dir)).collect())
        )));
    };
    let open = |p: &PathBuf| -> Result<Array> {
        let mut f = files::open_regular(p)?;
        read_array(&mut f, &p.display().to_string()).map_err(user)
    };
    let (xa, ya) = (open(x)?, open(y)?);
    let mut hash = blake3::Hasher::new();
    hash.update(&xa.data);
    hash.update(&ya.data);
    let source = format!("{} + {}", x.display(), y.display());
    assemble(Format::Npy, vec![(xa, ya, source.clone())], hash.finalize(), source)
}

/// Reads a channel of `.npz` archives.
pub fn read_npz(channel: &str, dir: &Path, paths: &[PathBuf]) -> Result<Dataset> {
    if paths.is_empty() {
        return Err(user(format!("channel \"{channel}\" ({}): holds no .npz file", dir.display())));
    }
    let mut parts = Vec::with_capacity(paths.len());
    let mut hash = blake3::Hasher::new();
    for p in paths {
        let file = files::open_regular(p)?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| {
            user(format!("{}: is not an .npz archive (numpy.savez): {e}", p.display()))
        })?;
        let mut get = |name: &str| -> Result<Array> {
            let what = format!("{}: array {name:?}", p.display());
            let mut entry = zip.by_name(&format!("{name}.npy")).map_err(|_| {
                user(format!(
                    "{}: has no array {name:?}; save features as x and labels as y \
                     (numpy.savez(file, x=features, y=labels))",
                    p.display()
                ))
            })?;
            read_array(&mut entry, &what).map_err(user)
        };
        let (xa, ya) = (get("x")?, get("y")?);
        hash.update(&xa.data);
        hash.update(&ya.data);
        parts.push((xa, ya, p.display().to_string()));
    }
    let source = format!("{} ({} .npz files)", dir.display(), paths.len());
    assemble(Format::Npz, parts, hash.finalize(), source)
}

/// Checks each (x, y) pair and joins them into one dataset.
fn assemble(
    format: Format,
    parts: Vec<(Array, Array, String)>,
    digest: blake3::Hash,
    source: String,
) -> Result<Dataset> {
    let mut input: Option<Input> = None;
    let (mut bytes, mut floats, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (x, y, what) in parts {
        let n = *x.header.shape.first().ok_or_else(|| {
            user(format!("{what}: x is a single value; expected (samples, features…)"))
        })?;
        let this = describe(&x.header, &what)?;
        match &input {
            Some(i) if i.features() != this.features() || i.image() != this.image() => {
                return Err(user(format!(
                    "{what}: x holds {} but earlier files hold {}",
                    this.describe(),
                    i.describe()
                )))
            }
            _ => input = Some(this),
        }
        labels.extend(read_labels(&y, n, &what)?);
        match (&input, x.header.descr.as_str()) {
            (Some(Input::Image(_)), _) => bytes.extend_from_slice(&x.data),
            _ => floats.extend(as_floats(&x, &what)?),
        }
    }
    let input = input.expect("at least one part");
    let values = match input {
        Input::Image(_) => Values::Bytes(bytes),
        Input::Table { .. } => Values::Floats(floats),
    };
    Ok(Dataset {
        values,
        labels,
        input,
        format,
        fingerprint: format!("blake3:{}", digest.to_hex()),
        source,
        classes: None,
    })
}

/// Images for uint8 (N, H, W) (grey) and (N, H, W, 3) (RGB); a table of the flattened trailing
/// dimensions otherwise.
fn describe(x: &NpyHeader, what: &str) -> Result<Input> {
    let uint8 = matches!(x.descr.as_str(), "|u1" | "<u1" | "=u1");
    match x.shape.as_slice() {
        [_, h, w] if uint8 => Ok(Input::Image(Shape::new(*h, *w, 1))),
        [_, h, w, 3] if uint8 => Ok(Input::Image(Shape::new(*h, *w, 3))),
        [_, rest @ ..] if !rest.is_empty() => {
            let f: usize = rest.iter().product();
            if f == 0 || f > MAX_FEATURES {
                return Err(user(format!(
                    "{what}: x has shape {:?}: {f} features per sample (allowed: 1 to \
                     {MAX_FEATURES})",
                    x.shape
                )));
            }
            Ok(Input::Table { names: table::numbered(f) })
        }
        _ => Err(user(format!(
            "{what}: x has shape {:?}; expected (samples, features) or (samples, height, width)",
            x.shape
        ))),
    }
}

/// Every value of a numeric array as a float, in order.
fn values_f64(a: &Array) -> Box<dyn Iterator<Item = f64> + '_> {
    let d = &a.data;
    let kind = &a.header.descr[1..];
    macro_rules! le {
        ($t:ty, $n:expr) => {
            Box::new(
                d.chunks_exact($n).map(|b| <$t>::from_le_bytes(b.try_into().expect("size")) as f64),
            )
        };
    }
    match kind {
        "u1" | "b1" => Box::new(d.iter().map(|&b| f64::from(b))),
        "i1" => Box::new(d.iter().map(|&b| f64::from(b as i8))),
        "u2" => le!(u16, 2),
        "i2" => le!(i16, 2),
        "f2" => Box::new(d.chunks_exact(2).map(|b| half_to_f64(u16::from_le_bytes([b[0], b[1]])))),
        "u4" => le!(u32, 4),
        "i4" => le!(i32, 4),
        "f4" => le!(f32, 4),
        "u8" => le!(u64, 8),
        "i8" => le!(i64, 8),
        _ => le!(f64, 8),
    }
}

fn half_to_f64(h: u16) -> f64 {
    let (sign, exp, frac) = ((h >> 15) & 1, (h >> 10) & 0x1f, f64::from(h & 0x3ff));
    let v = match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(i32::from(e) - 15),
    };
    if sign == 1 {
        -v
    } else {
        v
    }
}

fn as_floats(x: &Array, what: &str) -> Result<Vec<f32>> {
    let width: usize = x.header.shape[1..].iter().product();
    values_f64(x)
        .enumerate()
        .map(|(i, v)| {
            let f = v as f32;
            if f.is_finite() {
                Ok(f)
            } else {
                Err(user(format!(
                    "{what}: x[{}, {}] is {v}; only finite numbers are allowed",
                    i / width.max(1),
                    i % width.max(1)
                )))
            }
        })
        .collect()
}

fn read_labels(y: &Array, n: usize, what: &str) -> Result<Vec<u8>> {
    match y.header.shape.as_slice() {
        [m] | [m, 1] if *m == n => {}
        other => {
            return Err(user(format!(
                "{what}: y has shape {other:?}; expected ({n},): one label per sample of x"
            )))
        }
    }
    values_f64(y)
        .enumerate()
        .map(|(i, v)| table::label(v).map_err(|why| user(format!("{what}: y[{i}]: {why}"))))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.npy` file's bytes, as `numpy.save` writes them (format 1.0).
    pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn err(r: Result<Dataset>) -> String {
        format!("{:#}", r.expect_err("an error"))
    }

    #[test]
    fn uint8_cubes_are_images_and_anything_else_a_table() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("x.npy"),
            npy("|u1", &[2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]),
        )
        .unwrap();
        std::fs::write(
            d.path().join("y.npy"),
            npy("<i8", &[2], &[1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]),
        )
        .unwrap();
        let paths = vec![d.path().join("x.npy"), d.path().join("y.npy")];
        let ds = read_npy("train", d.path(), &paths).unwrap();
        assert_eq!(ds.input, Input::Image(Shape::new(2, 3, 1)));
        assert_eq!(ds.labels, [1, 3]);
        let floats: Vec<u8> =
            [1.5f32, -2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(d.path().join("x.npy"), npy("<f4", &[2, 2], &floats)).unwrap();
        let ds = read_npy("train", d.path(), &paths).unwrap();
        assert_eq!(ds.input, Input::Table { names: vec!["x0".into(), "x1".into()] });
        assert_eq!(ds.values, Values::Floats(vec![1.5, -2.0, 3.0, 4.0]));
    }

    #[test]
    fn sizes_labels_and_names_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let paths = vec![d.path().join("x.npy"), d.path().join("y.npy")];
        std::fs::write(&paths[0], npy("<f4", &[2, 2], &[0; 12])).unwrap();
        std::fs::write(&paths[1], npy("|u1", &[2], &[0, 1])).unwrap();
        assert!(err(read_npy("train", d.path(), &paths)).contains("holds 12 bytes of data"));
        std::fs::write(&paths[0], npy("<f4", &[2, 2], &[0; 16])).unwrap();
        std::fs::write(&paths[1], npy("|u1", &[3], &[0, 1, 2])).unwrap();
        assert!(err(read_npy("train", d.path(), &paths)).contains("y has shape [3]; expected (2,)"));
        std::fs::write(
            &paths[1],
            npy(
                "<f8",
                &[2],
                &[0; 16].iter().chain(&[0, 0, 0, 0, 0, 0, 0xf8, 0x3f]).copied().collect::<Vec<_>>()
                    [8..],
            ),
        )
        .unwrap();
        assert!(err(read_npy("train", d.path(), &paths))
            .contains("y[1]: label 1.5 is not a whole number"));
        std::fs::write(&paths[0], npy(">f4", &[2, 2], &[0; 16])).unwrap();
        assert!(err(read_npy("train", d.path(), &paths)).contains("dtype \">f4\""));
        assert!(err(read_npy("train", d.path(), &paths[..1]))
            .contains("needs x.npy (features) and y.npy"));
    }
}
