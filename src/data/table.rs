//! What every table format shares: the value and label rules, and turning columns into a
//! [`Dataset`].

use super::{Dataset, Format, Input, Values};

/// The most feature columns a table may have: far beyond any real table, far below what would
/// make one row's buffers a problem.
pub const MAX_FEATURES: usize = 1 << 20;

/// The largest label: labels are stored as bytes, and `num_classes` is at most 256.
const MAX_LABEL: f64 = 255.0;

/// A feature value as text → a finite float, or why not.
pub fn parse_feature(field: &[u8]) -> Result<f32, String> {
    if let Some(v) = whole(field) {
        return Ok(v);
    }
    let text = std::str::from_utf8(field).map_err(|_| "is not UTF-8 text".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".into());
    }
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!(
            "is {}; only finite numbers are allowed",
            crate::error::quote(&crate::error::clip(text, 40))
        )),
        Err(_) => {
            Err(format!("is {}, not a number", crate::error::quote(&crate::error::clip(text, 40))))
        }
    }
}

/// Digits only, up to seven (exact in a float): how most numbers in real tables are written,
/// parsed without the general float parser, which is most of a CSV file's cost.
fn whole(field: &[u8]) -> Option<f32> {
    if field.is_empty() || field.len() > 7 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) as f32)
}

/// A label value → a class index, or why not.
pub fn label(value: f64) -> Result<u8, String> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(format!("label {value} is not a whole number (labels are classes 0, 1, 2, …)"));
    }
    if value < 0.0 {
        return Err(format!("label {value} is negative (labels are classes 0, 1, 2, …)"));
    }
    if value > MAX_LABEL {
        return Err(format!("label {value} is over 255 (at most 256 classes)"));
    }
    Ok(value as u8)
}

/// A table read in `format`: feature names, row-major values, labels.
pub fn dataset(
    format: Format,
    names: Vec<String>,
    values: Vec<f32>,
    labels: Vec<u8>,
    digest: blake3::Hash,
    source: String,
) -> Dataset {
    debug_assert_eq!(values.len(), labels.len() * names.len());
    Dataset {
        values: Values::Floats(values),
        labels,
        input: Input::Table { names },
        format,
        fingerprint: format!("blake3:{}", digest.to_hex()),
        source,
        classes: None,
    }
}

/// `x0, x1, …`: names for features that come without any.
pub fn numbered(features: usize) -> Vec<String> {
    (0..features).map(|i| format!("x{i}")).collect()
}

/// Rows of `width` features without labels, one per line (the built-in algorithms' inference
/// convention): what `serve` takes as `text/csv` and `predict` reads from CSV files. A blank
/// line is refused rather than dropped, so answers stay one per input line; errors name the
/// line (1-based) and column.
pub fn rows_from_csv(body: &[u8], width: usize) -> Result<Vec<f32>, String> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let mut out = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(format!(
                "line {} is blank; send one row of {width} features per line",
                i + 1
            ));
        }
        let start = out.len();
        for (j, field) in line.split(|&b| b == b',').enumerate() {
            if j >= width {
                break;
            }
            out.push(
                parse_feature(field)
                    .map_err(|why| format!("line {} column {} {why}", i + 1, j + 1))?,
            );
        }
        let n = line.split(|&b| b == b',').count();
        if n != width || out.len() - start != width {
            return Err(format!(
                "line {} has {n} values; the model takes {width} features (no label column)",
                i + 1
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_finite_numbers() {
        assert_eq!(parse_feature(b"17"), Ok(17.0));
        assert_eq!(parse_feature(b" -2.5e1 "), Ok(-25.0));
        assert_eq!(parse_feature(b"0.1"), Ok(0.1));
        assert!(parse_feature(b"").unwrap_err().contains("is empty"));
        assert!(parse_feature(b"nan").unwrap_err().contains("only finite numbers"));
        assert!(parse_feature(b"inf").unwrap_err().contains("only finite numbers"));
        assert!(parse_feature(b"abc").unwrap_err().contains("\"abc\", not a number"));
    }

    #[test]
    fn inference_rows_have_exactly_the_features() {
        assert_eq!(rows_from_csv(b"1,2\n3.5,-4\n", 2), Ok(vec![1.0, 2.0, 3.5, -4.0]));
        assert_eq!(rows_from_csv(b"1,2", 2), Ok(vec![1.0, 2.0]));
        assert!(rows_from_csv(b"1,2\n\n3,4", 2).unwrap_err().contains("line 2 is blank"));
        assert!(rows_from_csv(b"1,2\n3,4,5", 2).unwrap_err().contains("line 2 has 3 values"));
        assert!(rows_from_csv(b"1,x", 2).unwrap_err().contains("line 1 column 2 is \"x\""));
    }

    #[test]
    fn labels_are_small_whole_numbers() {
        assert_eq!(label(3.0), Ok(3));
        assert!(label(1.5).unwrap_err().contains("not a whole number"));
        assert!(label(-1.0).unwrap_err().contains("negative"));
        assert!(label(256.0).unwrap_err().contains("over 255"));
        assert!(label(f64::NAN).unwrap_err().contains("not a whole number"));
    }
}
