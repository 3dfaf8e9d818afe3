//! JSON and JSON-lines bodies read straight into fixed-size images (or table rows): no tree of
//! values in between, so a body costs its decoded floats and little more, and reading stops at
//! the first image that is wrong, named with what was expected.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What each item of a body must be.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `rows × cols × channels` pixel values 0–255: flat, or as `rows` lists of `cols ×
    /// channels` numbers, or (RGB) of `cols` lists of `channels` numbers.
    Image { rows: usize, cols: usize, channels: usize },
    /// `width` finite numbers, or `{"features": [width numbers]}`.
    Table { width: usize },
}

impl Shape {
    fn noun(self) -> &'static str {
        match self {
            Shape::Image { .. } => "images",
            Shape::Table { .. } => "rows",
        }
    }
}

/// The values read so far, and the first thing wrong with the body, in the client's words.
struct Sink {
    shape: Shape,
    values: Vec<f32>,
    count: usize,
    why: Option<String>,
}

impl Sink {
    fn fail<E: de::Error>(&mut self, why: String) -> E {
        self.why.get_or_insert(why);
        E::custom("")
    }

    /// serde_json's error, unless a check of ours stopped the parse: then ours.
    fn reason(&mut self, e: &serde_json::Error, prefix: &str) -> String {
        self.why.take().unwrap_or_else(|| format!("{prefix}{e}"))
    }
}

/// A JSON body: `[ITEM, ...]` or `{"instances": [ITEM, ...]}`. Returns the values and the
/// item count.
pub fn body(body: &[u8], shape: Shape) -> Result<(Vec<f32>, usize), String> {
    let mut sink = Sink { shape, values: Vec::new(), count: 0, why: None };
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = de::Deserializer::deserialize_any(&mut de, Top(&mut sink)).and_then(|()| de.end());
    match read {
        Ok(()) => Ok((sink.values, sink.count)),
        Err(e) => Err(sink.reason(&e, "the body is not JSON: ")),
    }
}

/// A JSON-lines body: one ITEM per line, named by line (1-based). A blank line is an error:
/// each line gets one answer line, so none may be skipped.
pub fn lines(body: &[u8], shape: Shape) -> Result<(Vec<f32>, usize), String> {
    let mut sink = Sink { shape, values: Vec::new(), count: 0, why: None };
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            let one = match shape {
                Shape::Image { .. } => "image",
                Shape::Table { .. } => "row",
            };
            return Err(format!("line {n} is blank; send one {one} per line"));
        }
        let mut de = serde_json::Deserializer::from_slice(line);
        let item = Item { sink: &mut sink, name: format!("line {n}") };
        let read = item.deserialize(&mut de).and_then(|()| de.end());
        if let Err(e) = read {
            return Err(sink.reason(&e, &format!("line {n}: not JSON: ")));
        }
    }
    Ok((sink.values, sink.count))
}

/// The body's outer value.
struct Top<'a>(&'a mut Sink);

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of {} or {{\"instances\": [...]}}", self.0.shape.noun())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        List(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let noun = self.0.shape.noun();
        let mut seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "instances" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if seen {
                return Err(self.0.fail(format!(
                    "the JSON object has \"instances\" twice; send one list of {noun}"
                )));
            }
            seen = true;
            map.next_value_seed(Instances(&mut *self.0))?;
        }
        if !seen {
            return Err(self
                .0
                .fail(format!("a JSON object body needs \"instances\": a list of {noun}")));
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.wrong())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.wrong())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.wrong())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.wrong())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.wrong())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.wrong())
    }
}

impl Top<'_> {
    fn wrong<E: de::Error>(self) -> E {
        let noun = self.0.shape.noun();
        self.0.fail(format!("the JSON body must be a list of {noun} or {{\"instances\": [...]}}"))
    }
}

/// The value of `"instances"`: a list.
struct Instances<'a>(&'a mut Sink);

impl<'de> DeserializeSeed<'de> for Instances<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Instances<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        List(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.fail())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.fail())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.fail())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.fail())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.fail())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.fail())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.fail())
    }
}

impl Instances<'_> {
    fn fail<E: de::Error>(self) -> E {
        let noun = self.0.shape.noun();
        self.0.fail(format!("a JSON object body needs \"instances\": a list of {noun}"))
    }
}

/// A list of items, each named by its 0-based index.
struct List<'a>(&'a mut Sink);

impl List<'_> {
    fn visit_seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let word = match self.0.shape {
            Shape::Image { .. } => "image",
            Shape::Table { .. } => "instance",
        };
        let mut i = 0;
        while seq
            .next_element_seed(Item { sink: &mut *self.0, name: format!("{word} {i}") })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
}

