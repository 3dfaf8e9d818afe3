//! CSV channels as SageMaker's built-in algorithms read them: one sample per line, the label in
//! the first column, no header unless `header=present`, comma-separated, every file of the
//! channel (gzipped or not) in sorted path order as one table.
//!
//! Each file is split at line ends into pieces that are parsed on all cores at once, straight
//! into one buffer of exactly the table's size, so loading needs little more memory than the
//! text and the floats.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::table::{self, MAX_FEATURES};
use super::{Dataset, Format};
use crate::error::{clip, user};
use crate::files;

/// The most text one file may inflate to, as the IDX reader's limit.
const MAX_TEXT: u64 = 16 << 30;

/// One file's rows.
struct Part {
    values: Vec<f32>,
    labels: Vec<u8>,
}

/// Reads `paths` (sorted) as one label-first table.
pub fn read(channel: &str, dir: &Path, paths: &[PathBuf], header: bool) -> Result<Dataset> {
    let format = Format::Csv { header };
    let mut names: Option<Vec<String>> = None;
    let mut parts = Vec::with_capacity(paths.len());
    let mut hash = blake3::Hasher::new();
    for path in paths {
        let file = read_text(path)?;
        let text = file.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&file);
        hash.update(digest(text).as_bytes());
        let (head, body_at) = first_line(text, header, path)?;
        let width = match (head, &names) {
            (Head::Names(h), Some(n)) if h.len() != n.len() => {
                return Err(user(format!(
                    "{}: the header has {} feature columns, but {} has {} (every file of \
                     channel \"{channel}\" must have the same columns)",
                    path.display(),
                    h.len(),
                    paths[0].display(),
                    n.len()
                )));
            }
            (_, Some(n)) => n.len(),
            (Head::Names(h), None) => names.insert(h).len(),
            (Head::Width(w), None) => names.insert(table::numbered(w)).len(),
        };
        parts.push(parse(&text[body_at..], width, path, 1 + usize::from(body_at > 0))?);
    }
    let names = names.unwrap_or_default();
    let (values, labels) = concat(parts);
    let source = format!("{} ({} CSV files)", dir.display(), paths.len());
    tracing::debug!(%channel, rows = labels.len(), features = names.len(), "CSV read");
    Ok(table::dataset(format, names, values, labels, hash.finalize(), source))
}

/// BLAKE3 of fixed 8 MiB pieces, hashed on all cores, then of their digests: the same on any
/// machine, whatever its core count, and a fraction of one core's time over a large file.
fn digest(text: &[u8]) -> blake3::Hash {
    const PIECE: usize = 8 << 20;
    let pieces: Vec<&[u8]> = text.chunks(PIECE).collect();
    let mut digests = vec![[0u8; 32]; pieces.len()];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = pieces.len().div_ceil(cores).max(1);
    std::thread::scope(|s| {
        for (out, input) in digests.chunks_mut(per).zip(pieces.chunks(per)) {
            s.spawn(move || {
                for (d, p) in out.iter_mut().zip(input) {
                    *d = *blake3::hash(p).as_bytes();
                }
            });
        }
    });
    let mut all = blake3::Hasher::new();
    digests.iter().for_each(|d| {
        all.update(d);
    });
    all.finalize()
}

/// A file's bytes: mapped in place when plain (no copy of a file of hundreds of megabytes),
/// inflated into memory when gzipped.
enum Text {
    Owned(Vec<u8>),
    Mapped(crate::inflate::MappedFile),
}

impl std::ops::Deref for Text {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Text::Owned(v) => v,
            Text::Mapped(m) => m,
        }
    }
}

/// A file's text, inflated if it is gzipped; the caller skips a UTF-8 byte-order mark.
fn read_text(path: &Path) -> Result<Text> {
    let mut file = files::open_regular(path)?;
    let mut head = [0u8; 2];
    let n = file.read(&mut head).map_err(|e| files::io_error(path, e))?;
    let text = if head[..n] == files::GZIP_MAGIC {
        let mut raw = Vec::new();
        let chained = std::io::Cursor::new(head).chain(std::io::BufReader::new(file));
        flate2::read::MultiGzDecoder::new(chained)
            .take(MAX_TEXT + 1)
            .read_to_end(&mut raw)
            .map_err(|e| user(format!("{}: cannot be read: {e}", path.display())))?;
        if raw.len() as u64 > MAX_TEXT {
            return Err(user(format!("{}: holds more than 16 GiB of text", path.display())));
        }
        Text::Owned(raw)
    } else {
        // SAFETY: SageMaker writes a channel's files before the job starts and nothing
        // truncates them while it runs; if something did, the SIGBUS would end the job (the
        // caveat the IDX reader accepts too, see MappedFile).
        match unsafe { crate::inflate::MappedFile::new(&file) } {
            Some(map) => Text::Mapped(map),
            None => {
                let mut raw = head[..n].to_vec();
                file.read_to_end(&mut raw).map_err(|e| files::io_error(path, e))?;
                Text::Owned(raw)
            }
        }
    };
    refuse_other_formats(&text, path)?;
    Ok(text)
}

