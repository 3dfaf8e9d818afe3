//! Request bodies for a model trained on a table: rows of feature values without the label,
//! in the built-in algorithms' inference formats. Values are taken as sent; the model's own
//! standardization is applied by the forward pass.

use super::json::{self, Shape};
use super::payload::{Batch, Input, BOM};
use crate::data::{parse_npy_header, table};

/// Decodes a body of `input` format into rows of `width` features.
pub fn decode(input: Input, body: &[u8], width: usize) -> Result<Batch, String> {
    let shape = Shape::Table { width };
    let text = body.strip_prefix(BOM).unwrap_or(body);
    let values = match input {
        Input::Csv => table::rows_from_csv(body, width)?,
        Input::Json => json::body(text, shape)?.0,
        Input::JsonLines if text.iter().all(u8::is_ascii_whitespace) => Vec::new(),
        Input::JsonLines => json::lines(text, shape)?.0,
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