/// One image or row, named in errors by `name`.
struct Item<'a> {
    sink: &'a mut Sink,
    name: String,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Item<'_> {
    fn not_a_list<E: de::Error>(self) -> E {
        let why = match self.sink.shape {
            Shape::Image { .. } => format!("{} is not a list of pixel values", self.name),
            Shape::Table { .. } => format!("{} is not a list of numbers", self.name),
        };
        self.sink.fail(why)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let (start, shape) = (self.sink.values.len(), self.sink.shape);
        let read = Values { sink: &mut *self.sink, name: &self.name, start };
        match shape {
            Shape::Image { rows, cols, channels } => read.image(seq, rows, cols, channels)?,
            Shape::Table { width } => read.flat(seq, width)?,
        }
        self.sink.count += 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Shape::Table { width } = self.sink.shape else {
            return Err(self.not_a_list());
        };
        let mut found = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "features" || found {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            found = true;
            let start = self.sink.values.len();
            let read = Values { sink: &mut *self.sink, name: &self.name, start };
            map.next_value_seed(Features { read, width })?;
        }
        if !found {
            let why = format!("{} is an object without \"features\": a list of numbers", self.name);
            return Err(self.sink.fail(why));
        }
        self.sink.count += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.not_a_list())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_a_list())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_a_list())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_a_list())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_a_list())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_a_list())
    }
}

/// A table row's `"features"` list.
struct Features<'a, 'n> {
    read: Values<'a, 'n>,
    width: usize,
}

impl<'de> DeserializeSeed<'de> for Features<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Features<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.read.flat(seq, self.width)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.read.no_features())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.read.no_features())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.read.no_features())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.read.no_features())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.read.no_features())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.read.no_features())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.read.no_features())
    }
}

/// Reads one item's numbers into the sink, checking each.
struct Values<'a, 'n> {
    sink: &'a mut Sink,
    name: &'n str,
    /// Where this item's values start in the sink.
    start: usize,
}

/// What one element of an image's list was.
enum Found {
    Number(f64),
    /// A row of the image, read into the sink.
    Row,
    Other,
}

/// One element of an image's list: a number, or (unless the image is flat) row `n`, read
/// straight into the sink.
struct Element<'r, 'a, 'n> {
    read: &'r mut Values<'a, 'n>,
    n: usize,
    /// Whether the image is rows (`Some(true)`), flat (`Some(false)`) or not known yet.
    nested: Option<bool>,
    rows: usize,
    cols: usize,
    channels: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_, '_> {
    type Value = Found;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_, '_> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of numbers")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Found, E> {
        Ok(Found::Number(x))
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Found, E> {
        Ok(Found::Number(x as f64))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Found, E> {
        Ok(Found::Number(x as f64))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        if self.nested == Some(false) {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Found::Other);
        }
        // A row's values: numbers, or (RGB) pixels as lists of their channels' numbers.
        let (n, width, ch) = (self.n, self.cols * self.channels, self.channels);
        let mut c = 0;
        let mut pixel = 0;
        while let Some(cell) = seq.next_element_seed(CellSeed(ch))? {
            let values = match cell {
                Cell::Number(x) => [x, 0.0, 0.0, 0.0],
                Cell::Pixel(v, len) if ch > 1 && len == ch => v,
                Cell::Pixel(_, len) if ch > 1 => {
                    let why = format!(
                        "{} row {n} pixel {pixel} has {len} values; expected {ch} (R, G, B)",
                        self.read.name
                    );
                    return Err(self.read.sink.fail(why));
                }
                Cell::Pixel(..) | Cell::Other => {
                    return Err(self.read.not_a_number(n * width + c));
                }
            };
            let len = if matches!(cell, Cell::Number(_)) { 1 } else { ch };
            for &x in &values[..len] {
                if c < width && n < self.rows {
                    self.read.push(n * width + c, x)?;
                }
                c += 1;
            }
            pixel += 1;
        }
        if c != width {
            let why = format!("{} row {n} has {c} values; expected {width}", self.read.name);
            return Err(self.read.sink.fail(why));
        }
        Ok(Found::Row)
    }
}

impl<'a, 'n> Values<'a, 'n> {
    fn no_features<E: de::Error>(self) -> E {
        let why = format!("{} is an object without \"features\": a list of numbers", self.name);
        self.sink.fail(why)
    }