/// A Parquet, NumPy or IDX file in a CSV channel would otherwise fail as "not a number" on
/// its first byte; saying what it is tells the user which `ContentType` they meant.
fn refuse_other_formats(raw: &[u8], path: &Path) -> Result<()> {
    let what = if raw.starts_with(b"PAR1") {
        "a Parquet file (ContentType application/x-parquet)"
    } else if raw.starts_with(b"\x93NUMPY") || raw.starts_with(b"PK\x03\x04") {
        "a NumPy file (ContentType application/x-npy or application/x-npz)"
    } else if super::parse_header(raw).is_ok() {
        "an IDX file (no ContentType, or application/x-idx)"
    } else if raw.iter().take(4096).any(|&b| b == 0) {
        "binary, not text"
    } else {
        return Ok(());
    };
    Err(user(format!(
        "{}: is {what}, in a channel whose ContentType says CSV; a channel holds one format",
        path.display()
    )))
}

enum Head {
    /// `header=present`: the feature columns' names.
    Names(Vec<String>),
    /// No header: how many feature columns the first row has.
    Width(usize),
}

/// Reads the first line: a header to name the features, or the first row to count them.
fn first_line(text: &[u8], header: bool, path: &Path) -> Result<(Head, usize)> {
    let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
    let line = trim_cr(&text[..end]);
    let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(user(format!(
            "{}:1: the first line is empty; expected {}",
            path.display(),
            if header { "a header" } else { "a label and features" }
        )));
    }
    if fields.len() < 2 {
        return Err(user(format!(
            "{}:1: has one column; expected the label and at least one feature, separated by \
             commas",
            path.display()
        )));
    }
    if fields.len() - 1 > MAX_FEATURES {
        return Err(user(format!(
            "{}:1: has {} columns; at most {MAX_FEATURES} features are allowed",
            path.display(),
            fields.len()
        )));
    }
    if header {
        let names =
            fields[1..].iter().map(|f| String::from_utf8_lossy(unquote(f)).into_owned()).collect();
        return Ok((Head::Names(names), (end + 1).min(text.len())));
    }
    // A field that is no number at all suggests a header; one that is merely not finite or
    // empty is left for the row's own message.
    let words = |f: &&[u8]| {
        std::str::from_utf8(unquote(f))
            .map_or(true, |t| t.trim().parse::<f32>().is_err() && !t.trim().is_empty())
    };
    if let Some((col, f)) = fields.iter().enumerate().find(|(_, f)| words(f)) {
        return Err(user(format!(
            "{}:1: column {} is {}, not a number: if the first line is a header, set the \
             channel's ContentType to text/csv;header=present",
            path.display(),
            col + 1,
            crate::error::quote(&clip(&String::from_utf8_lossy(f), 40))
        )));
    }
    Ok((Head::Width(fields.len() - 1), 0))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn unquote(field: &[u8]) -> &[u8] {
    let f = field.trim_ascii();
    f.strip_prefix(b"\"").and_then(|f| f.strip_suffix(b"\"")).unwrap_or(f)
}

/// A piece of a file: whole lines, where its first line sits in the file, and its rows.
struct Piece<'a> {
    text: &'a [u8],
    first_line: usize,
    rows: usize,
}

/// Parses the body of one file (`first_line` is its first line's number) into rows of `width`
/// features, on all cores.
fn parse(text: &[u8], width: usize, path: &Path, first_line: usize) -> Result<Part> {
    let pieces = split(text, first_line);
    let rows: usize = pieces.iter().map(|p| p.rows).sum();
    let mut values = vec![0f32; rows * width];
    let mut labels = vec![0u8; rows];
    let errors: Vec<Option<String>> = std::thread::scope(|s| {
        let (mut v, mut l) = (&mut values[..], &mut labels[..]);
        let mut handles = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            let (pv, rest_v) = std::mem::take(&mut v).split_at_mut(piece.rows * width);
            let (pl, rest_l) = std::mem::take(&mut l).split_at_mut(piece.rows);
            (v, l) = (rest_v, rest_l);
            handles.push(s.spawn(move || parse_piece(piece, width, pv, pl).err()));
        }
        handles.into_iter().map(|h| h.join().expect("CSV parser panicked")).collect()
    });
    if let Some(why) = errors.into_iter().flatten().next() {
        return Err(user(format!("{}:{why}", path.display())));
    }
    Ok(Part { values, labels })
}

