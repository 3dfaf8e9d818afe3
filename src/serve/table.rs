//! Request bodies for a model trained on a table: rows of feature values without the label,
//! in the built-in algorithms' inference formats. Values are taken as sent; the model's own
//! standardization is applied by the forward pass.

use serde_json::Value;

use super::payload::{Batch, Input};
use crate::data::{parse_npy_header, table};

/// Decodes a body of `input` format into rows of `width` features.
pub fn decode(input: Input, body: &[u8], width: usize) -> Result<Batch, String> {
    let values = match input {
        Input::Csv => table::rows_from_csv(body, width)?,
        Input::Json => {
            let v: Value =
                serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            let rows = match v {
                Value::Object(mut o) => match o.remove("instances") {
                    Some(Value::Array(a)) => a,
                    _ => {
                        return Err("a JSON object body needs \"instances\": a list of rows".into())
                    }
                },
                Value::Array(a) => a,
                _ => {
                    return Err(
                        "the JSON body must be a list of rows or {\"instances\": [...]}".into()
                    )
                }
            };
            json_rows(rows.iter().enumerate().map(|(i, r)| (format!("instance {i}"), r)), width)?
        }
        Input::JsonLines => {
            let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text")?;
            let text = text.strip_suffix('\n').unwrap_or(text);
            let mut rows = Vec::new();
            for (i, line) in text.split('\n').enumerate() {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
                rows.push((format!("line {}", i + 1), v));
            }
            json_rows(rows.iter().map(|(w, v)| (w.clone(), v)), width)?
        }
        Input::Npy => npy_rows(body, width)?,
        Input::Picture => {
            return Err(format!(
                "this model was trained on a table of {width} features; send rows as text/csv, \
                 application/json, application/jsonlines or application/x-npy"
            ))
        }
    };
    let count = values.len() / width.max(1);
    if count == 0 {
        return Err("the body holds no row".into());
    }
    Ok(Batch { pixels: values, count })
}

/// Rows as lists of numbers, or as `{"features": [...]}` objects.
fn json_rows<'a>(
    rows: impl Iterator<Item = (String, &'a Value)>,
    width: usize,
) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    for (what, row) in rows {
        let items = match row {
            Value::Array(a) => a,
            Value::Object(o) => match o.get("features") {
                Some(Value::Array(a)) => a,
                _ => {
                    return Err(format!(
                        "{what} is an object without \"features\": a list of numbers"
                    ))
                }
            },
            _ => return Err(format!("{what} is not a list of numbers")),
        };
        if items.len() != width {
            return Err(format!(
                "{what} has {} values; the model takes {width} features (no label)",
                items.len()
            ));
        }
        for (j, v) in items.iter().enumerate() {
            let x = v.as_f64().map(|x| x as f32).filter(|x| x.is_finite());
            out.push(x.ok_or_else(|| format!("{what} value {j} is {v}, not a finite number"))?);
        }
    }
    Ok(out)
}

/// A `.npy` array of numbers shaped (N, width) or (width,).
fn npy_rows(body: &[u8], width: usize) -> Result<Vec<f32>, String> {
    let h = parse_npy_header(body).map_err(|why| format!("the body {why}"))?;
    match h.shape.as_slice() {
        [_, f] | [f] if *f == width => {}
        s => return Err(format!("the .npy array has shape {s:?}; expected (N, {width})")),
    }
    let data = &body[h.data_at..];
    let size = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "the .npy dtype {other:?} is not float32 or float64 (little-endian)"
            ))
        }
    };
    let count: usize = h.shape.iter().product();
    if data.len() != count * size {
        return Err(format!(
            "the .npy data holds {} bytes; its shape needs {}",
            data.len(),
            count * size
        ));
    }
    data.chunks_exact(size)
        .enumerate()
        .map(|(i, b)| {
            let x = if size == 4 {
                f32::from_le_bytes(b.try_into().expect("4 bytes"))
            } else {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            };
            if x.is_finite() {
                Ok(x)
            } else {
                Err(format!("row {} value {} is {x}, not a finite number", i / width, i % width))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_gives_the_same_rows() {
        let want = vec![1.0, -2.5, 3.0, 4.0];
        let csv = decode(Input::Csv, b"1,-2.5\n3,4\n", 2).unwrap();
        let json =
            decode(Input::Json, br#"{"instances": [[1, -2.5], {"features": [3, 4]}]}"#, 2).unwrap();
        let lines = decode(Input::JsonLines, b"[1,-2.5]\n{\"features\":[3,4]}\n", 2).unwrap();
        let data: Vec<u8> = want.iter().flat_map(|v: &f32| v.to_le_bytes()).collect();
        let npy =
            decode(Input::Npy, &crate::data::numpy_test_npy("<f4", &[2, 2], &data), 2).unwrap();
        for b in [csv, json, lines, npy] {
            assert_eq!((b.pixels.clone(), b.count), (want.clone(), 2));
        }
    }

    #[test]
    fn wrong_widths_and_values_are_named() {
        let e = decode(Input::Json, br#"[[1, 2, 3]]"#, 2).unwrap_err();
        assert!(e.contains("instance 0 has 3 values; the model takes 2"), "{e}");
        let e = decode(Input::JsonLines, b"[1,2]\n[1,\"a\"]", 2).unwrap_err();
        assert!(e.contains("line 2 value 1"), "{e}");
        let e = decode(Input::Csv, b"1,2\n1", 2).unwrap_err();
        assert!(e.contains("line 2 has 1 values"), "{e}");
        assert!(decode(Input::Picture, b"", 2).unwrap_err().contains("table of 2 features"));
    }
}
