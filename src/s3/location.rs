//! The pure half of S3 support: `s3://` URIs, `--channel NAME=URI` arguments, where each object
//! key lands under a channel folder (and which keys are refused), job names and byte sizes.
//! Nothing here does I/O, so all of it is unit-tested below.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// `s3://bucket/key-or-prefix`. The key may be empty (the whole bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl FromStr for S3Uri {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{s:?} is not an S3 URI (expected s3://BUCKET/PREFIX)"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{s:?} names no bucket (expected s3://BUCKET/PREFIX)"));
        }
        // S3's own rule is stricter (3-63 of [a-z0-9.-]); S3-compatible servers vary, so only
        // what can never be a bucket name is refused here and the server judges the rest.
        if let Some(c) = bucket.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{s:?}: the bucket name contains {c:?}"));
        }
        if key.starts_with('/') {
            return Err(format!("{s:?}: the key starts with '/' (write s3://BUCKET/PREFIX)"));
        }
        Ok(Self { bucket: bucket.to_string(), key: key.to_string() })
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl S3Uri {
    /// The URI of `name` below this one taken as a folder: `s3://b/p` + `x` = `s3://b/p/x`.
    pub fn join(&self, name: &str) -> S3Uri {
        let key = if self.key.is_empty() || self.key.ends_with('/') {
            format!("{}{name}", self.key)
        } else {
            format!("{}/{name}", self.key)
        };
        S3Uri { bucket: self.bucket.clone(), key }
    }
}

/// Where a channel's data comes from on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3(S3Uri),
    /// A local folder, used in place (nothing is copied).
    Local(PathBuf),
}

/// `--channel NAME=URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelArg {
    pub name: String,
    pub location: Location,
}

impl FromStr for ChannelArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, uri) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected NAME=URI, e.g. train=s3://bucket/prefix/ or train=/data/dir")
        })?;
        // SageMaker's channel-name pattern.
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!("{s:?}: {name:?} is not a channel name (letters, digits, . - _)"));
        }
        let location = if uri.starts_with("s3://") {
            Location::S3(uri.parse()?)
        } else if let Some((scheme, _)) = uri.split_once("://") {
            return Err(format!("{s:?}: {scheme}:// is not supported (use s3:// or a local path)"));
        } else if uri.is_empty() {
            return Err(format!("{s:?}: no URI after '='"));
        } else {
            Location::Local(PathBuf::from(uri))
        };
        Ok(Self { name: name.to_string(), location })
    }
}

/// Where one listed key goes in the channel folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A file at this relative path (only `Normal` components).
    File(PathBuf),
    /// A key ending in `/` (a console "folder"): nothing to write.
    FolderMarker,
    /// The key shares the prefix's text but is not below it as a folder (`p-old/x` for `p`).
    Outside,
}

/// Maps `key`, listed under the URI key `prefix`, to its place in the channel folder.
///
/// The prefix is read as a folder, as SageMaker's File mode lays channels out: `s3://b/data` and
/// `s3://b/data/` both mean the keys `data/…`, and `data/a/b.gz` lands at `a/b.gz`. A key equal
/// to the prefix (a URI naming one object) lands under its own file name. A key that would
/// resolve outside the folder is an error, whose text says why.
pub fn place_key(prefix: &str, key: &str) -> Result<Placement, String> {
    let rel = if prefix.is_empty() || prefix.ends_with('/') {
        match key.strip_prefix(prefix) {
            Some(rel) => rel,
            None => return Ok(Placement::Outside),
        }
    } else if key == prefix {
        key.rsplit('/').next().unwrap_or(key)
    } else {
        match key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
            Some(rel) => rel,
            None => return Ok(Placement::Outside),
        }
    };
    if rel.is_empty() || rel.ends_with('/') {
        return Ok(Placement::FolderMarker);
    }
    safe_relative_path(rel).map(Placement::File)
}

/// Longest file or folder name Linux file systems accept.
const NAME_MAX: usize = 255;

