//! Telling the user's mistakes apart from ours.
//!
//! SageMaker shows the failure file's first 1024 characters as `FailureReason`. A user error
//! (bad hyperparameter, missing channel, malformed IDX file) is something the user fixes in their
//! job; anything else is a bug or an environment fault. Both travel as `anyhow::Error`; a user
//! error carries a [`UserError`] somewhere in its chain.

use std::fmt;

/// Marks an error as caused by the job's input rather than by the trainer.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Builds a user error from a message.
pub fn user(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// Returns early with a user error, formatted like `format!`.
#[macro_export]
macro_rules! user_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::user(format!($($arg)*)))
    };
}

/// Whether any error in the chain is a [`UserError`].
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<UserError>())
}

/// The job was stopped by SIGTERM, SIGINT or SIGHUP before it finished; the text says where training
/// stood and what was saved.
#[derive(Debug, Default)]
pub struct Stopped(pub String);

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped before training finished{}", self.0)
    }
}

impl std::error::Error for Stopped {}

/// A thread that could not be started (`what` it was for): the system's limit on processes
/// and threads, not a bug, so the reason names it.
pub fn no_thread(e: std::io::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot start a thread to {what}: {e}; the limit on processes and threads (ulimit -u, \
         docker --pids-limit, the cgroup's pids.max) is too low for this job"
    )
}

/// SageMaker keeps this many characters of `output/failure` as the job's `FailureReason`.
pub const FAILURE_REASON_LIMIT: usize = 1024;

/// The failure file's one line: `{kind}: {reason}`, at most [`FAILURE_REASON_LIMIT`] bytes.
/// A reason that does not fit is given cause first (the innermost error, then what was being
/// done), and cut with a note saying so; the log keeps the whole text.
pub fn failure_line(kind: &str, err: &anyhow::Error) -> String {
    let one_line = |s: String| one_clean_line(&s);
    let whole = one_line(format!("{kind}: {err:#}"));
    if whole.len() <= FAILURE_REASON_LIMIT {
        return whole;
    }
    let mut parts: Vec<String> = err.chain().map(|e| one_line(e.to_string())).collect();
    let cause = parts.pop().unwrap_or_default();
    let mut line = format!("{kind}: {}", clip(&cause, FAILURE_REASON_LIMIT / 2));
    if !parts.is_empty() {
        line.push_str(&format!(" (while {})", parts.join(": ")));
    }
    bound(line, whole.len())
}

/// `s` as one line of plain text: line breaks become spaces, and every other control
/// character (NUL, ESC, VT, FF, NEL…) and the Unicode line and paragraph separators are written
/// as `\u{…}` escapes, so no input (a key, a file name) can break or colour the reason.
pub fn one_clean_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Cuts `line` to the limit, ending with a note of how much of the `whole` reason was left out.
fn bound(line: String, whole: usize) -> String {
    if line.len() <= FAILURE_REASON_LIMIT {
        return line;
    }
    let note = format!(" [cut: the whole reason ({whole} characters) is in the log]");
    let mut keep = FAILURE_REASON_LIMIT - note.len();
    while !line.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{note}", &line[..keep])
}

/// `s`, or its start and a note of its length when it is longer than `max` bytes: for quoting
/// input (a hyperparameter's value, a file name) in an error message.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut keep = max.saturating_sub(24).max(1);
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..keep], s.len())
}

/// `{:?}` of an input string, clipped as [`clip`] does.
pub fn quote(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut keep = MAX - 16;
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{:?}… ({} bytes in all)", &s[..keep], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_long_reason_is_bounded_cause_first() {
        let short = user("bad value").context("reading hyperparameters");
        assert_eq!(
            failure_line("ClientError", &short),
            "ClientError: reading hyperparameters: bad value"
        );
        let long = user(format!("value {} is out of range", "9".repeat(5000)))
            .context("x".repeat(3000))
            .context("hyperparameters.json");
        let line = failure_line("ClientError", &long);
        assert!(line.len() <= FAILURE_REASON_LIMIT, "{}", line.len());
        assert!(line.starts_with("ClientError: value 999"), "{line}");
        assert!(line.contains("bytes in all)"), "{line}");
        assert!(line.contains("(while hyperparameters.json: xxx"), "{line}");
        assert!(line.ends_with("characters) is in the log]"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn control_characters_in_a_reason_are_escaped_into_one_line() {
        let err = anyhow::anyhow!("key \"a\0b\u{1b}[31m\u{b}\u{c}\u{85}\u{2028}c\"\nnext");
        let line = failure_line("ClientError", &err);
        assert_eq!(
            line,
            "ClientError: key \"a\\u{0}b\\u{1b}[31m\\u{b}\\u{c}\\u{85}\\u{2028}c\" next"
        );
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    }

    #[test]
    fn quoted_input_is_clipped_on_a_char_boundary() {
        assert_eq!(quote("adam"), "\"adam\"");
        let q = quote(&"é".repeat(1000));
        assert!(q.ends_with("… (2000 bytes in all)") && q.len() < 120, "{q}");
    }

    #[test]
    fn user_errors_are_found_under_context() {
        let err = Err::<(), _>(user("bad value")).context("reading hyperparameters").unwrap_err();
        assert!(is_user_error(&err));
        assert_eq!(format!("{err:#}"), "reading hyperparameters: bad value");
        assert!(!is_user_error(&anyhow::anyhow!("disk full")));
    }
}
