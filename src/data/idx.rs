//! The IDX format (gzipped or not): headers checked against the bytes that really arrive, so a
//! header claiming 2^32 items cannot make us allocate gigabytes. (The one-shot gzip decoder,
//! which needs its buffer up front, sizes it from the header only up to 64 bytes per compressed
//! byte present, and touches only what it fills.)

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;

use crate::error::user;
use crate::{files, inflate};

/// The largest payload we accept from one file (16 GiB): far above any real IDX file, far below
/// what a corrupt header can claim.
const MAX_PAYLOAD: u64 = 16 << 30;
/// The most a gzipped file may inflate to, per compressed byte, for libdeflate's one-shot decoder
/// (which allocates its whole output first). Real IDX files inflate 2 to 5 times; past this, the
/// streaming decoder, whose buffer grows only with the bytes that really arrive.
const MAX_INFLATE_RATIO: u64 = 64;

/// What an IDX header says a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxKind {
    /// `count` images of `rows` × `cols` unsigned bytes.
    Images { count: usize, rows: usize, cols: usize },
    /// `count` unsigned-byte labels.
    Labels { count: usize },
}

impl IdxKind {
    fn payload_len(&self) -> Option<u64> {
        match *self {
            IdxKind::Images { count, rows, cols } => {
                (count as u64).checked_mul(rows as u64)?.checked_mul(cols as u64)
            }
            IdxKind::Labels { count } => Some(count as u64),
        }
    }
}

impl fmt::Display for IdxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxKind::Images { count, rows, cols } => write!(f, "{count} images of {rows}x{cols}"),
            IdxKind::Labels { count } => write!(f, "{count} labels"),
        }
    }
}

/// Parses an IDX header from its first bytes; `Err` says why it is not one we can use.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<(IdxKind, usize), String> {
    if bytes.len() < 4 {
        return Err(format!("is too short for an IDX header ({} bytes)", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "is not an IDX file (magic {:02x}{:02x}{:02x}{:02x}, expected 0000 08 01 or 0000 08 03)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    let (ty, ndims) = (bytes[2], bytes[3] as usize);
    if ty != 0x08 {
        return Err(format!(
            "has IDX element type 0x{ty:02x}; only unsigned bytes (0x08) are supported"
        ));
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format!("is truncated inside its IDX header ({ndims} dimensions)"));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let kind = match dims[..] {
        [count] => IdxKind::Labels { count },
        [count, rows, cols] => IdxKind::Images { count, rows, cols },
        _ => {
            return Err(format!(
                "has {ndims} IDX dimensions {dims:?}; expected 1 (labels) or 3 (images)"
            ))
        }
    };
    Ok((kind, header_len))
}

/// One decoded IDX file.
#[derive(Debug, Clone)]
pub struct IdxFile {
    pub path: PathBuf,
    pub kind: IdxKind,
    pub data: Vec<u8>,
    /// BLAKE3 digest of `data`, computed by the thread that read it.
    pub digest: [u8; 32],
}

fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| files::io_error(path, e))?);
    let mut magic = [0u8; 2];
    let n =
        read_up_to(&mut file, &mut magic).with_context(|| format!("reading {}", path.display()))?;
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    Ok(if n == 2 && magic == files::GZIP_MAGIC {
        Box::new(MultiGzDecoder::new(head))
    } else {
        Box::new(head)
    })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_err(path: &Path, e: std::io::Error) -> anyhow::Error {
    // A corrupt gzip stream is the user's data, not our fault.
    if matches!(
        e.kind(),
        std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
    ) {
        user(format!("{}: cannot be decompressed: {e}", path.display()))
    } else {
        anyhow::Error::new(e).context(format!("reading {}", path.display()))
    }
}

/// Reads only the header of an IDX file (decompressing as little as needed).
pub fn peek_header(path: &Path) -> Result<std::result::Result<IdxKind, String>> {
    let mut r = open(path)?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut r, &mut head).map_err(|e| read_err(path, e))?;
    Ok(parse_header(&head[..n]).map(|(kind, _)| kind))
}

