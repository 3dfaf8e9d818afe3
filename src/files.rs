//! Reading the files a job is handed (config files, checkpoints, model files, `predict`'s
//! inputs) without trusting what they are: only regular files are read, since a FIFO blocks
//! forever and a device (or a link to `/dev/zero`) never ends, and never more than that kind of
//! file can legitimately hold. Problems with the path itself are the user's, named in words.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Result;

use crate::error::user;

/// The first two bytes of every gzip file, by which inputs are told apart from plain ones.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most a JSON file in `input/config/` can hold: SageMaker's 100 hyperparameters of at most
/// 2,756 bytes each is a tenth of this.
pub const MAX_CONFIG: u64 = 1 << 20;

/// Opens `path` for reading if it is a regular file (after following links); `Err` says what
/// it is instead. Opened non-blocking, so a FIFO is refused instead of waiting for a writer.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(user(format!("{}: is {what}, not a regular file", path.display())))
}

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len > limit {
        return Err(too_large(path, len, limit));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The size may change under us: never take more than the limit.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// Like [`read_limited`], but a path that does not exist at all is `None`. A link that points
/// nowhere is an error, not an absent file: someone meant it to be there.
pub fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        _ => read_limited(path, limit).map(Some),
    }
}

fn too_large(path: &Path, len: u64, limit: u64) -> anyhow::Error {
    user(format!("{}: is {len} bytes, over the {limit}-byte limit for this file", path.display()))
}

/// An I/O error about `path`: the user's when the path is what is wrong (missing, a dangling
/// link, a link loop, no permission, a folder), ours otherwise.
pub fn io_error(path: &Path, e: io::Error) -> anyhow::Error {
    match user_reason(path, &e) {
        Some(why) => user(format!("{}: {why}", path.display())),
        None => anyhow::Error::new(e).context(format!("reading {}", path.display())),
    }
}

/// Why `e` means the path itself is wrong, in words; `None` for faults of the system.
pub fn user_reason(path: &Path, e: &io::Error) -> Option<String> {
    let dangling = || {
        let target = std::fs::read_link(path).ok()?;
        Some(format!("is a symbolic link to {}, which does not exist", target.display()))
    };
    Some(match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => dangling().unwrap_or_else(|| "does not exist".into()),
        (_, Some(libc::ELOOP)) => "is a symbolic link loop".into(),
        (_, Some(libc::ENOTDIR)) => "has a file where a folder should be in its path".into(),
        (_, Some(libc::EISDIR)) => "is a folder, not a regular file".into(),
        (io::ErrorKind::PermissionDenied, _) => "cannot be read: permission denied".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert!(is_user_error(&e), "not a user error: {e:#}");
        format!("{e:#}")
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        assert!(err(read_limited(&p, 4)).contains("is 5 bytes, over the 4-byte limit"));
        assert!(err(read_limited(d.path(), 9)).contains("is a folder, not a regular file"));
        assert!(err(read_limited(Path::new("/dev/zero"), 9)).contains("is a character device"));
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(err(read_limited(&fifo, 9)).contains("is a FIFO (named pipe)"));
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(err(read_limited(&zero, 9)).contains("is a character device"));
    }

    #[test]
    fn missing_files_are_none_but_broken_links_are_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_optional(&d.path().join("none.json"), 9).unwrap().is_none());
        let dangling = d.path().join("dangling.json");
        std::os::unix::fs::symlink(d.path().join("gone"), &dangling).unwrap();
        let e = err(read_optional(&dangling, 9));
        assert!(e.contains("is a symbolic link to") && e.contains("which does not exist"), "{e}");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(err(read_optional(&a, 9)).contains("is a symbolic link loop"));
    }
}
