//! One picture file (PNG or JPEG) → pixels of a given shape: the one decoder of pictures, for
//! training, `predict` and `serve`, so the three agree bit for bit on the same file.
//!
//! A picture is decoded at its own size into 8-bit grey or RGB, converted to the wanted number
//! of channels, then resized, in that order:
//! - 16-bit samples become 8-bit ones rounded to nearest (`v × 255 / 65535`); palettes and low
//!   bit depths are expanded; alpha is dropped (as PIL's and Keras' loaders drop it);
//! - RGB → grey is ITU-R 601-2 luma with PIL's integer weights, grey → RGB repeats the grey;
//! - resizing is bilinear (a triangle filter) with antialiasing: when shrinking, the filter is
//!   widened by the scale factor, as PIL's `Image.resize(…, BILINEAR)` and torchvision's
//!   `antialias=True` do, so a large photo becomes a small image without aliasing. A picture of
//!   the wanted size is left exactly as decoded.
//!
//! Sizes come from the file's header and are checked against a pixel limit before anything is
//! allocated, so a small file that claims to be 100,000 × 100,000 pixels (a decompression bomb)
//! is refused by its header.

use std::io;

/// The shape of one image: height, width and channels (1 grey, 3 RGB), stored row-major with
/// the channels of a pixel together (HWC, as PIL and NumPy hold pictures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rows: usize,
    pub cols: usize,
    pub channels: usize,
}

impl Shape {
    pub fn new(rows: usize, cols: usize, channels: usize) -> Self {
        Self { rows, cols, channels }
    }

    /// Bytes of one image.
    pub fn len(&self) -> usize {
        self.rows * self.cols * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// `28x28 grey` or `32x48 RGB` (height x width), for messages.
    pub fn describe(&self) -> String {
        format!("{}x{} {}", self.rows, self.cols, colour(self.channels))
    }
}

/// `grey` or `RGB`.
pub fn colour(channels: usize) -> &'static str {
    if channels == 1 {
        "grey"
    } else {
        "RGB"
    }
}

/// The shape a job asks pictures to have (`image_size`, `image_channels`); what is not asked
/// for, the channel's first picture decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// Rows and columns every picture is resized to.
    pub size: Option<(usize, usize)>,
    /// Channels every picture is converted to.
    pub channels: Option<usize>,
}

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC: [u8; 3] = [0xff, 0xd8, 0xff];

/// The most pixels a picture may have when nothing smaller is asked for: 8192 × 8192.
pub const MAX_PIXELS: usize = 1 << 26;

/// Whether `bytes` start as a PNG or JPEG file does.
pub fn is_picture(bytes: &[u8]) -> bool {
    bytes.starts_with(&PNG_MAGIC) || bytes.starts_with(&JPEG_MAGIC)
}

/// A picture's own shape (channels 1 or 3, alpha not counted), from its header alone.
pub fn header(bytes: &[u8]) -> Result<Shape, String> {
    if bytes.starts_with(&PNG_MAGIC) {
        let reader = png::Decoder::new(io::Cursor::new(bytes))
            .read_info()
            .map_err(|e| format!("is not a readable PNG image: {e}"))?;
        let info = reader.info();
        let channels = png_channels(info.color_type);
        Ok(Shape::new(info.height as usize, info.width as usize, channels))
    } else if bytes.starts_with(&JPEG_MAGIC) {
        let (decoder, _) = jpeg_headers(bytes)?;
        let info = decoder.info().ok_or("is not a readable JPEG image")?;
        let channels = jpeg_channels(&decoder)?;
        Ok(Shape::new(info.height as usize, info.width as usize, channels))
    } else {
        Err("is not a PNG or JPEG image".into())
    }
}

/// Decodes a picture and gives it `want`'s shape: converted to its channels and, when `resize`,
/// resized to its rows and columns; without `resize` a picture of another size is refused. A
/// picture of more than `max_pixels` pixels is refused from its header.
pub fn load(bytes: &[u8], want: Shape, resize: bool, max_pixels: usize) -> Result<Vec<u8>, String> {
    let (own, pixels) = decode(bytes, max_pixels)?;
    if !resize && (own.rows, own.cols) != (want.rows, want.cols) {
        return Err(format!(
            "is {}x{} pixels (height x width); expected {}x{}",
            own.rows, own.cols, want.rows, want.cols
        ));
    }
    let pixels = convert(pixels, own, want.channels);
    let own = Shape { channels: want.channels, ..own };
    Ok(resample(&pixels, own, want.rows, want.cols))
}