/// Reads and checks a whole IDX file.
pub fn read_idx(path: &Path) -> Result<IdxFile> {
    let mut file = File::open(path).map_err(|e| files::io_error(path, e))?;
    let mut magic = [0u8; 2];
    let n =
        read_up_to(&mut file, &mut magic).with_context(|| format!("reading {}", path.display()))?;
    if n == 2 && magic == files::GZIP_MAGIC {
        // The whole compressed file: its size is real, whatever its contents claim.
        // SAFETY: SageMaker writes a channel's files before the job starts and nothing
        // truncates them while it runs; if something did, the SIGBUS would end the job (no
        // failure file: the one caveat of reading the page cache in place, ~11 ms faster).
        if let Some(map) = unsafe { inflate::MappedFile::new(&file) } {
            return read_gzip(path, &map);
        }
        let size = file.metadata().map_or(0, |m| m.len() as usize);
        let mut gz = Vec::with_capacity(size);
        inflate::advise_huge_pages(&mut gz);
        gz.extend_from_slice(&magic);
        file.read_to_end(&mut gz).with_context(|| format!("reading {}", path.display()))?;
        return read_gzip(path, &gz);
    }
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(BufReader::new(file));
    read_stream(path, head)
}

/// Reads and checks an IDX header; returns what it describes, its length and the payload's.
fn read_header(path: &Path, r: &mut impl Read) -> Result<(IdxKind, usize, u64)> {
    let mut head = [0u8; 16];
    let n = read_up_to(r, &mut head[..4]).map_err(|e| read_err(path, e))?;
    let ndims = if n == 4 { head[3] as usize } else { 0 };
    let want = (4 + 4 * ndims).min(16);
    let m = read_up_to(r, &mut head[n..want]).map_err(|e| read_err(path, e))?;
    let (kind, header_len) =
        parse_header(&head[..n + m]).map_err(|why| user(format!("{}: {why}", path.display())))?;
    let expected = kind.payload_len().filter(|&len| len <= MAX_PAYLOAD).ok_or_else(|| {
        user(format!("{}: header claims {kind}, over the 16 GiB limit", path.display()))
    })?;
    Ok((kind, header_len, expected))
}

/// A gzipped IDX file, whole in memory: inflated in one go by libdeflate when it is one gzip
/// member of exactly the size its IDX header describes, else streamed as any other file.
fn read_gzip(path: &Path, gz: &[u8]) -> Result<IdxFile> {
    // The header, from the first bytes only.
    let (kind, header_len, expected) = read_header(path, &mut MultiGzDecoder::new(gz))?;
    if let Some(total) = one_shot_len(gz, header_len, expected) {
        if let Some(mut data) = inflate::gunzip_exact(gz, total) {
            let digest = drop_header_and_hash(&mut data, header_len);
            return Ok(IdxFile { path: path.to_path_buf(), kind, data, digest });
        }
    }
    read_stream(path, MultiGzDecoder::new(gz))
}

/// The size to inflate `gz` to in one go, if the one-shot decoder may: it needs its whole buffer
/// before it starts, and the header sizing it is not trusted, so only where that size is at most
/// MAX_INFLATE_RATIO times the bytes read and agrees with the gzip trailer (ISIZE, the size mod
/// 2^32). Elsewhere the stream, whose buffer grows only with what arrives.
fn one_shot_len(gz: &[u8], header_len: usize, expected: u64) -> Option<usize> {
    let total = header_len as u64 + expected;
    let trailer_size = u32::from_le_bytes(*gz.last_chunk::<4>()?);
    if total > gz.len() as u64 * MAX_INFLATE_RATIO || trailer_size != total as u32 {
        return None;
    }
    usize::try_from(total).ok()
}

/// Reads an IDX file from a stream that starts at its header, checking its length.
fn read_stream(path: &Path, mut r: impl Read) -> Result<IdxFile> {
    let (kind, _, expected) = read_header(path, &mut r)?;
    // Read at most one byte more than the header promises: the buffer grows with the bytes that
    // really arrive, never with what the header claims.
    let mut data = Vec::new();
    r.take(expected + 1).read_to_end(&mut data).map_err(|e| read_err(path, e))?;
    let got = data.len() as u64;
    if got < expected {
        return Err(user(format!(
            "{}: truncated: header says {kind} ({expected} bytes of data), file has {got}",
            path.display()
        )));
    }
    if got > expected {
        return Err(user(format!(
            "{}: has data past the {expected} bytes its header ({kind}) describes",
            path.display()
        )));
    }
    Ok(finish(path, kind, data))
}

