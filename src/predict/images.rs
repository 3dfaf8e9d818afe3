//! The images `predict` and `serve` classify: PNG, JPEG and IDX files, told apart by their
//! content, decoded into grey bytes of the model's input size, or refused in words.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::data::{self, IdxKind};
use crate::files;

/// The largest PNG or JPEG file read (a 28×28 image is a few hundred bytes).
const MAX_IMAGE_FILE: u64 = 64 << 20;

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC: [u8; 3] = [0xff, 0xd8, 0xff];

/// One input file's images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// `count × rows × cols` bytes.
    pub pixels: Vec<u8>,
    /// From an IDX file (images named `file#index`), else one PNG or JPEG image.
    pub idx: bool,
}

/// Reads one input file's images; `Err` says why it cannot be classified, in words for the user.
pub fn read_images(
    path: &Path,
    (rows, cols): (usize, usize),
) -> std::result::Result<Images, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    if meta.is_dir() {
        return Err("is a folder, not an image file".into());
    }
    // A FIFO would block and a device never end: only regular files are read.
    let mut file = files::open_regular(path).map_err(|e| strip_path(path, &e))?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(|e| format!("cannot be read: {}", io_reason(&e)))?;
    let head = &head[..n];
    if head.starts_with(&PNG_MAGIC) || head.starts_with(&JPEG_MAGIC) {
        Ok(Images { pixels: read_picture(path, meta.len(), (rows, cols))?, idx: false })
    } else if head.starts_with(&files::GZIP_MAGIC) || head.starts_with(&[0, 0, 8]) {
        Ok(Images { pixels: read_idx_images(path, (rows, cols))?, idx: true })
    } else if n == 0 {
        Err("is empty, not a PNG, JPEG or IDX image file".into())
    } else {
        let hex: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "is not a PNG, JPEG or IDX image file (it starts with bytes {})",
            hex.join(" ")
        ))
    }
}