/// Splits `text` at line ends into about twice as many pieces as there are cores, counting
/// each piece's rows (non-blank lines) in parallel.
fn split(text: &[u8], first_line: usize) -> Vec<Piece<'_>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = (cores * 2).min(text.len() / (1 << 16) + 1);
    let mut bounds = vec![0];
    for k in 1..want {
        let guess = (text.len() * k / want).max(*bounds.last().unwrap_or(&0));
        match text[guess..].iter().position(|&b| b == b'\n') {
            Some(i) => bounds.push(guess + i + 1),
            None => break,
        }
    }
    bounds.push(text.len());
    bounds.dedup();
    let slices: Vec<&[u8]> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    let counts: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = slices.iter().map(|t| s.spawn(move || count_lines(t))).collect();
        handles.into_iter().map(|h| h.join().expect("line counter panicked")).collect()
    });
    let mut line = first_line;
    slices
        .into_iter()
        .zip(counts)
        .map(|(text, (lines, rows))| {
            let piece = Piece { text, first_line: line, rows };
            line += lines;
            piece
        })
        .collect()
}

/// Lines (ends counted, plus an unterminated last one) and non-blank lines.
fn count_lines(text: &[u8]) -> (usize, usize) {
    let (mut lines, mut rows) = (0, 0);
    for line in lines_of(text) {
        lines += 1;
        rows += usize::from(!is_blank(line));
    }
    (lines, rows)
}

/// The lines of `text`, without their `\n`; a final `\n` ends the last line rather than
/// starting an empty one. memchr finds the ends many bytes at a time.
fn lines_of(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', text);
    std::iter::from_fn(move || {
        let end = match ends.next() {
            Some(end) => end,
            None if start < text.len() => text.len(),
            None => return None,
        };
        let line = &text[start..end];
        start = end + 1;
        Some(line)
    })
}

fn is_blank(line: &[u8]) -> bool {
    // Almost every line starts with a digit: decided on its first byte.
    line.first().is_none_or(u8::is_ascii_whitespace) && line.iter().all(u8::is_ascii_whitespace)
}

/// Parses one piece into its rows of `values` and `labels`; the error names the line and
/// column (1-based, as editors count) and the value.
fn parse_piece(
    piece: &Piece<'_>,
    width: usize,
    values: &mut [f32],
    labels: &mut [u8],
) -> Result<(), String> {
    let mut row = 0;
    for (i, line) in lines_of(piece.text).enumerate() {
        if is_blank(line) {
            continue;
        }
        let at = piece.first_line + i;
        let out = &mut values[row * width..(row + 1) * width];
        labels[row] = parse_row(trim_cr(line), out).map_err(|why| format!("{at}: {why}"))?;
        row += 1;
    }
    Ok(())
}

/// One line: the label, then exactly `out.len()` features.
fn parse_row(line: &[u8], out: &mut [f32]) -> Result<u8, String> {
    match whole_row(line, out) {
        Some(label) => Ok(label),
        None => parse_fields(line, out),
    }
}

/// The usual line fast, in one pass: whole numbers (pixel values, counts, codes) and commas,
/// nothing else. `None` for anything else, which the general parser reads or explains.
fn whole_row(line: &[u8], out: &mut [f32]) -> Option<u8> {
    let (label, mut at) = digits(line, 0)?;
    for slot in out.iter_mut() {
        if line.get(at) != Some(&b',') {
            return None;
        }
        let (v, next) = digits(line, at + 1)?;
        *slot = v as f32;
        at = next;
    }
    (at == line.len()).then_some(u8::try_from(label).ok()?)
}

/// The whole number of one to seven digits at `start` (exact in a float), and where it ends.
fn digits(line: &[u8], start: usize) -> Option<(u32, usize)> {
    let mut v = 0u32;
    let mut at = start;
    while let Some(&b) = line.get(at).filter(|b| b.is_ascii_digit()) {
        v = v * 10 + u32::from(b - b'0');
        at += 1;
        if at - start > 7 {
            return None;
        }
    }
    (at > start).then_some((v, at))
}

