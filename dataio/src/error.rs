//! The one error type of dataio: every failure names the file, where in it (byte offset, field
//! or record), and what was expected versus what was found.

use std::fmt;
use std::path::Path;

/// A data error with its location. `Display` gives one line:
/// `FILE: WHERE: expected EXPECTED, found FOUND` (or `FILE: WHERE: MESSAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// The file (or dataset spec) concerned.
    pub file: String,
    /// Where in it: a byte offset, a header field, a record number, or an operation.
    pub at: String,
    /// What was wrong, already phrased as "expected X, found Y" where that applies.
    pub detail: String,
}

impl DataError {
    /// `expected` vs `found` at `at` in `file`.
    pub fn mismatch(
        file: impl AsRef<Path>,
        at: impl Into<String>,
        expected: impl fmt::Display,
        found: impl fmt::Display,
    ) -> Self {
        DataError {
            file: file.as_ref().display().to_string(),
            at: at.into(),
            detail: format!("expected {expected}, found {found}"),
        }
    }

    /// A free-form message at `at` in `file`.
    pub fn new(file: impl AsRef<Path>, at: impl Into<String>, detail: impl Into<String>) -> Self {
        DataError {
            file: file.as_ref().display().to_string(),
            at: at.into(),
            detail: detail.into(),
        }
    }

    /// An I/O failure while doing `what` (e.g. "open", "read", "rename to X").
    pub fn io(file: impl AsRef<Path>, what: &str, err: std::io::Error) -> Self {
        DataError::new(file, what, err.to_string())
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.at, self.detail)
    }
}

impl std::error::Error for DataError {}