    /// The value at flat index `j`, checked.
    fn push<E: de::Error>(&mut self, j: usize, x: f64) -> Result<(), E> {
        match self.sink.shape {
            Shape::Image { .. } if (0.0..=255.0).contains(&x) => self.sink.values.push(x as f32),
            Shape::Image { .. } => {
                let why = format!("{} value {j} is {x}; {}", self.name, super::payload::RANGE);
                return Err(self.sink.fail(why));
            }
            Shape::Table { .. } => match Some(x as f32).filter(|v| v.is_finite()) {
                Some(v) => self.sink.values.push(v),
                None => {
                    let why = format!("{} value {j} is {x}, not a finite number", self.name);
                    return Err(self.sink.fail(why));
                }
            },
        }
        Ok(())
    }

    fn not_a_number<E: de::Error>(&mut self, j: usize) -> E {
        let why = format!("{} value {j} is not a number", self.name);
        self.sink.fail(why)
    }

    /// `width` numbers; more or fewer is an error that says how many there were.
    fn flat<'de, A: SeqAccess<'de>>(mut self, mut seq: A, width: usize) -> Result<(), A::Error> {
        let mut j = 0;
        while let Some(x) = seq.next_element_seed(Number)? {
            match x {
                Some(x) if j < width => self.push(j, x)?,
                Some(_) => {}
                None => return Err(self.not_a_number(j)),
            }
            j += 1;
        }
        self.check_count(j, width)
    }

    fn check_count<E: de::Error>(self, n: usize, width: usize) -> Result<(), E> {
        if n == width {
            return Ok(());
        }
        self.sink.values.truncate(self.start);
        let why = match self.sink.shape {
            Shape::Image { .. } => format!("{} has {n} values; expected {width}", self.name),
            Shape::Table { .. } => {
                format!("{} has {n} values; the model takes {width} features (no label)", self.name)
            }
        };
        Err(self.sink.fail(why))
    }

    /// An image: `rows × cols × channels` numbers, or `rows` lists (of numbers, or of pixels'
    /// channels); the first element decides.
    fn image<'de, A: SeqAccess<'de>>(
        mut self,
        mut seq: A,
        rows: usize,
        cols: usize,
        channels: usize,
    ) -> Result<(), A::Error> {
        let width = rows * cols * channels;
        let mut nested = None;
        let mut n = 0;
        loop {
            let seed = Element { read: &mut self, n, nested, rows, cols, channels };
            let Some(element) = seq.next_element_seed(seed)? else { break };
            match (element, nested) {
                (Found::Number(_) | Found::Other, Some(true)) => {
                    let why = format!("{} row {n} is not a list", self.name);
                    return Err(self.sink.fail(why));
                }
                (Found::Number(x), _) => {
                    nested = Some(false);
                    if n < width {
                        self.push(n, x)?;
                    }
                }
                (Found::Row, _) => nested = Some(true),
                (Found::Other, _) => return Err(self.not_a_number(n)),
            }
            n += 1;
        }
        if nested == Some(true) {
            return self.check_rows(n, rows, cols * channels);
        }
        self.check_count(n, width)
    }

    fn check_rows<E: de::Error>(self, n: usize, rows: usize, cols: usize) -> Result<(), E> {
        if n == rows {
            return Ok(());
        }
        self.sink.values.truncate(self.start);
        let why = format!("{} has {n} rows; expected {rows} of {cols} values", self.name);
        Err(self.sink.fail(why))
    }
}

/// One element of an image's row: a number, or a pixel's list of up to 4 numbers (with its
/// length, which may be more than 4).
enum Cell {
    Number(f64),
    Pixel([f64; 4], usize),
    Other,
}

/// Reads a [`Cell`]; lists are read as pixels only for images of more than one channel.
struct CellSeed(usize);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cell, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a pixel's list of numbers")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Cell, E> {
        Ok(Cell::Number(x))
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Cell, E> {
        Ok(Cell::Number(x as f64))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Cell, E> {
        Ok(Cell::Number(x as f64))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Cell, E> {
        Ok(Cell::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Cell, E> {
        Ok(Cell::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cell, A::Error> {
        let (mut v, mut len, mut numbers) = ([0.0; 4], 0, true);
        while let Some(x) = seq.next_element_seed(Number)? {
            match x {
                Some(x) if len < 4 => v[len] = x,
                Some(_) => {}
                None => numbers = false,
            }
            len += 1;
        }
        Ok(if numbers && self.0 > 1 { Cell::Pixel(v, len) } else { Cell::Other })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Cell::Other)
    }
}

/// A list element that is a number (`Some`) or not (`None`).
struct Number;

impl<'de> DeserializeSeed<'de> for Number {
    type Value = Option<f64>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Number {
    type Value = Option<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Option<f64>, E> {
        Ok(Some(x))
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Option<f64>, E> {
        Ok(Some(x as f64))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Option<f64>, E> {
        Ok(Some(x as f64))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<f64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<f64>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}