/// An error about `path` in words, without the path (the caller names the file).
fn strip_path(path: &Path, e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

fn io_reason(e: &io::Error) -> String {
    // "No such file or directory (os error 2)" without the number.
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

fn read_idx_images(
    path: &Path,
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    // read_idx's errors name the file; the caller names it too.
    let idx = data::read_idx(path).map_err(|e| strip_path(path, &e))?;
    match idx.kind {
        IdxKind::Images { rows: r, cols: c, .. } if (r, c) == (rows, cols) => Ok(idx.data),
        IdxKind::Images { count, rows: r, cols: c } => {
            Err(format!("holds {count} images of {r}x{c} pixels; the model expects {rows}x{cols}"))
        }
        IdxKind::Labels { count } => Err(format!("is an IDX file of {count} labels, not images")),
    }
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

fn read_picture(
    path: &Path,
    len: u64,
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    if len > MAX_IMAGE_FILE {
        return Err(format!("is {len} bytes, over the {MAX_IMAGE_FILE}-byte limit for an image"));
    }
    let bytes = files::read_limited(path, MAX_IMAGE_FILE).map_err(|e| strip_path(path, &e))?;
    decode_picture(&bytes, (rows, cols))
}

/// A PNG or JPEG picture's grey pixels, `rows × cols` of them, told apart by content; `Err` says
/// in words why it cannot be classified. The one decoder of pictures, for `predict` and `serve`.
pub fn decode_picture(
    bytes: &[u8],
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u8>, String> {
    if bytes.starts_with(&PNG_MAGIC) {
        read_png(bytes, (rows, cols))
    } else if bytes.starts_with(&JPEG_MAGIC) {
        read_jpeg(bytes, (rows, cols))
    } else {
        Err("is not a PNG or JPEG image".into())
    }
}

/// A PNG or JPEG picture's rows and columns, from its header alone.
pub fn picture_size(bytes: &[u8]) -> std::result::Result<(usize, usize), String> {
    if bytes.starts_with(&PNG_MAGIC) {
        let decoder = png::Decoder::new(io::Cursor::new(bytes));
        let reader =
            decoder.read_info().map_err(|e| format!("is not a readable PNG image: {e}"))?;
        Ok((reader.info().height as usize, reader.info().width as usize))
    } else if bytes.starts_with(&JPEG_MAGIC) {
        let mut decoder =
            zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(bytes));
        decoder.decode_headers().map_err(|e| format!("is not a readable JPEG image: {e}"))?;
        let info = decoder.info().ok_or("is not a readable JPEG image")?;
        Ok((info.height as usize, info.width as usize))
    } else {
        Err("is not a PNG or JPEG image".into())
    }
}

/// `Err` unless the picture is `cols` wide and `rows` high; checked from the header, before the
/// pixels are decoded.
fn check_size(w: usize, h: usize, (rows, cols): (usize, usize)) -> std::result::Result<(), String> {
    if (w, h) == (cols, rows) {
        Ok(())
    } else {
        Err(format!("is {w}x{h} pixels (width x height); the model expects {cols}x{rows}"))
    }
}

fn not_grayscale(what: &str) -> String {
    format!("has {what}; expected 1 (grayscale): convert it to 8-bit grayscale first")
}

fn read_png(bytes: &[u8], shape: (usize, usize)) -> std::result::Result<Vec<u8>, String> {
    let unreadable = |e: png::DecodingError| format!("is not a readable PNG image: {e}");
    let mut decoder =
        png::Decoder::new_with_limits(io::Cursor::new(bytes), png::Limits { bytes: 64 << 20 });
    // Grey levels of 1, 2, 4 or 16 bits become 8-bit ones.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let info = reader.info();
    check_size(info.width as usize, info.height as usize, shape)?;
    match info.color_type {
        png::ColorType::Grayscale => {}
        png::ColorType::GrayscaleAlpha => {
            return Err(not_grayscale("2 channels (grayscale and alpha)"))
        }
        png::ColorType::Rgb => return Err(not_grayscale("3 channels (RGB)")),
        png::ColorType::Rgba => return Err(not_grayscale("4 channels (RGBA)")),
        png::ColorType::Indexed => return Err(not_grayscale("a colour palette (indexed colour)")),
    }
    let mut buf = vec![0; reader.output_buffer_size().ok_or("is too large an image")?];
    let frame = reader.next_frame(&mut buf).map_err(unreadable)?;
    buf.truncate(frame.buffer_size());
    match frame.color_type {
        png::ColorType::Grayscale => Ok(buf),
        // A grey level marked transparent (tRNS) comes out with an alpha channel: keep the grey.
        png::ColorType::GrayscaleAlpha => Ok(buf.into_iter().step_by(2).collect()),
        other => Err(format!("decodes to {other:?} pixels; expected grayscale")),
    }
}

fn read_jpeg(bytes: &[u8], shape: (usize, usize)) -> std::result::Result<Vec<u8>, String> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let unreadable =
        |e: zune_jpeg::errors::DecodeErrors| format!("is not a readable JPEG image: {e}");
    let options = DecoderOptions::default().set_max_width(16384).set_max_height(16384);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(unreadable)?;
    let info = decoder.info().ok_or("is not a readable JPEG image")?;
    check_size(info.width as usize, info.height as usize, shape)?;
    match decoder.input_colorspace() {
        Some(ColorSpace::Luma) => {}
        Some(ColorSpace::CMYK | ColorSpace::YCCK) => {
            return Err(not_grayscale("4 channels (CMYK)"))
        }
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::BGR) => {
            return Err(not_grayscale("3 channels (colour)"))
        }
        other => return Err(format!("has colour space {other:?}; expected grayscale")),
    }
    if !jpeg_is_complete(bytes) {
        return Err("is a truncated JPEG image (no end-of-image marker after its last scan)".into());
    }
    decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
    let pixels = decoder.decode().map_err(unreadable)?;
    if pixels.len() != shape.0 * shape.1 {
        return Err(format!(
            "decodes to {} bytes, not {} grey pixels",
            pixels.len(),
            shape.0 * shape.1
        ));
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(
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

    #[test]
    fn grayscale_pngs_of_any_depth_become_8_bit_pixels() {
        use png::{BitDepth, ColorType::Grayscale};
        // 16-bit: the high byte of each big-endian sample.
        let sixteen = encode_png(2, 1, Grayscale, BitDepth::Sixteen, &[0xab, 0x12, 0x00, 0xff]);
        assert_eq!(read_png(&sixteen, (1, 2)), Ok(vec![0xab, 0x00]));
        // 4-bit: 0..15 spread over 0..255.
        let four = encode_png(2, 1, Grayscale, BitDepth::Four, &[0x0f]);
        assert_eq!(read_png(&four, (1, 2)), Ok(vec![0, 255]));
        // Height and width are told apart: a 2-wide, 1-high picture is not 1 wide and 2 high.
        let err = read_png(&four, (2, 1)).unwrap_err();
        assert_eq!(err, "is 2x1 pixels (width x height); the model expects 1x2");
        let cut = &sixteen[..sixteen.len() - 20];
        assert!(read_png(cut, (1, 2)).unwrap_err().starts_with("is not a readable PNG image"));
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
