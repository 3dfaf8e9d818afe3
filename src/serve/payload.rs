//! Request bodies into a batch of images, predictions into response bodies: the pure half of
//! `serve`, with no HTTP in it. Every error is a sentence for the client, naming the image and
//! what was expected.

use serde::Serialize;

use crate::data::{picture, Shape};
use crate::evaluation::Predictions;

/// The request formats `POST /invocations` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Json,
    JsonLines,
    Csv,
    Npy,
    /// PNG or JPEG, one image per request (`image/png`, `image/jpeg`, `application/x-image`).
    Picture,
}

/// The response formats, from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    JsonLines,
    Csv,
}

/// The media type without its parameters, lower-cased.
fn essence(media: &str) -> String {
    media.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

impl Input {
    /// `Content-Type`'s format; `None` for a type this server does not read.
    pub fn from_content_type(header: Option<&str>) -> Option<Self> {
        Some(match essence(header.unwrap_or("application/json")).as_str() {
            "application/json" => Input::Json,
            "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => {
                Input::JsonLines
            }
            "text/csv" => Input::Csv,
            "application/x-npy" => Input::Npy,
            "image/png" | "image/jpeg" | "application/x-image" => Input::Picture,
            _ => return None,
        })
    }
}

impl Output {
    /// The first type in `Accept` this server writes; a missing header or `*/*` is JSON.
    pub fn from_accept(header: Option<&str>) -> Option<Self> {
        let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
            return Some(Output::Json);
        };
        header.split(',').find_map(|item| match essence(item).as_str() {
            "application/json" | "*/*" | "application/*" => Some(Output::Json),
            "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => {
                Some(Output::JsonLines)
            }
            "text/csv" | "text/*" => Some(Output::Csv),
            _ => None,
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Output::Json => "application/json",
            Output::JsonLines => "application/jsonlines",
            Output::Csv => "text/csv",
        }
    }
}

/// Images, `features` pixel values (0–255) each, as floats: what the model takes before
/// `model.json`'s scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub pixels: Vec<f32>,
    pub count: usize,
}

/// Decodes a request body of `input` format into images of the model's `shape`: pictures are
/// converted and resized as in training; arrays must already have the shape.
pub fn decode(input: Input, body: &[u8], shape: Shape) -> Result<Batch, String> {
    // Nested JSON images are lists of rows, each row's pixels' channels side by side.
    let (rows, cols) = (shape.rows, shape.cols * shape.channels);
    let features = shape.len();
    let batch = match input {
        Input::Json => match plain_json(body, features) {
            Some(batch) => batch,
            None => from_json(body, features, (rows, cols))?,
        },
        Input::JsonLines => {
            let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text")?;
            let mut images = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
                images.push(v);
            }
            from_json_images(images.iter(), features, (rows, cols))?
        }
        Input::Csv => from_csv(body, features)?,
        Input::Npy => from_npy(body, shape)?,
        Input::Picture => {
            let pixels = picture::load(body, shape, true, picture::MAX_PIXELS)
                .map_err(|why| format!("the image {why}"))?;
            Batch { pixels: pixels.into_iter().map(f32::from).collect(), count: 1 }
        }
    };
    if batch.count == 0 {
        return Err("the body holds no image".into());
    }
    Ok(batch)
}

/// A JSON body of any shape this server reads, or what is wrong with it.
fn from_json(body: &[u8], features: usize, (rows, cols): (usize, usize)) -> Result<Batch, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let images = match value {
        serde_json::Value::Object(mut o) => match o.remove("instances") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err("a JSON object body needs \"instances\": a list of images".into()),
        },
        serde_json::Value::Array(a) => a,
        _ => return Err("the JSON body must be a list of images or {\"instances\": [...]}".into()),
    };
    from_json_images(images.iter(), features, (rows, cols))
}

/// The usual JSON body fast: a list of flat lists of whole numbers 0 to 255 (what a client
/// serialising an array of pixels sends), bare or as `{"instances": ...}`, each of `features`
/// values, JSON whitespace anywhere. `None` for anything else (nested rows, decimals, other
/// keys, bad JSON), and the general parser reads it or says what is wrong with it.
fn plain_json(body: &[u8], features: usize) -> Option<Batch> {
    let mut json = Scan { body, at: 0 };
    let wrapped = json.eat(b'{');
    if wrapped && !(json.eat_all(b"\"instances\"") && json.eat(b':')) {
        return None;
    }
    let batch = json.images(features)?;
    if wrapped && !json.eat(b'}') {
        return None;
    }
    json.skip();
    (json.at == body.len()).then_some(batch)
}