/// A relative path made only of plain names, or why `rel` is refused: absolute paths, `.` and
/// `..`, empty components (`a//b`), backslashes, control characters, names too long for a file
/// system, and percent-encoded forms of `/`, `\`, NUL, `.` or `..` (keys are never decoded, but
/// a key that decodes to a traversal is refused rather than guessed at).
pub fn safe_relative_path(rel: &str) -> Result<PathBuf, String> {
    if rel.starts_with('/') {
        return Err("it is an absolute path".into());
    }
    if rel.contains('\\') {
        return Err("it contains a backslash".into());
    }
    if let Some(c) = rel.chars().find(|c| c.is_control()) {
        return Err(format!("it contains the control character {c:?}"));
    }
    let mut path = PathBuf::new();
    for part in rel.split('/') {
        match part {
            "" => return Err("it has an empty path component ('//')".into()),
            "." | ".." => return Err(format!("it has a {part:?} component")),
            _ => {}
        }
        if part.len() > NAME_MAX {
            return Err(format!("a path component is longer than {NAME_MAX} bytes"));
        }
        let decoded = percent_decode(part);
        if decoded != part.as_bytes()
            && (decoded == b"."
                || decoded == b".."
                || decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)))
        {
            return Err(format!("{part:?} is a percent-encoded path traversal"));
        }
        path.push(part);
    }
    // Belt and braces: only plain names, so joining onto a folder cannot leave it.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("it is not a plain relative path".into());
    }
    Ok(path)
}

/// Decodes `%XX` escapes, repeatedly, so `%252e` is seen as `.` too. Invalid escapes stay as
/// they are.
fn percent_decode(s: &str) -> Vec<u8> {
    let mut cur = s.as_bytes().to_vec();
    for _ in 0..4 {
        let mut out = Vec::with_capacity(cur.len());
        let mut i = 0;
        while i < cur.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if cur[i] == b'%' && i + 2 < cur.len() {
                if let (Some(h), Some(l)) = (hex(cur[i + 1]), hex(cur[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(cur[i]);
            i += 1;
        }
        if out == cur {
            break;
        }
        cur = out;
    }
    cur
}

/// Two keys that would need the same path, or one as a file and one as a folder (`a` and `a/b`).
pub fn find_conflict<'a>(
    paths: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Option<(String, String)> {
    use std::collections::BTreeMap;
    let mut files: BTreeMap<&Path, &str> = BTreeMap::new();
    for (path, key) in paths {
        if let Some(other) = files.insert(path, key) {
            return Some((other.to_string(), key.to_string()));
        }
    }
    for (path, key) in &files {
        for dir in path.ancestors().skip(1) {
            if let Some(other) = files.get(dir) {
                return Some((other.to_string(), key.to_string()));
            }
        }
    }
    None
}

/// SageMaker's training-job-name rule: 1-63 letters, digits and single-or-repeated hyphens,
/// starting and ending with a letter or digit.
pub fn check_job_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid training job name (1-63 letters, digits and hyphens, \
             starting and ending with a letter or digit)"
        ))
    }
}

