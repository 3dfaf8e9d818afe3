//! Request bodies into a batch of images, predictions into response bodies: the pure half of
//! `serve`, with no HTTP in it. Every error is a sentence for the client, naming the image and
//! what was expected.

use serde::Serialize;

use super::json;
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

/// One `Accept` item: its media range, lower-cased, and its weight (`q`, default 1; a weight
/// that is not a number from 0 to 1 counts as 0, so that a typo never wins).
fn media_range(item: &str) -> (String, f32) {
    let mut parts = item.split(';');
    let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let q = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
        .map_or(Some(1.0), |(_, v)| {
            v.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
        })
        .unwrap_or(0.0);
    (range, q)
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
    /// The type `Accept` prefers among those this server writes (RFC 9110, 12.5.1): each is
    /// weighed by the most specific range that matches it; the highest weight above 0 wins,
    /// a tie going to the range listed first, then to JSON. A missing header is JSON.
    pub fn from_accept(header: Option<&str>) -> Option<Self> {
        let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
            return Some(Output::Json);
        };
        let ranges: Vec<(String, f32)> = header.split(',').map(media_range).collect();
        let mut best: Option<(f32, usize, Output)> = None;
        for output in [Output::Json, Output::JsonLines, Output::Csv] {
            // (specificity, weight, position) of the most specific range that matches.
            let mut chosen: Option<(u8, f32, usize)> = None;
            for (at, (range, q)) in ranges.iter().enumerate() {
                let Some(specific) = output.matches(range) else { continue };
                if chosen.is_none_or(|(s, _, _)| specific > s) {
                    chosen = Some((specific, *q, at));
                }
            }
            let Some((_, q, at)) = chosen.filter(|c| c.1 > 0.0) else { continue };
            if best.is_none_or(|(bq, bat, _)| q > bq || (q == bq && at < bat)) {
                best = Some((q, at, output));
            }
        }
        best.map(|(_, _, output)| output)
    }

    /// How specifically `range` names this type: 2 exactly, 1 as `type/*`, 0 as `*/*`.
    fn matches(self, range: &str) -> Option<u8> {
        let exact: &[&str] = match self {
            Output::Json => &["application/json"],
            Output::JsonLines => {
                &["application/jsonlines", "application/x-jsonlines", "application/jsonl"]
            }
            Output::Csv => &["text/csv"],
        };
        let family = if self == Output::Csv { "text/*" } else { "application/*" };
        if exact.contains(&range) {
            Some(2)
        } else if range == family {
            Some(1)
        } else {
            (range == "*/*").then_some(0)
        }
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub pixels: Vec<f32>,
    pub count: usize,
}

/// Decodes a request body of `input` format into images of the model's `image` shape: pictures
/// are converted and resized as in training; arrays must already have the shape.
pub fn decode(input: Input, body: &[u8], image: Shape) -> Result<Batch, String> {
    let features = image.len();
    let shape = json::Shape::Image { rows: image.rows, cols: image.cols, channels: image.channels };
    let text = body.strip_prefix(BOM).unwrap_or(body);
    let batch = match input {
        Input::Json => match plain_json(text, features) {
            Some(batch) => batch,
            None => json::body(text, shape).map(|(pixels, count)| Batch { pixels, count })?,
        },
        Input::JsonLines if text.iter().all(u8::is_ascii_whitespace) => Batch::default(),
        Input::JsonLines => {
            json::lines(text, shape).map(|(pixels, count)| Batch { pixels, count })?
        }
        Input::Csv => from_csv(text, features)?,
        Input::Npy => from_npy(body, image)?,
        Input::Picture => {
            let pixels = picture::load(body, image, true, picture::MAX_PIXELS)
                .map_err(|why| format!("the image {why}"))?;
            Batch { pixels: pixels.into_iter().map(f32::from).collect(), count: 1 }
        }
    };
    if batch.count == 0 {
        return Err("the body holds no image".into());
    }
    crate::predict::check_pixel_scale(&batch.pixels)?;
    Ok(batch)
}

/// A UTF-8 byte order mark, which some editors and Excel write first: skipped in text bodies.
pub const BOM: &[u8] = b"\xef\xbb\xbf";

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

