//! A channel's `ContentType` → the format its files are read in.
//!
//! SageMaker passes the string the user typed, parameters included, untouched. It is read as
//! AWS's built-in containers read it: case-insensitive, a media type and `;`-separated
//! `name=value` parameters, with the short aliases they accept.

use std::fmt;

/// How a channel's files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One IDX images file and one IDX labels file (no `ContentType`, or `application/x-idx`).
    Idx,
    /// Label-first CSV rows; `header`: the first line of every file names the columns.
    Csv { header: bool },
    /// Label-first Parquet columns.
    Parquet,
    /// `.npy` files named for what they hold (`x`/`y`, or `*features*`/`*labels*`).
    Npy,
    /// `.npz` archives holding arrays `x` and `y`.
    Npz,
    /// PNG and JPEG pictures in one folder per class, or named by `.lst` files.
    Images,
}

/// What `ContentType` values this trainer reads, for error messages.
pub const ACCEPTED: &str = "text/csv (csv), application/x-parquet (parquet), application/x-npy \
                            (npy), application/x-npz (npz), application/x-image (image), \
                            application/x-idx (idx), or none";

impl Format {
    /// Parses a channel's `ContentType`; `None` (or an empty string) is IDX. The error says
    /// what is wrong, for a message that also names the channel.
    pub fn parse(content_type: Option<&str>) -> Result<Self, String> {
        let Some(text) = content_type.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Format::Idx);
        };
        let mut parts = text.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let params = parts
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_ascii_lowercase())
            })
            .filter(|(k, _)| !k.is_empty())
            .collect::<Vec<_>>();
        let format = match media.as_str() {
            "text/csv" | "csv" | "text/x-csv" | "application/csv" => Format::Csv { header: false },
            "application/x-parquet" | "application/parquet" | "parquet" => Format::Parquet,
            "application/x-npy" | "npy" => Format::Npy,
            "application/x-npz" | "npz" => Format::Npz,
            "application/x-idx" | "idx" => Format::Idx,
            "application/x-image" | "image" | "image/png" | "image/jpeg" => Format::Images,
            _ => {
                return Err(format!(
                    "ContentType {text:?} is not a format this trainer reads; accepted: {ACCEPTED}"
                ))
            }
        };
        params.iter().try_fold(format, |f, (k, v)| f.with_param(text, k, v))
    }

    fn with_param(self, text: &str, key: &str, value: &str) -> Result<Self, String> {
        match (self, key, value) {
            (Format::Csv { .. } | Format::Parquet, "label_size", "1") => Ok(self),
            (Format::Csv { .. } | Format::Parquet, "label_size", _) => Err(format!(
                "ContentType {text:?}: label_size={value} is not supported; this trainer \
                 classifies, with one label column first (label_size=1)"
            )),
            (Format::Csv { .. }, "header", "present") => Ok(Format::Csv { header: true }),
            (Format::Csv { .. }, "header", "absent") => Ok(Format::Csv { header: false }),
            (Format::Csv { .. }, "header", _) => Err(format!(
                "ContentType {text:?}: header={value}; allowed: header=present or header=absent"
            )),
            (_, "charset", "utf-8" | "utf8") => Ok(self),
            _ => Err(format!(
                "ContentType {text:?}: parameter {key}={value} is not one this trainer reads \
                 (text/csv takes label_size=1 and header=present; charset=utf-8 anywhere)"
            )),
        }
    }

    /// Whether samples are images (pixels 0–255) rather than table rows: decided by the data
    /// for NumPy arrays, so only IDX says yes here.
    pub fn is_idx(self) -> bool {
        self == Format::Idx
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Idx => "IDX",
            Format::Csv { header: false } => "CSV",
            Format::Csv { header: true } => "CSV with a header",
            Format::Parquet => "Parquet",
            Format::Npy => "NumPy .npy",
            Format::Npz => "NumPy .npz",
            Format::Images => "pictures",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_aliases_and_parameters() {
        let p = |s| Format::parse(Some(s));
        assert_eq!(Format::parse(None), Ok(Format::Idx));
        assert_eq!(p(" "), Ok(Format::Idx));
        assert_eq!(p("text/csv"), Ok(Format::Csv { header: false }));
        assert_eq!(p("CSV"), Ok(Format::Csv { header: false }));
        assert_eq!(p("Text/CSV; Label_Size=1; header=Present"), Ok(Format::Csv { header: true }));
        assert_eq!(p("text/csv;charset=UTF-8"), Ok(Format::Csv { header: false }));
        assert_eq!(p("application/x-parquet"), Ok(Format::Parquet));
        assert_eq!(p("parquet"), Ok(Format::Parquet));
        assert_eq!(p("application/x-npy"), Ok(Format::Npy));
        assert_eq!(p("npz"), Ok(Format::Npz));
        assert_eq!(p("application/x-idx"), Ok(Format::Idx));
        assert_eq!(p("application/x-image"), Ok(Format::Images));
        assert_eq!(p("image"), Ok(Format::Images));
    }

    #[test]
    fn refusals_say_why_and_what_is_accepted() {
        let e = Format::parse(Some("text/csv;label_size=2")).unwrap_err();
        assert!(e.contains("label_size=2 is not supported"), "{e}");
        let e = Format::parse(Some("application/x-recordio-protobuf")).unwrap_err();
        assert!(
            e.contains("not a format this trainer reads") && e.contains("text/csv (csv)"),
            "{e}"
        );
        let e = Format::parse(Some("text/csv;delimiter=tab")).unwrap_err();
        assert!(e.contains("parameter delimiter=tab"), "{e}");
        let e = Format::parse(Some("text/csv;header=maybe")).unwrap_err();
        assert!(e.contains("header=maybe"), "{e}");
    }
}
