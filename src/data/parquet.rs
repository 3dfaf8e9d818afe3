//! Parquet channels, as AWS's XGBoost container reads them: the label in the first column,
//! numeric or boolean features after it, named by their columns; every file of the channel, in
//! sorted path order, as one table.
//!
//! Parquet stores columns; training wants rows. Each row group's columns are decoded on all
//! cores and written straight into their places in the row-major table, so at most one row
//! group is held twice.

use std::path::{Path, PathBuf};

use ::parquet::basic::Type as Physical;
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::DataType;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::schema::types::ColumnDescriptor;
use anyhow::Result;
use bytes::Bytes;

use super::table::{self, MAX_FEATURES};
use super::{Dataset, Format};
use crate::error::user;
use crate::files;

/// Rows decoded per call; the buffers grow with what the file really holds, never with the
/// row counts its metadata claims.
const BATCH: usize = 8192;
/// The largest Parquet file read, as the IDX reader's limit.
const MAX_FILE: u64 = 16 << 30;

/// Reads `paths` (sorted) as one label-first table.
pub fn read(channel: &str, dir: &Path, paths: &[PathBuf]) -> Result<Dataset> {
    let mut names: Option<Vec<String>> = None;
    let (mut values, mut labels) = (Vec::new(), Vec::new());
    let mut hash = blake3::Hasher::new();
    for path in paths {
        // In memory, not read through the file: the columns are decoded by several threads at
        // once, and duplicated file handles would share one read position.
        let bytes = Bytes::from(files::read_limited(path, MAX_FILE)?);
        hash.update(blake3::hash(&bytes).as_bytes());
        let reader = SerializedFileReader::new(bytes).map_err(|e| {
            user(format!("{}: is not a Parquet file this trainer can read: {e}", path.display()))
        })?;
        let cols = columns(&reader, path)?;
        match &names {
            None => names = Some(cols),
            Some(n) if *n != cols => {
                return Err(user(format!(
                    "{}: its feature columns differ from {}'s (every file of channel \
                     \"{channel}\" must have the same columns, in the same order)",
                    path.display(),
                    paths[0].display()
                )))
            }
            Some(_) => {}
        }
        let width = names.as_ref().map_or(0, Vec::len);
        for rg in 0..reader.num_row_groups() {
            read_row_group(&reader, rg, width, path, &mut values, &mut labels)?;
        }
    }
    let names = names.unwrap_or_default();
    let source = format!("{} ({} Parquet files)", dir.display(), paths.len());
    Ok(table::dataset(Format::Parquet, names, values, labels, hash.finalize(), source))
}

/// The feature columns' names, after checking every column is one this trainer reads.
fn columns(reader: &SerializedFileReader<Bytes>, path: &Path) -> Result<Vec<String>> {
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let cols = schema.columns();
    if cols.len() < 2 {
        return Err(user(format!(
            "{}: has {} column(s); expected the label first and at least one feature",
            path.display(),
            cols.len()
        )));
    }
    if cols.len() - 1 > MAX_FEATURES {
        return Err(user(format!(
            "{}: has {} columns; at most {MAX_FEATURES} features are allowed",
            path.display(),
            cols.len()
        )));
    }
    for c in cols {
        check_column(c, path)?;
    }
    Ok(cols[1..].iter().map(|c| c.path().string()).collect())
}

fn check_column(c: &ColumnDescriptor, path: &Path) -> Result<()> {
    let why = if c.max_rep_level() > 0 {
        "is a list (repeated); features must be one number per row"
    } else {
        match c.physical_type() {
            Physical::BOOLEAN | Physical::INT32 | Physical::INT64 => return Ok(()),
            Physical::FLOAT | Physical::DOUBLE => return Ok(()),
            Physical::BYTE_ARRAY | Physical::FIXED_LEN_BYTE_ARRAY => {
                "holds text or bytes; features must be numeric or boolean (encode categories \
                 as numbers first)"
            }
            Physical::INT96 => "holds timestamps (INT96); features must be numeric or boolean",
        }
    };
    Err(user(format!("{}: column {:?} {why}", path.display(), c.path().string())))
}

/// The row group's rows, row-major, being filled by several threads at once, each writing only
/// its own columns' cells.
#[derive(Clone, Copy)]
struct Cells {
    ptr: *mut f32,
    rows: usize,
    width: usize,
}

// SAFETY: the threads sharing a `Cells` write disjoint cells (each its own columns), and the
// buffer outlives the scope they run in.
unsafe impl Send for Cells {}
// SAFETY: as for Send; nothing reads the cells until every writer has finished.
unsafe impl Sync for Cells {}

impl Cells {
    /// Writes row `r` of feature column `c`; `false` past the last row.
    ///
    /// # Safety
    /// Only one thread may write column `c`, and nothing may read the buffer meanwhile.
    unsafe fn set(&self, r: usize, c: usize, v: f32) -> bool {
        if r >= self.rows {
            return false;
        }
        // SAFETY: r < rows and c < width keep the cell inside the buffer; the caller keeps
        // the column to one writer.
        unsafe { *self.ptr.add(r * self.width + c) = v };
        true
    }
}