/// Moves the payload to the front of `buf` over the header, hashing it on the way: one pass
/// over memory instead of a 47 MB memmove and then BLAKE3 (3 of ~18 ms on the train images).
/// The digest is BLAKE3's of the payload, whatever the pieces: the hasher's input is a stream.
fn drop_header_and_hash(buf: &mut Vec<u8>, header_len: usize) -> [u8; 32] {
    // A multiple of BLAKE3's 1 KiB chunks that stays in L2 between the move and the hash.
    const STEP: usize = 64 << 10;
    let payload = buf.len() - header_len;
    let mut hasher = blake3::Hasher::new();
    let mut at = 0;
    while at < payload {
        let n = STEP.min(payload - at);
        buf.copy_within(header_len + at..header_len + at + n, at);
        hasher.update(&buf[at..at + n]);
        at += n;
    }
    buf.truncate(payload);
    *hasher.finalize().as_bytes()
}

fn finish(path: &Path, kind: IdxKind, data: Vec<u8>) -> IdxFile {
    let digest = *blake3::hash(&data).as_bytes();
    IdxFile { path: path.to_path_buf(), kind, data, digest }
}

/// Writes an IDX file: the inverse of [`read_idx`], for tests and tools.
pub fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) -> Result<()> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let bytes = if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes)?;
        enc.finish()?
    } else {
        bytes
    };
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::data) fn msg(r: Result<impl fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert!(crate::error::is_user_error(&e), "not a user error: {e:#}");
        format!("{e:#}")
    }

    pub(in crate::data) fn images(dir: &Path, name: &str, n: u32, gzip: bool) -> PathBuf {
        let p = dir.join(name);
        write_idx(&p, &[n, 2, 3], &vec![7u8; (n * 6) as usize], gzip).unwrap();
        p
    }

    pub(in crate::data) fn labels(dir: &Path, name: &str, labels: &[u8], gzip: bool) -> PathBuf {
        let p = dir.join(name);
        write_idx(&p, &[labels.len() as u32], labels, gzip).unwrap();
        p
    }

    #[test]
    fn reads_plain_and_gzipped_files() {
        let d = tempfile::tempdir().unwrap();
        for gz in [false, true] {
            let f = read_idx(&images(d.path(), "i", 4, gz)).unwrap();
            assert_eq!(f.kind, IdxKind::Images { count: 4, rows: 2, cols: 3 });
            assert_eq!(f.data.len(), 24);
            let f = read_idx(&labels(d.path(), "l", &[1, 2, 3], gz)).unwrap();
            assert_eq!((f.kind, f.data), (IdxKind::Labels { count: 3 }, vec![1, 2, 3]));
        }
    }

    #[test]
    fn a_huge_header_fails_on_real_length_without_allocating() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge");
        // 2^32-1 images of 65535x65535: exabytes claimed, 100 bytes present.
        let mut bytes =
            vec![0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff];
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &bytes).unwrap();
        assert!(msg(read_idx(&p)).contains("over the 16 GiB limit"));
        // 2^32-1 labels: under the limit, so it must fail on the bytes actually there.
        let mut bytes = vec![0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &bytes).unwrap();
        let m = msg(read_idx(&p));
        assert!(m.contains("truncated: header says 4294967295 labels"), "{m}");
        assert!(m.contains("file has 100"), "{m}");
    }

    #[test]
    fn gzipped_files_read_as_their_plain_bytes_whichever_decoder_runs() {
        let d = tempfile::tempdir().unwrap();
        // Several MB, compressible like real images.
        let n = 7_000u32;
        let data: Vec<u8> = (0..n * 784).map(|i| ((i % 784) * (i / 784 % 7) / 13) as u8).collect();
        let header = |n: u32| {
            let mut h = vec![0, 0, 8, 3];
            [n, 28, 28].iter().for_each(|d| h.extend_from_slice(&d.to_be_bytes()));
            h
        };
        let gzip = |bytes: &[u8]| {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap()
        };
        let plain = d.path().join("plain");
        write_idx(&plain, &[n, 28, 28], &data, false).unwrap();
        let want = read_idx(&plain).unwrap();
        assert_eq!(want.data, data);
        // One member: libdeflate's one-shot path.
        let one = d.path().join("one.gz");
        write_idx(&one, &[n, 28, 28], &data, true).unwrap();
        let gz = std::fs::read(&one).unwrap();
        assert_eq!(one_shot_len(&gz, 16, data.len() as u64), Some(16 + data.len()));
        // Two members, split inside the header and inside the data: the streaming path.
        let mut bytes = header(n);
        bytes.extend_from_slice(&data);
        let mut two = gzip(&bytes[..7]);
        two.extend_from_slice(&gzip(&bytes[7..]));
        let two_path = d.path().join("two.gz");
        std::fs::write(&two_path, &two).unwrap();
        for p in [&one, &two_path] {
            let got = read_idx(p).unwrap();
            assert_eq!((got.kind, &got.data, got.digest), (want.kind, &want.data, want.digest));
        }
        // An empty member after the data changes nothing either.
        let mut padded = gz.clone();
        padded.extend_from_slice(&gzip(b""));
        std::fs::write(&two_path, &padded).unwrap();
        assert_eq!(read_idx(&two_path).unwrap().digest, want.digest);
    }

    #[test]
    fn dropping_the_header_hashes_the_payload() {
        for len in [0, 1, 1023, 1024, 65_536, 65_537, 300_001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            let mut buf = vec![9u8; 16];
            buf.extend_from_slice(&payload);
            let digest = drop_header_and_hash(&mut buf, 16);
            assert_eq!(buf, payload);
            assert_eq!(digest, *blake3::hash(&payload).as_bytes(), "{len} bytes");
        }
    }

    #[test]
    fn the_one_shot_decoder_is_sized_only_by_headers_the_bytes_bear_out() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge.gz");
        // 2^32-1 labels claimed, 100 present, and a gzip trailer forged to agree with the
        // header (ISIZE = 2^32-1 + 8, mod 2^32): still no 4 GiB buffer, and the real length
        // decides.
        let mut bytes = vec![0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&[0u8; 100]);
        let mut gz = {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            enc.finish().unwrap()
        };
        let claimed = 8 + 0xffff_ffffu64;
        assert_eq!(one_shot_len(&gz, 8, claimed - 8), None);
        let at = gz.len() - 4;
        gz[at..].copy_from_slice(&(claimed as u32).to_le_bytes());
        assert_eq!(one_shot_len(&gz, 8, claimed - 8), None);
        std::fs::write(&p, &gz).unwrap();
        let m = msg(read_idx(&p));
        assert!(m.contains("huge.gz: cannot be decompressed"), "{m}");
        // Up to 64 bytes per byte read, and only as the trailer says.
        let with_isize = |len: usize, isize: u32| {
            let mut gz = vec![0u8; len - 4];
            gz.extend_from_slice(&isize.to_le_bytes());
            gz
        };
        assert_eq!(one_shot_len(&with_isize(10, 640), 16, 624), Some(640));
        assert_eq!(one_shot_len(&with_isize(10, 641), 16, 625), None);
        assert_eq!(one_shot_len(&with_isize(10, 639), 16, 624), None);
        assert_eq!(one_shot_len(&[0; 3], 0, 0), None);
    }

    #[test]
    fn bad_files_each_get_a_clear_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.idx");
        let cases: &[(&[u8], &str)] = &[
            (b"", "too short for an IDX header (0 bytes)"),
            (b"hello world", "is not an IDX file (magic 68656c6c"),
            (&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0], "element type 0x0d"),
            (&[0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0, 1, 5], "2 IDX dimensions"),
            (&[0, 0, 8, 3, 0, 0, 0, 1], "truncated inside its IDX header"),
            (&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2], "truncated: header says 3 labels"),
            (&[0, 0, 8, 1, 0, 0, 0, 1, 1, 2], "has data past the 1 bytes"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, bytes).unwrap();
            let m = msg(read_idx(&p));
            assert!(m.contains("bad.idx") && m.contains(want), "{m} lacks {want}");
        }
        // A gzip stream cut short.
        let gz = labels(d.path(), "l.gz", &[1; 1000], true);
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let m = msg(read_idx(&p));
        assert!(m.contains("bad.idx"), "{m}");
    }
}
