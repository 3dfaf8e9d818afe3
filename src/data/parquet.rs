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
        hash.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    }
    hash.update(bytemuck_f32(&values));
    hash.update(&labels);
    let names = names.unwrap_or_default();
    let source = format!("{} ({} Parquet files)", dir.display(), paths.len());
    Ok(table::dataset(Format::Parquet, names, values, labels, hash.finalize(), source))
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is four plain bytes; the slice covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
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

/// Appends one row group's rows to `values` (row-major, `width` features) and `labels`.
fn read_row_group(
    reader: &SerializedFileReader<Bytes>,
    rg: usize,
    width: usize,
    path: &Path,
    values: &mut Vec<f32>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let label_col = read_column(reader, rg, 0).map_err(|why| column_error(reader, 0, path, why))?;
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
    let out = &mut values[start..];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = width.div_ceil(cores);
    let results: Vec<Result<(), anyhow::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..width)
            .step_by(per.max(1))
            .map(|lo| {
                let cols = lo..(lo + per).min(width);
                s.spawn(move || -> Result<Vec<(usize, Vec<f64>)>, anyhow::Error> {
                    cols.map(|c| {
                        read_column(reader, rg, c + 1)
                            .map(|v| (c, v))
                            .map_err(|why| column_error(reader, c + 1, path, why))
                    })
                    .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let cols = h.join().expect("Parquet reader panicked")?;
                place(cols, rows, width, out, reader, path)
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Writes decoded columns into their places in the row-major table.
fn place(
    cols: Vec<(usize, Vec<f64>)>,
    rows: usize,
    width: usize,
    out: &mut [f32],
    reader: &SerializedFileReader<Bytes>,
    path: &Path,
) -> Result<()> {
    for (c, col) in cols {
        if col.len() != rows {
            return Err(user(format!(
                "{}: column {:?} has {} values in a row group of {rows} rows",
                path.display(),
                name(reader, c + 1),
                col.len()
            )));
        }
        for (r, v) in col.into_iter().enumerate() {
            let x = v as f32;
            if !x.is_finite() {
                return Err(user(format!(
                    "{}: row {}: column {:?} is {v}; only finite numbers are allowed",
                    path.display(),
                    r + 1,
                    name(reader, c + 1)
                )));
            }
            out[r * width + c] = x;
        }
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

/// One column of one row group, as numbers; nulls are refused.
fn read_column(
    reader: &SerializedFileReader<Bytes>,
    rg: usize,
    c: usize,
) -> Result<Vec<f64>, String> {
    let group = reader.get_row_group(rg).map_err(|e| format!("cannot be read: {e}"))?;
    let column = group.get_column_reader(c).map_err(|e| format!("cannot be read: {e}"))?;
    let nullable = group.metadata().column(c).column_descr().max_def_level() > 0;
    match column {
        ColumnReader::BoolColumnReader(mut r) => {
            drain(&mut r, nullable, |b| f64::from(u8::from(b)))
        }
        ColumnReader::Int32ColumnReader(mut r) => drain(&mut r, nullable, f64::from),
        ColumnReader::Int64ColumnReader(mut r) => drain(&mut r, nullable, |v| v as f64),
        ColumnReader::FloatColumnReader(mut r) => drain(&mut r, nullable, f64::from),
        ColumnReader::DoubleColumnReader(mut r) => drain(&mut r, nullable, |v| v),
        _ => Err("is not numeric".into()),
    }
}

/// Reads a whole column chunk, converting each value.
fn drain<T: DataType>(
    r: &mut ColumnReaderImpl<T>,
    nullable: bool,
    convert: impl Fn(T::T) -> f64,
) -> Result<Vec<f64>, String>
where
    T::T: Copy,
{
    let mut out = Vec::new();
    let (mut buf, mut defs) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    loop {
        buf.clear();
        defs.clear();
        let (records, read, levels) = r
            .read_records(BATCH, nullable.then_some(&mut defs), None, &mut buf)
            .map_err(|e| format!("cannot be read: {e}"))?;
        if nullable && read < levels {
            let at = out.len() + defs.iter().position(|&d| d == 0).unwrap_or(0) + 1;
            return Err(format!(
                "has a null value (row {at} of its row group); fill or drop missing values first"
            ));
        }
        out.extend(buf.iter().map(|&v| convert(v)));
        if records == 0 {
            return Ok(out);
        }
    }
}