/// A cursor over a JSON body, for [`plain_json`].
struct Scan<'a> {
    body: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn skip(&mut self) {
        while self.body.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Whether `byte` comes next, after any whitespace; if so it is consumed.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip();
        let found = self.body.get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    fn eat_all(&mut self, bytes: &[u8]) -> bool {
        self.skip();
        let found = self.body[self.at..].starts_with(bytes);
        self.at += if found { bytes.len() } else { 0 };
        found
    }

    /// `[[p, ...], ...]`, each list of `features` pixels.
    fn images(&mut self, features: usize) -> Option<Batch> {
        let mut pixels = Vec::new();
        let mut count = 0;
        if !self.eat(b'[') {
            return None;
        }
        loop {
            if !self.eat(b'[') {
                return None;
            }
            for j in 0..features {
                if j > 0 && !self.eat(b',') {
                    return None;
                }
                pixels.push(self.pixel()?);
            }
            if !self.eat(b']') {
                return None;
            }
            count += 1;
            if self.eat(b']') {
                return Some(Batch { pixels, count });
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A whole number 0 to 255. JSON has no leading zeros: `07` is left for the general
    /// parser to refuse, as are decimals and exponents.
    fn pixel(&mut self) -> Option<f32> {
        self.skip();
        let rest = &self.body[self.at..];
        let digits = rest.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
        if digits > 1 && rest[0] == b'0' {
            return None;
        }
        let value = whole_number(&rest[..digits])?;
        self.at += digits;
        let more = self.body.get(self.at).is_some_and(|b| matches!(b, b'.' | b'e' | b'E'));
        (value <= 255 && !more).then_some(f32::from(value))
    }
}

/// One image from JSON: `features` numbers, or `rows` lists of `cols` numbers (grey), or of
/// `cols × channels` numbers (RGB, each row's pixels' channels together).
fn from_json_images<'a>(
    images: impl Iterator<Item = &'a serde_json::Value>,
    features: usize,
    (rows, cols): (usize, usize),
) -> Result<Batch, String> {
    let mut pixels = Vec::new();
    let mut count = 0;
    for (i, image) in images.enumerate() {
        let serde_json::Value::Array(items) = image else {
            return Err(format!("image {i} is not a list of pixel values"));
        };
        let nested = items.first().is_some_and(serde_json::Value::is_array);
        let flat: Vec<&serde_json::Value> = if nested {
            if items.len() != rows {
                return Err(format!(
                    "image {i} has {} rows; expected {rows} of {cols} values",
                    items.len()
                ));
            }
            let mut flat = Vec::with_capacity(features);
            for (r, row) in items.iter().enumerate() {
                match row {
                    serde_json::Value::Array(row) if row.len() == cols => flat.extend(row),
                    serde_json::Value::Array(row) => {
                        return Err(format!(
                            "image {i} row {r} has {} values; expected {cols}",
                            row.len()
                        ))
                    }
                    _ => return Err(format!("image {i} row {r} is not a list")),
                }
            }
            flat
        } else {
            items.iter().collect()
        };
        if flat.len() != features {
            return Err(format!("image {i} has {} values; expected {features}", flat.len()));
        }
        for (j, v) in flat.into_iter().enumerate() {
            let x = v.as_f64().ok_or_else(|| format!("image {i} value {j} is not a number"))?;
            pixels.push(pixel(x).ok_or_else(|| format!("image {i} value {j} is {x}; {RANGE}"))?);
        }
        count += 1;
    }
    Ok(Batch { pixels, count })
}

const RANGE: &str = "pixel values are 0 to 255";

fn pixel(x: f64) -> Option<f32> {
    (0.0..=255.0).contains(&x).then_some(x as f32)
}

fn from_csv(body: &[u8], features: usize) -> Result<Batch, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text")?;
    let mut pixels = Vec::new();
    let mut count = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let start = pixels.len();
        if !plain_pixels(line.as_bytes(), &mut pixels) || pixels.len() - start != features {
            pixels.truncate(start);
            csv_line(line, count, features, &mut pixels)?;
        }
        count += 1;
    }
    Ok(Batch { pixels, count })
}