pub const RANGE: &str = "pixel values are 0 to 255";

fn pixel(x: f64) -> Option<f32> {
    (0.0..=255.0).contains(&x).then_some(x as f32)
}

/// One image per line, named by line (1-based). A blank line is an error: each line gets one
/// answer line, so none may be skipped.
fn from_csv(body: &[u8], features: usize) -> Result<Batch, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text")?;
    let mut pixels = Vec::new();
    let mut count = 0;
    if text.trim().is_empty() {
        return Ok(Batch::default());
    }
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() {
            return Err(format!(
                "line {} is blank; send one image of {features} values per line",
                i + 1
            ));
        }
        let start = pixels.len();
        if !plain_pixels(line.as_bytes(), &mut pixels) || pixels.len() - start != features {
            pixels.truncate(start);
            csv_line(line, i + 1, features, &mut pixels)?;
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

/// CSV line `n` (1-based) of any numbers (`1`, ` 2.5 `, `1e2`), each checked, or why not.
fn csv_line(line: &str, n: usize, features: usize, out: &mut Vec<f32>) -> Result<(), String> {
    let mut values = 0;
    for (j, field) in line.split(',').enumerate() {
        let x = whole_number(field.trim().as_bytes())
            .map(f64::from)
            .map_or_else(|| field.trim().parse(), Ok);
        let x: f64 = x.map_err(|_| {
            format!("line {n} value {j} is {:?}, not a number", crate::error::clip(field, 40))
        })?;
        out.push(pixel(x).ok_or_else(|| format!("line {n} value {j} is {x}; {RANGE}"))?);
        values += 1;
    }
    if values != features {
        return Err(format!("line {n} has {values} values; expected {features}"));
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

/// The data must be exactly what the shape says: a byte more or less means the header does not
/// describe the array (a wrong dtype or shape), and a guess would answer the wrong images.
fn check_len(have: usize, values: usize, width: usize) -> Result<(), String> {
    if have != values * width {
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
        // Weights, as RFC 9110 says: q=0 refuses a type, the heaviest wins, then the first.
        assert_eq!(Output::from_accept(Some("application/json;q=0")), None);
        assert_eq!(
            Output::from_accept(Some("text/csv;q=0.5, application/json;q=0.9")),
            Some(Output::Json)
        );
        assert_eq!(Output::from_accept(Some("text/csv;q=0.5, */*;q=0.1")), Some(Output::Csv));
        assert_eq!(Output::from_accept(Some("*/*, application/json;q=0")), Some(Output::JsonLines));
        assert_eq!(
            Output::from_accept(Some("application/jsonlines, application/json")),
            Some(Output::JsonLines)
        );
        assert_eq!(
            Output::from_accept(Some("text/csv; Q=1.0, application/json;q=1")),
            Some(Output::Csv)
        );
        assert_eq!(Output::from_accept(Some("text/csv;q=x")), None);
    }

    #[test]
    fn rgb_images_come_flat_as_rows_or_as_pixels_and_npy_with_their_channels() {
        let rgb = Shape { rows: 1, cols: 2, channels: 3 };
        let want = Ok(Batch { pixels: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], count: 1 });
        for body in ["[[1,2,3,4,5,6]]", "[[[1,2,3,4,5,6]]]", "[[[[1,2,3],[4,5,6]]]]"] {
            assert_eq!(decode(Input::Json, body.as_bytes(), rgb), want, "{body}");
        }
        assert_eq!(decode(Input::JsonLines, b"[[[1,2,3],[4,5,6]]]\n", rgb), want);
        assert_eq!(decode(Input::Csv, b"1,2,3,4,5,6\n", rgb), want);
        let npy = |shape: &[usize]| crate::data::numpy_test_npy("|u1", shape, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(decode(Input::Npy, &npy(&[1, 1, 2, 3]), rgb), want);
        assert_eq!(decode(Input::Npy, &npy(&[1, 6]), rgb), want);
        let e = decode(Input::Json, b"[[[[1,2],[4,5,6]]]]", rgb).unwrap_err();
        assert_eq!(e, "image 0 row 0 pixel 0 has 2 values; expected 3 (R, G, B)");
        let e = decode(Input::Npy, &npy(&[2, 3]), rgb).unwrap_err();
        assert!(e.contains("expected (N, 1, 2, 3) or (N, 6)"), "{e}");
        // A grey model takes no pixel lists.
        let e = decode(Input::Json, b"[[[[1],[2]]]]", SHAPE).unwrap_err();
        assert!(e.contains("is not a number"), "{e}");
    }

    #[test]
    fn json_bodies_read_alike_by_the_fast_and_the_general_parser() {
        let general = |body: &str| {
            json::body(body.as_bytes(), json::Shape::Image { rows: 2, cols: 2, channels: 1 })
                .map(|(pixels, count)| Batch { pixels, count })
        };
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
            csv_line(line, 1, 3, &mut out).map(|()| out)
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
            Err("line 1 value 0 is 256; pixel values are 0 to 255".into())
        );
        assert_eq!(general("1,2"), Err("line 1 has 2 values; expected 3".into()));
        // A plain line of the wrong length gets the general parser's count.
        let e = from_csv(b"1,2,3,4\n", 3).unwrap_err();
        assert_eq!(e, "line 1 has 4 values; expected 3");
    }

    #[test]
    fn json_csv_and_npy_give_the_same_batch() {
        let want = Batch { pixels: vec![0.0, 1.0, 2.0, 255.0, 4.0, 5.0, 6.0, 7.0], count: 2 };
        for body in [r#"[[0,1,2,255],[4,5,6,7]]"#, r#"{"instances": [[[0,1],[2,255]], [4,5,6,7]]}"#]
        {
            assert_eq!(decode(Input::Json, body.as_bytes(), SHAPE), Ok(want.clone()), "{body}");
        }
        assert_eq!(
            decode(Input::JsonLines, b"[0,1,2,255]\r\n[[4,5],[6,7]]\n", SHAPE),
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
        assert_eq!(e, "line 2 value 3 is 300; pixel values are 0 to 255");
        let e = decode(Input::Json, br#"{"x": 1}"#, SHAPE).unwrap_err();
        assert!(e.contains("\"instances\""), "{e}");
        assert_eq!(decode(Input::Csv, b"\n", SHAPE).unwrap_err(), "the body holds no image");
        let e = decode(Input::Json, br#"[[0,1,2,3],[[0,1],[2,3],[4,5]]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 1 has 3 rows; expected 2 of 2 values");
        let e = decode(Input::Json, br#"[[[0,1],[2,3,4]]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 0 row 1 has 3 values; expected 2");
        let e = decode(Input::Json, br#"[[[0,1],5]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 0 row 1 is not a list");
        let e = decode(Input::Json, br#"[[0,1,"2",3]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 0 value 2 is not a number");
        let e = decode(Input::Json, br#"[[0,1,[2],3]]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 0 value 2 is not a number");
        let e = decode(Input::Json, br#"[7]"#, SHAPE).unwrap_err();
        assert_eq!(e, "image 0 is not a list of pixel values");
        let e = decode(Input::Json, br#"{"instances": 3}"#, SHAPE).unwrap_err();
        assert!(e.contains("needs \"instances\": a list of images"), "{e}");
        let e = decode(Input::Json, br#"[[0,1,2,3]"#, SHAPE).unwrap_err();
        assert!(e.starts_with("the body is not JSON: EOF"), "{e}");
        let e = decode(Input::JsonLines, b"[0,1,2,3]\n[0,1,2]\n", SHAPE).unwrap_err();
        assert_eq!(e, "line 2 has 3 values; expected 4");
        let e = decode(Input::JsonLines, b"[0,1,2,3]\n[0,1,2,3] x\n", SHAPE).unwrap_err();
        assert!(e.starts_with("line 2: not JSON: trailing characters"), "{e}");
    }

    /// Every line of a line format gets one answer line: a blank line cannot be dropped, so it
    /// is refused, named by its line as an editor counts; so is every error after it.
    #[test]
    fn blank_lines_are_refused_and_errors_name_their_line() {
        for input in [Input::Csv, Input::JsonLines] {
            let body: &[u8] = if input == Input::Csv {
                b"0,1,2,3\n\n4,5,6,7\n"
            } else {
                b"[0,1,2,3]\n  \n[4,5,6,7]\n"
            };
            let e = decode(input, body, SHAPE).unwrap_err();
            assert!(e.starts_with("line 2 is blank; send one image"), "{input:?}: {e}");
            let body: &[u8] = if input == Input::Csv {
                b"0,1,2,3\r\n4,5,6,7\r\n0,1,2,300\r\n"
            } else {
                b"[0,1,2,3]\r\n[4,5,6,7]\r\n[0,1,2,300]\r\n"
            };
            let e = decode(input, body, SHAPE).unwrap_err();
            assert_eq!(e, "line 3 value 3 is 300; pixel values are 0 to 255", "{input:?}");
            // One final line end is not a line.
            let two = &body[..body.len() - if input == Input::Csv { 11 } else { 13 }];
            assert_eq!(decode(input, two, SHAPE).map(|b| b.count), Ok(2), "{input:?}");
        }
    }

    /// The cases the hosting contract leaves open, decided: a byte order mark is skipped,
    /// "instances" twice is refused, other keys are ignored, bytes after .npy data are refused.
    #[test]
    fn the_ambiguous_bodies_are_decided() {
        let want = Ok(Batch { pixels: vec![0.0, 1.0, 2.0, 3.0], count: 1 });
        assert_eq!(decode(Input::Json, b"\xef\xbb\xbf[[0,1,2,3]]", SHAPE), want);
        assert_eq!(decode(Input::Json, b"\xef\xbb\xbf[[0,1,2,3.0]]", SHAPE), want);
        assert_eq!(decode(Input::Csv, b"\xef\xbb\xbf0,1,2,3\n", SHAPE), want);
        assert_eq!(decode(Input::JsonLines, b"\xef\xbb\xbf[0,1,2,3]\n", SHAPE), want);
        assert_eq!(decode(Input::Json, br#"{"x": [1], "instances": [[0,1,2,3]]}"#, SHAPE), want);
        let e = decode(Input::Json, br#"{"instances": [[0,1,2,3]], "instances": []}"#, SHAPE);
        assert!(e.unwrap_err().contains("\"instances\" twice"));
        let mut npy = crate::data::numpy_test_npy("|u1", &[1, 4], &[0, 1, 2, 3]);
        assert_eq!(decode(Input::Npy, &npy, SHAPE), want);
        npy.push(0);
        let e = decode(Input::Npy, &npy, SHAPE).unwrap_err();
        assert_eq!(e, "the .npy data holds 5 bytes; its shape needs 4");
    }

    /// Images scaled to 0-1 are refused with how to send them; whole numbers in 0-1 (a black
    /// image) and 0-255 floats are read as sent.
    #[test]
    fn pixels_scaled_to_0_1_are_refused() {
        for (input, body) in [
            (Input::Json, &b"[[0,0.5,1,0.25]]"[..]),
            (Input::Csv, b"0,0.5,1,0.25\n"),
            (Input::JsonLines, b"[0,0.5,1,0.25]\n"),
        ] {
            let e = decode(input, body, SHAPE).unwrap_err();
            assert!(e.contains("multiply by 255"), "{input:?}: {e}");
        }
        let f32s: Vec<u8> = [0.0f32, 0.5, 1.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let npy = crate::data::numpy_test_npy("<f4", &[1, 4], &f32s);
        assert!(decode(Input::Npy, &npy, SHAPE).unwrap_err().contains("multiply by 255"));
        assert_eq!(decode(Input::Json, b"[[0,1,1,0]]", SHAPE).map(|b| b.count), Ok(1));
        assert_eq!(decode(Input::Json, b"[[0,127.5,255,0.25]]", SHAPE).map(|b| b.count), Ok(1));
        assert!(decode(Input::Picture, b"GIF89a", SHAPE)
            .unwrap_err()
            .contains("not a PNG or JPEG"));
    }
}