/// A job name that sorts by start time, as the SageMaker SDK makes them:
/// `smtrain-YYYY-MM-DD-HH-MM-SS-mmm-xxxx` (UTC, then 4 hex digits against collisions).
pub fn generated_job_name(unix_millis: u64, salt: u16) -> String {
    let secs = unix_millis / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "smtrain-{y:04}-{mo:02}-{d:02}-{:02}-{:02}-{:02}-{:03}-{salt:04x}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_millis % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A byte count: `8388608`, `8MiB`, `8M`, `512KiB`, `1GiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 8388608 or 8MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `1.5 MiB`-style rendering for logs.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> S3Uri {
        s.parse().unwrap()
    }

    #[test]
    fn s3_uris_parse_and_print() {
        assert_eq!(uri("s3://b/p/q/"), S3Uri { bucket: "b".into(), key: "p/q/".into() });
        assert_eq!(uri("s3://b"), S3Uri { bucket: "b".into(), key: String::new() });
        assert_eq!(uri("s3://b/").key, "");
        assert_eq!(uri("s3://b/p").to_string(), "s3://b/p");
        for bad in ["b/p", "s3://", "s3:///p", "s3://b//p", "s3://b c/p", "http://b/p"] {
            assert!(bad.parse::<S3Uri>().is_err(), "{bad}");
        }
        assert_eq!(uri("s3://b/runs").join("job/output").to_string(), "s3://b/runs/job/output");
        assert_eq!(uri("s3://b/runs/").join("x").key, "runs/x");
        assert_eq!(uri("s3://b").join("x").key, "x");
    }

    #[test]
    fn channel_args_parse_s3_and_local() {
        let a: ChannelArg = "train=s3://b/data/".parse().unwrap();
        assert_eq!(a.name, "train");
        assert_eq!(a.location, Location::S3(uri("s3://b/data/")));
        let a: ChannelArg = "test=/data/x=y".parse().unwrap();
        assert_eq!(a.location, Location::Local(PathBuf::from("/data/x=y")));
        let a: ChannelArg = "validation=rel/dir".parse().unwrap();
        assert_eq!(a.location, Location::Local(PathBuf::from("rel/dir")));
        for bad in ["train", "=s3://b/p", "tr ain=/x", "train=", "train=https://x/y", "t=s3://"] {
            assert!(bad.parse::<ChannelArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_keep_their_path_below_the_prefix_as_a_folder() {
        let file = |p: &str| Ok(Placement::File(PathBuf::from(p)));
        assert_eq!(place_key("data/", "data/a/b.gz"), file("a/b.gz"));
        assert_eq!(place_key("data", "data/a/b.gz"), file("a/b.gz"));
        assert_eq!(place_key("data", "data-old/x"), Ok(Placement::Outside));
        assert_eq!(place_key("data/", "other/x"), Ok(Placement::Outside));
        assert_eq!(place_key("", "x/y"), file("x/y"));
        // A URI naming one object: the object under its own name.
        assert_eq!(place_key("data/train.gz", "data/train.gz"), file("train.gz"));
        assert_eq!(place_key("data/", "data/"), Ok(Placement::FolderMarker));
        assert_eq!(place_key("data/", "data/sub/"), Ok(Placement::FolderMarker));
        assert_eq!(place_key("data", "data/"), Ok(Placement::FolderMarker));
    }

    #[test]
    fn keys_that_would_leave_the_folder_are_refused() {
        for (key, why) in [
            ("p/../x", "\"..\" component"),
            ("p/a/../../x", "\"..\" component"),
            ("p/./x", "\".\" component"),
            ("p//etc/passwd", "absolute path"),
            ("p/a//b", "empty path component"),
            ("p/a\\..\\b", "backslash"),
            ("p/a\0b", "control character"),
            ("p/a\nb", "control character"),
            ("p/%2e%2e/x", "percent-encoded"),
            ("p/%2E%2e/x", "percent-encoded"),
            ("p/%252e%252e/x", "percent-encoded"),
            ("p/a%2f..%2fb", "percent-encoded"),
            ("p/a%5cb", "percent-encoded"),
            ("p/a%00b", "percent-encoded"),
        ] {
            let err = place_key("p/", key).unwrap_err();
            assert!(err.contains(why), "{key:?}: {err}");
        }
        assert!(safe_relative_path("/etc/passwd").unwrap_err().contains("absolute"));
        assert!(safe_relative_path(&"x".repeat(256)).unwrap_err().contains("255"));
        // Odd but harmless names are kept as they are.
        for ok in ["100%.txt", "a%20b", "%41", "..a", "a..", ".hidden", "é/ü", "a b"] {
            assert_eq!(safe_relative_path(ok), Ok(PathBuf::from(ok)), "{ok}");
        }
    }

    #[test]
    fn conflicting_keys_are_found() {
        let p = |s: &str| PathBuf::from(s);
        let (a, ab, b) = (p("a"), p("a/b"), p("b"));
        assert_eq!(
            find_conflict([(a.as_path(), "k/a"), (ab.as_path(), "k/a/b")]),
            Some(("k/a".into(), "k/a/b".into()))
        );
        assert_eq!(find_conflict([(a.as_path(), "k/a"), (b.as_path(), "k/b")]), None);
        assert!(find_conflict([(a.as_path(), "x"), (a.as_path(), "y")]).is_some());
    }

    #[test]
    fn job_names_follow_sagemaker_and_generated_ones_sort_by_time() {
        assert!(check_job_name("my-job-1").is_ok());
        assert!(check_job_name(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "a_b", "a/b", "a.b", &"a".repeat(64)] {
            assert!(check_job_name(bad).is_err(), "{bad}");
        }
        // 2024-02-29T23:59:58.123Z
        let n = generated_job_name(1_709_251_198_123, 0xbeef);
        assert_eq!(n, "smtrain-2024-02-29-23-59-58-123-beef");
        assert!(check_job_name(&n).is_ok());
        assert_eq!(generated_job_name(0, 1), "smtrain-1970-01-01-00-00-00-000-0001");
        let later = generated_job_name(1_709_251_200_000, 0);
        assert!(later > n, "{later} sorts after {n}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("8388608"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8 M"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        for bad in ["", "MiB", "8MB", "-1", "1.5MiB", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