/// The usual line fast: whole numbers 0 to 255 of up to three digits, commas between, nothing
/// else. `false` for anything else, and the general parser reads the line or says what is wrong
/// with it; parsing is most of a small CSV request's cost.
fn plain_pixels(line: &[u8], out: &mut Vec<f32>) -> bool {
    for field in line.split(|&b| b == b',') {
        match whole_number(field) {
            Some(v) if v <= 255 => out.push(f32::from(v)),
            _ => return false,
        }
    }
    true
}

/// One CSV line of any numbers (`1`, ` 2.5 `, `1e2`), each checked, or why not.
fn csv_line(line: &str, image: usize, features: usize, out: &mut Vec<f32>) -> Result<(), String> {
    let mut n = 0;
    for (j, field) in line.split(',').enumerate() {
        let x = whole_number(field.trim().as_bytes())
            .map(f64::from)
            .map_or_else(|| field.trim().parse(), Ok);
        let x: f64 = x.map_err(|_| {
            format!("image {image} value {j} is {:?}, not a number", crate::error::clip(field, 40))
        })?;
        out.push(pixel(x).ok_or_else(|| format!("image {image} value {j} is {x}; {RANGE}"))?);
        n += 1;
    }
    if n != features {
        return Err(format!("image {image} has {n} values; expected {features}"));
    }
    Ok(())
}