/// A picture's 8-bit pixels at its own size, grey or RGB.
pub fn decode(bytes: &[u8], max_pixels: usize) -> Result<(Shape, Vec<u8>), String> {
    if bytes.starts_with(&PNG_MAGIC) {
        decode_png(bytes, max_pixels)
    } else if bytes.starts_with(&JPEG_MAGIC) {
        decode_jpeg(bytes, max_pixels)
    } else {
        Err("is not a PNG or JPEG image".into())
    }
}

fn check_pixels(cols: usize, rows: usize, max_pixels: usize) -> Result<(), String> {
    match cols.checked_mul(rows) {
        Some(0) => Err("has no pixels (a width or height of 0)".into()),
        Some(n) if n <= max_pixels => Ok(()),
        _ => Err(format!(
            "is {rows}x{cols} pixels (height x width), over the limit of {max_pixels} pixels \
             per picture"
        )),
    }
}

fn png_channels(color: png::ColorType) -> usize {
    match color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        png::ColorType::Rgb | png::ColorType::Rgba | png::ColorType::Indexed => 3,
    }
}

fn decode_png(bytes: &[u8], max_pixels: usize) -> Result<(Shape, Vec<u8>), String> {
    let unreadable = |e: png::DecodingError| format!("is not a readable PNG image: {e}");
    // The decoder's own buffers (a row, the inflate window, text chunks): bounded apart from
    // the image, which is checked against `max_pixels` below before it is allocated.
    let limits = png::Limits { bytes: 64 << 20 };
    let mut decoder = png::Decoder::new_with_limits(io::Cursor::new(bytes), limits);
    // Palettes become RGB, 1-, 2- and 4-bit greys 8-bit ones, a tRNS colour an alpha channel;
    // 16-bit samples stay 16-bit and are rounded below (STRIP_16 would truncate).
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check_pixels(w, h, max_pixels)?;
    let (color, depth) = reader.output_color_type();
    let size = reader.output_buffer_size().ok_or("is too large an image")?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(unreadable)?;
    buf.truncate(frame.buffer_size());
    if depth == png::BitDepth::Sixteen {
        buf = buf.chunks_exact(2).map(|s| to_8_bit(u16::from_be_bytes([s[0], s[1]]))).collect();
    }
    let (samples, channels) = match color {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err("has a palette the decoder did not expand".into()),
    };
    if buf.len() != w * h * samples {
        return Err(format!("decodes to {} bytes, not {w}x{h} pixels", buf.len()));
    }
    if samples != channels {
        buf = buf.chunks_exact(samples).flat_map(|p| p[..channels].to_vec()).collect();
    }
    Ok((Shape::new(h, w, channels), buf))
}

/// A 16-bit sample as an 8-bit one, rounded to nearest.
fn to_8_bit(v: u16) -> u8 {
    ((v as u32 * 255 + 32767) / 65535) as u8
}

type Jpeg<'a> = zune_jpeg::JpegDecoder<zune_jpeg::zune_core::bytestream::ZCursor<&'a [u8]>>;

fn jpeg_headers(
    bytes: &[u8],
) -> Result<(Jpeg<'_>, zune_jpeg::zune_core::options::DecoderOptions), String> {
    use zune_jpeg::zune_core::{bytestream::ZCursor, options::DecoderOptions};
    // The decoder's own size limit, beside the pixel limit checked from the header.
    let options = DecoderOptions::default().set_max_width(1 << 16).set_max_height(1 << 16);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| format!("is not a readable JPEG image: {e}"))?;
    Ok((decoder, options))
}

fn jpeg_channels(decoder: &Jpeg<'_>) -> Result<usize, String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    match decoder.input_colorspace() {
        Some(ColorSpace::Luma) => Ok(1),
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::BGR) => Ok(3),
        Some(ColorSpace::CMYK | ColorSpace::YCCK) => Err("is a CMYK JPEG (4 channels, as print \
             workflows write them), which has no single right conversion to RGB: save it as an \
             RGB JPEG or PNG first"
            .into()),
        other => Err(format!("has JPEG colour space {other:?}; expected grey or colour (YCbCr)")),
    }
}

fn decode_jpeg(bytes: &[u8], max_pixels: usize) -> Result<(Shape, Vec<u8>), String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    let (mut decoder, options) = jpeg_headers(bytes)?;
    let info = decoder.info().ok_or("is not a readable JPEG image")?;
    let (w, h) = (info.width as usize, info.height as usize);
    check_pixels(w, h, max_pixels)?;
    let channels = jpeg_channels(&decoder)?;
    if !jpeg_is_complete(bytes) {
        return Err("is a truncated JPEG image (no end-of-image marker after its last scan)".into());
    }
    let out = if channels == 1 { ColorSpace::Luma } else { ColorSpace::RGB };
    decoder.set_options(options.jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(|e| format!("is not a readable JPEG image: {e}"))?;
    if pixels.len() != w * h * channels {
        return Err(format!("decodes to {} bytes, not {w}x{h} pixels", pixels.len()));
    }
    Ok((Shape::new(h, w, channels), pixels))
}

