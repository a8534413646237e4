//! One error type for the whole crate.
//!
//! Every variant renders as a single line that names the file, the field and
//! what was expected, so the command line can print it after `ept: ` and exit
//! non-zero (ripgrep's style): no panics, no backtraces for bad input.

use std::path::{Path, PathBuf};

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that must exist does not.
    #[error("{}: file not found{}", path.display(), hint_suffix(hint))]
    NotFound { path: PathBuf, hint: String },
    /// A JSON (or JSON-lines) document could not be parsed.
    #[error("{}{}: malformed JSON: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    /// A TOML file (run or sweep settings) that does not parse.
    #[error("{}{}: not valid TOML: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Toml {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    /// A field of a configuration or data file holds a value we cannot use.
    #[error("{}: field `{field}`: {msg}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has the wrong shape.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we do not support.
    #[error("{}: tensor `{name}` has dtype {dtype}, expected F32, BF16 or F16", path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A data file's content is wrong (missing column, bad label, empty file, ...).
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// A command-line argument or setting is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Training diverged or a numeric invariant broke.
    #[error("{0}")]
    Numeric(String),
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path,
                hint: String::new(),
            }
        } else {
            Error::Io { path, source }
        }
    }

    /// A data-file error.
    pub fn data(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// A field-level error in a config or data file.
    pub fn field(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// An invalid argument or setting.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Writes a file atomically: a temporary sibling is written, synced, then renamed
/// over the target, so a crash never leaves a half-written file where the user
/// had a good one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
