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

/// The job was stopped by SIGTERM or SIGINT before it finished; the text says where training
/// stood and what was saved.
#[derive(Debug, Default)]
pub struct Stopped(pub String);

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped before training finished{}", self.0)
    }
}

impl std::error::Error for Stopped {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn user_errors_are_found_under_context() {
        let err = Err::<(), _>(user("bad value")).context("reading hyperparameters").unwrap_err();
        assert!(is_user_error(&err));
        assert_eq!(format!("{err:#}"), "reading hyperparameters: bad value");
        assert!(!is_user_error(&anyhow::anyhow!("disk full")));
    }
}