/// Whether a JPEG's last scan ends with the end-of-image marker. The decoder fills a truncated
/// scan with grey rather than failing, which would classify a half image without a word.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xff, 0xda];
    const EOI: [u8; 2] = [0xff, 0xd9];
    // Inside entropy-coded data 0xff is always followed by 0x00 or a restart marker, so the
    // first EOI after the last scan header ends the image.
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == SOS) else { return false };
    bytes[last_scan..].windows(2).any(|w| w == EOI)
}

/// `pixels` (of `from`'s shape) with `channels` channels.
pub fn convert(pixels: Vec<u8>, from: Shape, channels: usize) -> Vec<u8> {
    match (from.channels, channels) {
        (a, b) if a == b => pixels,
        (3, 1) => pixels.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect(),
        (1, 3) => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        (a, b) => unreachable!("pictures have 1 or 3 channels, not {a} or {b}"),
    }
}

/// ITU-R 601-2 luma in PIL's fixed point (`convert("L")`).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `pixels` of shape `from` resized to `rows × cols`: bilinear, antialiased when shrinking
/// (see the module's notes); unchanged when the size already matches.
pub fn resample(pixels: &[u8], from: Shape, rows: usize, cols: usize) -> Vec<u8> {
    if (from.rows, from.cols) == (rows, cols) {
        return pixels.to_vec();
    }
    let c = from.channels;
    // Across each row first, then down each column, as PIL does; in f32 between the passes.
    let across = Weights::new(from.cols, cols);
    let mut wide = vec![0f32; from.rows * cols * c];
    for (src, dst) in pixels.chunks_exact(from.cols * c).zip(wide.chunks_exact_mut(cols * c)) {
        for (x, (start, w)) in across.taps().enumerate() {
            for k in 0..c {
                let mut acc = 0f32;
                for (j, &wt) in w.iter().enumerate() {
                    acc += wt * src[(start + j) * c + k] as f32;
                }
                dst[x * c + k] = acc;
            }
        }
    }
    let down = Weights::new(from.rows, rows);
    let mut out = vec![0u8; rows * cols * c];
    let stride = cols * c;
    for (y, (start, w)) in down.taps().enumerate() {
        let dst = &mut out[y * stride..(y + 1) * stride];
        for (i, o) in dst.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (j, &wt) in w.iter().enumerate() {
                acc += wt * wide[(start + j) * stride + i];
            }
            *o = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A 1-D resampling from `from` samples to `to`: for each output sample, the first input
/// sample it reads and the normalized weights of the inputs from there.
struct Weights {
    starts: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Weights {
    fn new(from: usize, to: usize) -> Self {
        let scale = from as f64 / to as f64;
        // Shrinking widens the triangle by the scale, so every input sample contributes.
        let width = scale.max(1.0);
        let support = width; // the triangle's half-width, in input samples
        let mut starts = Vec::with_capacity(to);
        let mut weights = Vec::with_capacity(to);
        for i in 0..to {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(from);
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - centre) / width).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            // Trim zero weights at the ends so the inner loops only read what counts.
            let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v > 0.0).map_or(first, |p| p + 1);
            starts.push(lo + first);
            weights.push(w[first..last].iter().map(|&v| v as f32).collect());
        }
        Self { starts, weights }
    }

    fn taps(&self) -> impl Iterator<Item = (usize, &[f32])> {
        self.starts.iter().copied().zip(self.weights.iter().map(Vec::as_slice))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn encode_png(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    fn grey(rows: usize, cols: usize) -> Shape {
        Shape::new(rows, cols, 1)
    }

    #[test]
    fn pngs_of_every_depth_and_colour_become_8_bit_grey_or_rgb() {
        use png::{BitDepth::*, ColorType::*};
        // 16-bit: rounded to nearest, not the high byte (0x8080 → 128, 0x00ff → 1).
        let sixteen = encode_png(2, 1, Grayscale, Sixteen, &[0x80, 0x80, 0x00, 0xff]);
        assert_eq!(decode(&sixteen, MAX_PIXELS), Ok((grey(1, 2), vec![128, 1])));
        // 4-bit: 0..15 spread over 0..255.
        let four = encode_png(2, 1, Grayscale, Four, &[0x0f]);
        assert_eq!(decode(&four, MAX_PIXELS), Ok((grey(1, 2), vec![0, 255])));
        // Alpha is dropped, for grey and colour.
        let ga = encode_png(1, 1, GrayscaleAlpha, Eight, &[7, 0]);
        assert_eq!(decode(&ga, MAX_PIXELS), Ok((grey(1, 1), vec![7])));
        let rgba = encode_png(1, 1, Rgba, Eight, &[1, 2, 3, 4]);
        assert_eq!(decode(&rgba, MAX_PIXELS), Ok((Shape::new(1, 1, 3), vec![1, 2, 3])));
        let rgb16 = encode_png(1, 1, Rgb, Sixteen, &[0xff, 0xff, 0, 0, 0x80, 0x80]);
        assert_eq!(decode(&rgb16, MAX_PIXELS), Ok((Shape::new(1, 1, 3), vec![255, 0, 128])));
        let cut = &sixteen[..sixteen.len() - 20];
        assert!(decode(cut, MAX_PIXELS).unwrap_err().starts_with("is not a readable PNG image"));
    }

    #[test]
    fn a_palette_png_becomes_rgb() {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 2, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![10, 20, 30, 200, 100, 50]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[1, 0]).unwrap();
        w.finish().unwrap();
        assert_eq!(header(&out), Ok(Shape::new(1, 2, 3)));
        assert_eq!(decode(&out, MAX_PIXELS).unwrap().1, vec![200, 100, 50, 10, 20, 30]);
    }

    #[test]
    fn a_bomb_is_refused_from_its_header() {
        // A 1×1 PNG whose header claims 100,000 × 100,000 pixels (10 GB decoded): refused by
        // the header, before the pixel buffer exists.
        let mut png = encode_png(1, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[0]);
        png[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        assert_eq!(header(&png), Ok(grey(100_000, 100_000)));
        let err = decode(&png, MAX_PIXELS).unwrap_err();
        assert!(err.contains("is 100000x100000 pixels"), "{err}");
        assert!(err.contains("over the limit of 67108864 pixels"), "{err}");
    }

    #[test]
    fn colour_conversion_is_pils() {
        // PIL: Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0)) == 124
        assert_eq!(convert(vec![200, 100, 50], Shape::new(1, 1, 3), 1), vec![124]);
        assert_eq!(convert(vec![255, 255, 255, 0, 0, 0], Shape::new(1, 2, 3), 1), vec![255, 0]);
        assert_eq!(convert(vec![9], grey(1, 1), 3), vec![9, 9, 9]);
    }

    #[test]
    fn resizing_keeps_flat_images_flat_and_the_same_size_untouched() {
        let flat = vec![77u8; 40 * 30 * 3];
        let small = resample(&flat, Shape::new(40, 30, 3), 7, 5);
        assert_eq!(small, vec![77u8; 7 * 5 * 3]);
        let big = resample(&flat, Shape::new(40, 30, 3), 90, 61);
        assert!(big.iter().all(|&v| v == 77));
        let any: Vec<u8> = (0..=255).collect();
        assert_eq!(resample(&any, grey(16, 16), 16, 16), any);
    }

    #[test]
    fn shrinking_averages_instead_of_picking_pixels() {
        // Stripes one pixel wide: nearest-neighbour or plain bilinear sampling at half size
        // would keep only the black or only the white ones; the antialiased filter gives grey.
        let stripes: Vec<u8> = (0..64).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
        let half = resample(&stripes, grey(1, 64), 1, 32);
        assert!(half.iter().all(|&v| (100..=155).contains(&v)), "{half:?}");
        // Doubling interpolates between neighbours.
        let up = resample(&[0, 255], grey(1, 2), 1, 4);
        assert_eq!(up, vec![0, 64, 191, 255]);
    }

    #[test]
    fn load_converts_then_resizes_or_refuses_another_size() {
        let rgb = encode_png(4, 2, png::ColorType::Rgb, png::BitDepth::Eight, &[200; 24]);
        assert_eq!(load(&rgb, grey(1, 2), true, MAX_PIXELS), Ok(vec![200, 200]));
        let err = load(&rgb, grey(1, 2), false, MAX_PIXELS).unwrap_err();
        assert_eq!(err, "is 2x4 pixels (height x width); expected 1x2");
        let err = load(&rgb, grey(1, 2), true, 7).unwrap_err();
        assert!(err.contains("over the limit of 7 pixels"), "{err}");
    }

    #[test]
    fn jpeg_completeness_looks_after_the_last_scan() {
        let whole = [0xff, 0xd8, 0xff, 0xda, 1, 2, 0xff, 0x00, 3, 0xff, 0xd9];
        assert!(jpeg_is_complete(&whole));
        assert!(!jpeg_is_complete(&whole[..9]));
        // An end marker before the last scan (an embedded thumbnail's) does not count.
        let thumb = [0xff, 0xd8, 0xff, 0xda, 0xff, 0xd9, 0xff, 0xda, 5, 6];
        assert!(!jpeg_is_complete(&thumb));
        assert!(!jpeg_is_complete(&[0xff, 0xd8, 0xff, 0xd9]), "no scan at all");
    }
}