/// Any line, field by field, each checked: the label, then exactly `out.len()` features.
fn parse_fields(line: &[u8], out: &mut [f32]) -> Result<u8, String> {
    let mut fields = line.split(|&b| b == b',');
    let first = fields.next().unwrap_or_default();
    let label = table::parse_feature(unquote(first))
        .map_err(|why| format!("column 1 (the label) {why}"))
        .and_then(|v| table::label(f64::from(v)).map_err(|why| format!("column 1: {why}")))?;
    let mut n = 0;
    for field in fields {
        if n < out.len() {
            out[n] = table::parse_feature(unquote(field))
                .map_err(|why| format!("column {} {why}", n + 2))?;
        }
        n += 1;
    }
    if n != out.len() {
        return Err(format!(
            "has {} columns; expected {} (the label and {} features, as the first row)",
            n + 1,
            out.len() + 1,
            out.len()
        ));
    }
    Ok(label)
}

/// Joins the files' rows; a single file's are moved, not copied.
fn concat(mut parts: Vec<Part>) -> (Vec<f32>, Vec<u8>) {
    if parts.len() == 1 {
        let p = parts.pop().expect("one part");
        return (p.values, p.labels);
    }
    let mut values = Vec::with_capacity(parts.iter().map(|p| p.values.len()).sum());
    let mut labels = Vec::with_capacity(parts.iter().map(|p| p.labels.len()).sum());
    for p in parts {
        values.extend_from_slice(&p.values);
        labels.extend_from_slice(&p.labels);
    }
    (values, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Input, Values};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(r: Result<Dataset>) -> String {
        format!("{:#}", r.expect_err("an error"))
    }

    #[test]
    fn files_join_in_order_with_or_without_headers() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.csv", "1,0.5,2\n0,1e1,-3\n");
        let b = write(d.path(), "b.csv", "2,7,8\r\n\n");
        let ds = read("train", d.path(), &[a, b], false).unwrap();
        assert_eq!(ds.labels, [1, 0, 2]);
        assert_eq!(ds.values, Values::Floats(vec![0.5, 2.0, 10.0, -3.0, 7.0, 8.0]));
        assert_eq!(ds.input, Input::Table { names: vec!["x0".into(), "x1".into()] });
        let h = write(d.path(), "h.csv", "label,\"height\",width\n3,1,2\n");
        let ds = read("train", d.path(), &[h], true).unwrap();
        assert_eq!(ds.input, Input::Table { names: vec!["height".into(), "width".into()] });
        assert_eq!(ds.labels, [3]);
    }

    #[test]
    fn many_pieces_parse_as_one() {
        let d = tempfile::tempdir().unwrap();
        let text: String = (0..50_000).map(|i| format!("{},{i},{}.25\n", i % 7, i % 13)).collect();
        let p = write(d.path(), "big.csv", &text);
        let ds = read("train", d.path(), &[p], false).unwrap();
        assert_eq!(ds.len(), 50_000);
        let Values::Floats(v) = &ds.values else { panic!("floats") };
        assert_eq!((v[2 * 49_999], v[2 * 49_999 + 1]), (49_999.0, (49_999 % 13) as f32 + 0.25));
        assert_eq!(ds.labels[49_999], (49_999 % 7) as u8);
    }

    #[test]
    fn bad_cells_are_named_by_file_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("1,2,3\n1,2\n", "bad.csv:2: has 2 columns; expected 3"),
            ("1,2,3\n1,2,x\n", "bad.csv:2: column 3 is \"x\", not a number"),
            ("1,2,3\n\n1,,3\n", "bad.csv:3: column 2 is empty"),
            ("1,2,nan\n", "bad.csv:1: column 3 is \"nan\""),
            ("1.5,2,3\n", "bad.csv:1: column 1: label 1.5 is not a whole number"),
            ("-1,2,3\n", "bad.csv:1: column 1: label -1 is negative"),
            ("label,a,b\n1,2,3\n", "header=present"),
            ("1\n", "has one column"),
        ];
        for (text, want) in cases {
            let p = write(d.path(), "bad.csv", text);
            let m = err(read("train", d.path(), &[p], false));
            assert!(m.contains(want), "{text:?}: {m}");
        }
        let p = write(d.path(), "x.parquet", "PAR1....");
        assert!(err(read("train", d.path(), &[p], false)).contains("is a Parquet file"));
    }

    #[test]
    fn gzipped_files_read_as_plain_ones() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"\xef\xbb\xbf1,2\n0,3\n").unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let ds = read("train", d.path(), &[p], false).unwrap();
        assert_eq!((ds.labels.clone(), ds.values), (vec![1, 0], Values::Floats(vec![2.0, 3.0])));
    }
}