/// A field of one to three digits as a number, without the general float parser: pixels are
/// almost always written so, and parsing is most of a small request's cost.
fn whole_number(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 3 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(field.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

/// A NumPy `.npy` array (format 1 to 3): `uint8` or `float32`, C order, shaped `(N, rows,
/// cols)` (grey) or `(N, rows, cols, 3)` (RGB), `(N, rows × cols × channels)`, or one image
/// without the `N`.
fn from_npy(body: &[u8], shape: Shape) -> Result<Batch, String> {
    let header = crate::data::parse_npy_header(body).map_err(|why| format!("the body {why}"))?;
    let (descr, dims) = (header.descr.as_str(), &header.shape);
    let features = shape.len();
    let image: Vec<usize> = match shape.channels {
        1 => vec![shape.rows, shape.cols],
        c => vec![shape.rows, shape.cols, c],
    };
    let count = match dims.as_slice() {
        [n, rest @ ..] if rest == image.as_slice() => *n,
        [n, f] if *f == features => *n,
        d if d == image.as_slice() => 1,
        [f] if *f == features => 1,
        _ => {
            let image: Vec<String> = image.iter().map(usize::to_string).collect();
            return Err(format!(
                "the .npy array has shape {dims:?}; expected (N, {}) or (N, {features})",
                image.join(", ")
            ));
        }
    };
    let data = &body[header.data_at..];
    let values = count.checked_mul(features).ok_or("the .npy shape is too large")?;
    let pixels: Vec<f32> = match descr {
        "|u1" | "<u1" | "u1" => {
            check_len(data.len(), values, 1)?;
            data[..values].iter().map(|&b| f32::from(b)).collect()
        }
        "<f4" => {
            check_len(data.len(), values, 4)?;
            let mut out = Vec::with_capacity(values);
            for (j, b) in data[..values * 4].chunks_exact(4).enumerate() {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !(0.0..=255.0).contains(&x) {
                    return Err(format!(
                        "image {} value {} is {x}; {RANGE}",
                        j / features,
                        j % features
                    ));
                }
                out.push(x);
            }
            out
        }
        other => {
            return Err(format!("the .npy dtype {other:?} is not uint8 or float32 (little-endian)"))
        }
    };
    Ok(Batch { pixels, count })
}

fn check_len(have: usize, values: usize, width: usize) -> Result<(), String> {
    if have < values * width {
        return Err(format!(
            "the .npy data holds {have} bytes; its shape needs {}",
            values * width
        ));
    }
    Ok(())
}

#[derive(Serialize)]
struct Prediction<'a> {
    class: usize,
    class_name: &'a str,
    probabilities: &'a [f32],
}

/// The response body for `p`, in `output` format.
pub fn encode(output: Output, p: &Predictions, names: &[String]) -> Vec<u8> {
    let one = |i: usize| Prediction {
        class: p.classes[i],
        class_name: &names[p.classes[i]],
        probabilities: p.probabilities(i),
    };
    match output {
        Output::Json => {
            // Serialised as f32 (not through serde_json::Value's f64), so the digits are those
            // `predict` writes for the same probabilities.
            #[derive(Serialize)]
            struct All<'a> {
                predictions: Vec<Prediction<'a>>,
            }
            let all = All { predictions: (0..p.len()).map(one).collect() };
            let mut body = serde_json::to_vec(&all).expect("predictions serialise");
            body.push(b'\n');
            body
        }
        Output::JsonLines => {
            let mut body = Vec::new();
            for i in 0..p.len() {
                serde_json::to_writer(&mut body, &one(i)).expect("a prediction serialises");
                body.push(b'\n');
            }
            body
        }
        Output::Csv => {
            use std::fmt::Write;
            let mut text = String::new();
            for i in 0..p.len() {
                let _ = write!(text, "{}", p.classes[i]);
                for q in p.probabilities(i) {
                    let _ = write!(text, ",{q}");
                }
                text.push('\n');
            }
            text.into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape { rows: 2, cols: 2, channels: 1 };

    #[test]
    fn content_types_and_accept_pick_formats() {
        assert_eq!(Input::from_content_type(Some("text/csv; charset=utf-8")), Some(Input::Csv));
        assert_eq!(Input::from_content_type(None), Some(Input::Json));
        assert_eq!(Input::from_content_type(Some("application/x-image")), Some(Input::Picture));
        assert_eq!(Input::from_content_type(Some("text/plain")), None);
        assert_eq!(Output::from_accept(None), Some(Output::Json));
        assert_eq!(Output::from_accept(Some("text/html, text/csv;q=0.9")), Some(Output::Csv));
        assert_eq!(Output::from_accept(Some("*/*")), Some(Output::Json));
        assert_eq!(Output::from_accept(Some("image/png")), None);
    }

    #[test]
    fn json_bodies_read_alike_by_the_fast_and_the_general_parser() {
        let general = |body: &str| from_json(body.as_bytes(), 4, (2, 2));
        for body in
            ["[[0,1,2,255],[4,5,6,7]]", " [ [ 0 , 1,2,\n255 ] ,\t[4,5,6,7] ]\r\n", "[[9,9,9,9]]"]
        {
            let fast = plain_json(body.as_bytes(), 4);
            assert!(fast.is_some(), "{body}");
            assert_eq!(fast.map(Ok), Some(general(body)), "{body}");
        }
        // Anything else is left to the general parser, which reads it or says why not.
        for body in [
            r#"{"instances": [[0,1,2,3]], "x": 1}"#,
            r#"{"images": [[0,1,2,3]]}"#,
            "[[[0,1],[2,3]]]",
            "[[0,1,2,3.0]]",
            "[[0,1,2,1e2]]",
            "[[0,1,2,256]]",
            "[[0,1,2,07]]",
            "[[0,1,2,-1]]",
            "[[0,1,2]]",
            "[[0,1,2,3,4]]",
            "[[0,1,2,3]] x",
            "[[0,1,2,3],]",
            "[]",
            "[[0,1,2,3]",
        ] {
            assert_eq!(plain_json(body.as_bytes(), 4), None, "{body}");
        }
        let e = decode(Input::Json, b"[[0,1,2,07]]", SHAPE).unwrap_err();
        assert!(e.starts_with("the body is not JSON"), "{e}");
        let e = decode(Input::Json, b"[[0,1,2]]", SHAPE).unwrap_err();
        assert_eq!(e, "image 0 has 3 values; expected 4");
        let e = decode(Input::Json, b"[[0,1,2,256]]", SHAPE).unwrap_err();
        assert_eq!(e, "image 0 value 3 is 256; pixel values are 0 to 255");
    }

    #[test]
    fn csv_lines_read_alike_by_the_fast_and_the_general_parser() {
        let fast = |line: &str| {
            let mut out = Vec::new();
            plain_pixels(line.as_bytes(), &mut out).then_some(out)
        };
        let general = |line: &str| {
            let mut out = Vec::new();
            csv_line(line, 0, 3, &mut out).map(|()| out)
        };
        for line in ["0,128,255", "7,07,007", "1,2,3"] {
            assert_eq!(fast(line), Some(general(line).unwrap()), "{line}");
        }
        // Anything else is left to the general parser, which reads it or says why not.
        for line in
            ["1, 2,3", "1.5,2,3", "1e2,2,3", "256,0,0", "0001,0,0", "1,,3", "1,2,3,", "-1,2,3"]
        {
            assert_eq!(fast(line), None, "{line}");
        }
        assert_eq!(general("1, 2,3.5"), Ok(vec![1.0, 2.0, 3.5]));
        assert_eq!(
            general("256,0,0"),
            Err("image 0 value 0 is 256; pixel values are 0 to 255".into())
        );
        assert_eq!(general("1,2"), Err("image 0 has 2 values; expected 3".into()));
        // A plain line of the wrong length gets the general parser's count.
        let e = from_csv(b"1,2,3,4\n", 3).unwrap_err();
        assert_eq!(e, "image 0 has 4 values; expected 3");
    }

    #[test]
    fn json_csv_and_npy_give_the_same_batch() {
        let want = Batch { pixels: vec![0.0, 1.0, 2.0, 255.0, 4.0, 5.0, 6.0, 7.0], count: 2 };
        for body in [r#"[[0,1,2,255],[4,5,6,7]]"#, r#"{"instances": [[[0,1],[2,255]], [4,5,6,7]]}"#]
        {
            assert_eq!(decode(Input::Json, body.as_bytes(), SHAPE), Ok(want.clone()), "{body}");
        }
        assert_eq!(
            decode(Input::JsonLines, b"[0,1,2,255]\n\n[[4,5],[6,7]]\n", SHAPE),
            Ok(want.clone())
        );
        assert_eq!(decode(Input::Csv, b"0,1,2,255\n4,5,6,7\n", SHAPE), Ok(want.clone()));
        let floats = b"0.0,1e0,002,255.0\n4, 5 ,6.00,7\n";
        assert_eq!(decode(Input::Csv, floats, SHAPE), Ok(want.clone()));
        let npy = |descr: &str, shape: &str, data: &[u8]| {
            let mut h =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(' ');
            }
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(h.as_bytes());
            b.extend(data);
            b
        };
        let u8s = [0u8, 1, 2, 255, 4, 5, 6, 7];
        assert_eq!(decode(Input::Npy, &npy("|u1", "(2, 2, 2)", &u8s), SHAPE), Ok(want.clone()));
        let f32s: Vec<u8> = u8s.iter().flat_map(|&v| f32::from(v).to_le_bytes()).collect();
        assert_eq!(decode(Input::Npy, &npy("<f4", "(2, 4)", &f32s), SHAPE), Ok(want));
        let e = decode(Input::Npy, &npy("<f8", "(2, 4)", &f32s), SHAPE).unwrap_err();
        assert!(e.contains("dtype \"<f8\""), "{e}");
        let e = decode(Input::Npy, &npy("|u1", "(2, 3)", &u8s), SHAPE).unwrap_err();
        assert!(e.contains("shape [2, 3]"), "{e}");
    }

    #[test]
    fn bad_images_are_named_with_what_was_expected() {
        let e = decode(Input::Json, br#"[[0,1,2,3],[0,1,2]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 1 has 3 values; expected 4");
        let e = decode(Input::Csv, b"0,1,2,3\n0,1,2,300\n", SHAPE).unwrap_err();
        assert_eq!(e, "image 1 value 3 is 300; pixel values are 0 to 255");
        let e = decode(Input::Json, br#"{"x": 1}"#, SHAPE).unwrap_err();
        assert!(e.contains("\"instances\""), "{e}");
        assert_eq!(decode(Input::Csv, b"\n", SHAPE).unwrap_err(), "the body holds no image");
        assert!(decode(Input::Picture, b"GIF89a", SHAPE)
            .unwrap_err()
            .contains("not a PNG or JPEG"));
    }
}