/// Appends one row group's rows to `values` (row-major, `width` features) and `labels`.
fn read_row_group(
    reader: &SerializedFileReader<Bytes>,
    rg: usize,
    width: usize,
    path: &Path,
    values: &mut Vec<f32>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let mut label_col = Vec::new();
    read_column(reader, rg, 0, &mut |_, v| {
        label_col.push(v);
        true
    })
    .map_err(|why| column_error(reader, 0, path, why))?;
    let rows = label_col.len();
    let first = labels.len();
    for (i, &v) in label_col.iter().enumerate() {
        let l = table::label(v).map_err(|why| {
            user(format!(
                "{}: row {}: column {:?}: {why}",
                path.display(),
                first + i + 1,
                name(reader, 0)
            ))
        })?;
        labels.push(l);
    }
    let start = values.len();
    values.resize(start + rows * width, 0.0);
    let cells = Cells { ptr: values[start..].as_mut_ptr(), rows, width };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = width.div_ceil(cores).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..width)
            .step_by(per)
            .map(|lo| {
                s.spawn(move || -> Result<()> {
                    for c in lo..(lo + per).min(width) {
                        fill_column(reader, rg, c, cells, path)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("Parquet reader panicked"))
    })
}

/// Decodes feature column `c` straight into its cells, checking its length and values.
fn fill_column(
    reader: &SerializedFileReader<Bytes>,
    rg: usize,
    c: usize,
    cells: Cells,
    path: &Path,
) -> Result<()> {
    let mut bad = None;
    let got = read_column(reader, rg, c + 1, &mut |r, v| {
        let x = v as f32;
        if !x.is_finite() {
            bad = Some((r, v));
            return false;
        }
        // SAFETY: this thread is column c's only writer (read_row_group splits the columns),
        // and nothing reads the cells until the scope ends.
        unsafe { cells.set(r, c, x) }
    })
    .map_err(|why| column_error(reader, c + 1, path, why))?;
    if let Some((r, v)) = bad {
        return Err(user(format!(
            "{}: row {}: column {:?} is {v}; only finite numbers are allowed",
            path.display(),
            r + 1,
            name(reader, c + 1)
        )));
    }
    if got != cells.rows {
        return Err(user(format!(
            "{}: column {:?} has {got} values in a row group of {} rows",
            path.display(),
            name(reader, c + 1),
            cells.rows
        )));
    }
    Ok(())
}

fn name(reader: &SerializedFileReader<Bytes>, c: usize) -> String {
    reader.metadata().file_metadata().schema_descr().column(c).path().string()
}

fn column_error(
    reader: &SerializedFileReader<Bytes>,
    c: usize,
    path: &Path,
    why: String,
) -> anyhow::Error {
    user(format!("{}: column {:?}: {why}", path.display(), name(reader, c)))
}

/// One column of one row group, each value as a number to `sink(row, value)` (which says
/// whether to go on); nulls are refused. Returns how many values there were.
fn read_column(
    reader: &SerializedFileReader<Bytes>,
    rg: usize,
    c: usize,
    sink: &mut dyn FnMut(usize, f64) -> bool,
) -> Result<usize, String> {
    let group = reader.get_row_group(rg).map_err(|e| format!("cannot be read: {e}"))?;
    let column = group.get_column_reader(c).map_err(|e| format!("cannot be read: {e}"))?;
    let nullable = group.metadata().column(c).column_descr().max_def_level() > 0;
    match column {
        ColumnReader::BoolColumnReader(mut r) => {
            drain(&mut r, nullable, |b| f64::from(u8::from(b)), sink)
        }
        ColumnReader::Int32ColumnReader(mut r) => drain(&mut r, nullable, f64::from, sink),
        ColumnReader::Int64ColumnReader(mut r) => drain(&mut r, nullable, |v| v as f64, sink),
        ColumnReader::FloatColumnReader(mut r) => drain(&mut r, nullable, f64::from, sink),
        ColumnReader::DoubleColumnReader(mut r) => drain(&mut r, nullable, |v| v, sink),
        _ => Err("is not numeric".into()),
    }
}

/// Reads a whole column chunk, converting each value.
fn drain<T: DataType>(
    r: &mut ColumnReaderImpl<T>,
    nullable: bool,
    convert: impl Fn(T::T) -> f64,
    sink: &mut dyn FnMut(usize, f64) -> bool,
) -> Result<usize, String>
where
    T::T: Copy,
{
    let mut n = 0;
    let (mut buf, mut defs) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    loop {
        buf.clear();
        defs.clear();
        let (records, read, levels) = r
            .read_records(BATCH, nullable.then_some(&mut defs), None, &mut buf)
            .map_err(|e| format!("cannot be read: {e}"))?;
        if nullable && read < levels {
            let at = n + defs.iter().position(|&d| d == 0).unwrap_or(0) + 1;
            return Err(format!(
                "has a null value (row {at} of its row group); fill or drop missing values first"
            ));
        }
        for &v in &buf {
            if !sink(n, convert(v)) {
                return Ok(n + 1);
            }
            n += 1;
        }
        if records == 0 {
            return Ok(n);
        }
    }
}
