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

/// Deserialises JSON `text` (the file `path`) into `T`. The error names the
/// file, the line and the field (`rope_parameters.rope_type`, `queue[3]`): a
/// wrong type deep in a config is found without reading the whole file.
pub fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_error(path, Some(e.inner().line()), e))?;
    // Trailing characters after the document.
    de.end().map_err(|e| Error::Json {
        path: path.to_path_buf(),
        line: Some(e.line()),
        msg: e.to_string(),
    })?;
    Ok(value)
}

/// [`parse_json`] for an already parsed document: no line to name.
pub fn from_json_value<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| json_error(path, None, e))
}

fn json_error(
    path: &Path,
    line: Option<usize>,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> Error {
    let field = e.path().to_string();
    let inner = e.into_inner();
    // serde_json appends " at line L column C", which the line prefix already says.
    let msg = inner.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) if line.is_some() => msg[..i].to_string(),
        _ => msg,
    };
    Error::Json {
        path: path.to_path_buf(),
        line,
        msg: if field == "." || field.is_empty() {
            msg
        } else {
            format!("field `{field}`: {msg}")
        },
    }
}

thread_local! {
    /// Whether this thread is inside [`catch_library_panic`].
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a call into a library that may panic on malformed input (arrow,
/// parquet, tokenizers), turning a panic into `Err(message)`. Why not a bare
/// `catch_unwind`: the default panic hook would still print "thread
/// panicked at …" before the one-line error, so the hook is told to keep
/// quiet for panics this thread catches here (other panics print as ever).
pub fn catch_library_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(std::cell::Cell::get) {
                previous(info)
            }
        }));
    });
    let outer = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Reads a whole file, naming it in the error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Writes a file atomically: a temporary sibling (`.NAME.tmp-PID`) is written,
/// synced, then renamed over the target, so a crash or a failed write (disk
/// full, permission removed) never leaves a half-written file where the user
/// had a good one. On failure the temporary file is removed and the error names
/// `path`. Every file a run writes goes through here or [`append`] (see
/// [`injected_failure`] for the test hook that counts them).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
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
    let written = write_then_rename(&tmp, path, bytes);
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// [`write_atomic`]'s steps: `bytes` into `tmp`, synced, renamed to `path`.
fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    write_counted(&mut f, path, bytes)?;
    f.flush()?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)
}

/// Appends `bytes` to `path` (created if absent). A failure part-way truncates
/// the file back to its previous length (or removes a file it created), so the
/// lines already there stay intact; goes through the [`injected_failure`] hook.
pub fn append(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let existed = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let before = f.metadata().map_err(|e| Error::io(path, e))?.len();
    write_counted(&mut f, path, bytes).map_err(|e| {
        let _ = if existed {
            f.set_len(before)
        } else {
            std::fs::remove_file(path)
        };
        Error::io(path, e)
    })
}

/// Writes `bytes` to `f` (the file that will become `target`), failing part-way
/// when the [`injected_failure`] hook says so.
fn write_counted(f: &mut std::fs::File, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if injected_failure(target) {
        // Half the bytes land, as on a disk that fills up mid-write.
        f.write_all(&bytes[..bytes.len() / 2])?;
        let _ = f.flush();
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    f.write_all(bytes)
}

/// Test hook: the environment variable `EPT_TEST_FAIL_WRITE` makes one file
/// write of the process fail part-way with "No space left on device" (the
/// error a full disk gives), as [`write_atomic`] and [`append`] count them.
/// `EPT_TEST_FAIL_WRITE=N` fails the N-th write (from 1); `EPT_TEST_FAIL_WRITE=SUFFIX:N`
/// fails the N-th write of a file whose path ends with the components `SUFFIX`
/// (`optimizer.safetensors:2`, `best/prompt.safetensors:1`, `metrics.jsonl:5`).
/// The writes inside `last/` go to its temporary sibling `last.tmp-PID/`, so
/// name them by file (`state.json:1`). Unset (always, outside tests): no effect.
pub fn injected_failure(target: &Path) -> bool {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PLAN: OnceLock<Option<(Option<PathBuf>, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let v = std::env::var("EPT_TEST_FAIL_WRITE").ok()?;
        match v.rsplit_once(':') {
            Some((suffix, n)) => Some((Some(PathBuf::from(suffix)), n.trim().parse().ok()?)),
            None => Some((None, v.trim().parse().ok()?)),
        }
    });
    let Some((suffix, n)) = plan else {
        return false;
    };
    if suffix.as_ref().is_some_and(|s| !target.ends_with(s)) {
        return false;
    }
    COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n
}
