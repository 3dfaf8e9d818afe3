//! One-shot gzip inflation with libdeflate, for files whose inflated size is already known: the
//! compressed file mapped rather than read, the output on huge pages where the kernel allows.
//!
//! libdeflate decodes a whole buffer at once and needs its output buffer up front; it inflates
//! Fashion-MNIST's images faster than flate2's streaming decoder (see bench/load.rs). It is only
//! a fast path: anything it is not sure of (another gzip member or bytes after the first, a
//! size other than the one expected, corrupt data) returns `None`, and the caller streams the
//! file with flate2, which gives the answer or the error that it always gave.

use std::ptr::NonNull;

use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_decompressor, libdeflate_free_decompressor,
    libdeflate_gzip_decompress_ex, libdeflate_result_LIBDEFLATE_SUCCESS,
};

/// Frees the decompressor however we leave.
struct Decompressor(NonNull<libdeflate_decompressor>);

impl Decompressor {
    fn new() -> Option<Self> {
        // SAFETY: no preconditions; null (out of memory) is handled.
        NonNull::new(unsafe { libdeflate_alloc_decompressor() }).map(Self)
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor, freed once.
        unsafe { libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// Inflates `gz` if it is exactly one gzip member, nothing after it, that inflates to exactly
/// `len` bytes (its CRC-32 checked); `None` otherwise.
///
/// `len` comes from a header we do not trust, so the caller must bound it by the bytes that
/// really arrived. The buffer comes zeroed from the allocator (calloc), which for large sizes maps
/// fresh pages without writing them: pages that the data does not reach are never touched.
pub fn gunzip_exact(gz: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    advise_huge_pages(&mut out);
    gunzip_into(gz, &mut out).then_some(out)
}

/// Inflates `gz` into all of `out`: true if `gz` is exactly one gzip member, nothing after it,
/// that inflates to exactly `out.len()` bytes (its CRC-32 checked).
pub fn gunzip_into(gz: &[u8], out: &mut [u8]) -> bool {
    let Some(d) = Decompressor::new() else { return false };
    let (mut used, mut written) = (0usize, 0usize);
    // SAFETY: `gz` and `out` are live slices of the lengths given; libdeflate writes at most
    // `out.len()` bytes into `out` and reads at most `gz.len()` bytes; `d` is a live
    // decompressor used by this thread only.
    let rc = unsafe {
        libdeflate_gzip_decompress_ex(
            d.0.as_ptr(),
            gz.as_ptr().cast(),
            gz.len(),
            out.as_mut_ptr().cast(),
            out.len(),
            &mut used,
            &mut written,
        )
    };
    rc == libdeflate_result_LIBDEFLATE_SUCCESS && used == gz.len() && written == out.len()
}

/// Asks for transparent huge pages under a large buffer's capacity, before it is first written.
///
/// Fresh memory takes a page fault per 4 KiB page on first write, and on this project's virtual
/// machines each costs microseconds: inflating Fashion-MNIST's train images (47 MB) into fresh
/// 4 KiB pages took ~120 ms, into memory already touched ~85, into fresh huge pages ~90
/// (bench/load.rs). Only a hint: where huge pages are off (`never`) nothing changes.
pub fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    if buf.capacity() < 2 * HUGE {
        return;
    }
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + buf.capacity()) / HUGE * HUGE;
    if end > first {
        // SAFETY: [first, end) lies inside `buf`'s allocation, which we own; MADV_HUGEPAGE
        // changes how the kernel backs those pages, never what they hold. A failure is only a
        // missed hint.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

/// A regular file mapped read-only, so that libdeflate reads the page cache in place.
///
/// Reading Fashion-MNIST's 26 MB train images with read(2) costs ~14 ms of kernel copying plus
/// the faults of the fresh buffer; mapping them (MAP_POPULATE) ~3 ms. The price of a mapping:
/// if another process truncated the file while we read it, touching the lost pages would raise
/// SIGBUS and end the job; a channel's files are written before the job starts and only read
/// while it runs. A file rewritten in place would show us a mix of old and new bytes, which
/// everything here treats as untrusted data anyway: libdeflate bounds every read by the input's
/// length and checks the CRC-32, and the IDX checks follow.
pub struct MappedFile {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl MappedFile {
    /// The whole of `file`, from its first byte; `None` where it cannot be mapped (empty, not a
    /// regular file, a file system without mmap): the caller reads it instead.
    ///
    /// # Safety
    /// Nothing may truncate the file while the mapping lives: touching a page past the new end
    /// raises SIGBUS, which kills the process (no Rust code can recover from it). Bytes
    /// rewritten in place are merely untrusted data, which the readers treat all input as.
    pub unsafe fn new(file: &std::fs::File) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let meta = file.metadata().ok()?;
        let len = usize::try_from(meta.len()).ok().filter(|&len| len > 0 && meta.is_file())?;
        // SAFETY: a fresh read-only private mapping of an open descriptor; the kernel chooses
        // the address, so nothing of ours is replaced. MAP_FAILED is handled.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Self { ptr: NonNull::new(ptr)?, len })
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes are mapped at `ptr` until drop (see the type's doc for
        // files changed while mapped).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped, once; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn inflates_one_member_of_the_expected_size() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let gz = gzip(&data);
        assert_eq!(gunzip_exact(&gz, data.len()).as_deref(), Some(&data[..]));
        assert_eq!(gunzip_exact(&gzip(b""), 0).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn maps_whole_regular_files_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        // Whatever has been read already, the mapping starts at the first byte.
        std::io::Read::read_exact(&mut f, &mut [0u8; 2]).unwrap();
        // SAFETY: the test's own temporary files, which nothing truncates.
        assert_eq!(&*unsafe { MappedFile::new(&f) }.unwrap(), &bytes[..]);
        std::fs::write(&p, b"").unwrap();
        // SAFETY: as above.
        assert!(unsafe { MappedFile::new(&std::fs::File::open(&p).unwrap()) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { MappedFile::new(&std::fs::File::open(d.path()).unwrap()) }.is_none());
    }

    #[test]
    fn anything_else_is_left_to_the_streaming_decoder() {
        let gz = gzip(b"hello world");
        // Shorter or longer than expected.
        assert_eq!(gunzip_exact(&gz, 10), None);
        assert_eq!(gunzip_exact(&gz, 12), None);
        // A second member, or anything after the first.
        let mut two = gz.clone();
        two.extend_from_slice(&gzip(b"!"));
        assert_eq!(gunzip_exact(&two, 11), None);
        assert_eq!(gunzip_exact(&two, 12), None);
        let mut junk = gz.clone();
        junk.push(0);
        assert_eq!(gunzip_exact(&junk, 11), None);
        // Cut short, a corrupt CRC, not gzip at all.
        assert_eq!(gunzip_exact(&gz[..gz.len() - 1], 11), None);
        let mut bad_crc = gz.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        assert_eq!(gunzip_exact(&bad_crc, 11), None);
        assert_eq!(gunzip_exact(b"hello world", 11), None);
        assert_eq!(gunzip_exact(b"", 0), None);
    }
}
