//! Readers for every on-disk form the benchmark data comes in, and the lookup that finds a split's
//! files in a folder or in the Hugging Face hub cache.
//!
//! All readers produce rows as JSON objects keyed by the HF data set's column names, so the
//! formatter has one input shape. Layouts understood by [`find_split_files`]:
//! - hub parquet: `{config}/{split}-0000x-of-0000y.parquet` (also `data/…`);
//! - the hub's `refs/convert/parquet` branch: `{config}/{split}/0000.parquet`;
//! - `datasets` cache: `{name}/{config}/{version}/{hash}/{name}-{split}.arrow` (and sharded
//!   `{name}-{split}-0000x-of-0000y.arrow`);
//! - `save_to_disk` folders: `{split}/data-00000-of-00001.arrow` (+ `state.json`);
//! - GLUE TSV (`RTE/dev.tsv`), SuperGLUE JSONL (`BoolQ/val.jsonl`), or `{split}.jsonl`.

pub mod arrow;
pub mod jsonl;
pub mod parquet;
pub mod tsv;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::data::format::Row;
use crate::data::tasks::Task;
use crate::error::{Error, Result};

/// File formats, told apart by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Tsv,
    Parquet,
    Arrow,
}

impl Format {
    /// The format of `path` by its extension (`.jsonl`/`.json`, `.tsv`, `.parquet`, `.arrow`).
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "json" => Ok(Format::Jsonl),
            "tsv" => Ok(Format::Tsv),
            "parquet" => Ok(Format::Parquet),
            "arrow" => Ok(Format::Arrow),
            _ => Err(Error::data(
                path,
                "unknown data file type: expected .jsonl, .tsv, .parquet or .arrow",
            )),
        }
    }
}

/// Rows read from one or more files, remembering which file and row each came from (for errors).
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub files: Vec<PathBuf>,
    pub rows: Vec<Row>,
    /// `(index into files, 0-based row within that file)` for each row.
    pub origin: Vec<(usize, usize)>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The file and row number a row came from.
    pub fn source_of(&self, i: usize) -> (&Path, usize) {
        let (f, r) = self.origin[i];
        (&self.files[f], r)
    }
}

/// Reads one file of any supported format. `task` is needed for GLUE TSV (column names) and
/// SuperGLUE JSONL (flattening); without it JSONL rows are returned as they are.
pub fn read_file(path: &Path, task: Option<Task>) -> Result<Vec<Row>> {
    match Format::of(path)? {
        Format::Jsonl => jsonl::read(path, task),
        Format::Tsv => match task {
            Some(t) => tsv::read(path, t),
            None => Err(Error::data(
                path,
                "a GLUE TSV file needs its task to name its columns",
            )),
        },
        Format::Parquet => parquet::read(path),
        Format::Arrow => arrow::read(path),
    }
}

/// Runs `decode` (arrow-rs or parquet decoding `path`), turning a panic into
/// an error. Why: both crates assert on some inconsistent inputs (a buffer
/// slice past its body, a negative column range, a definition-level bitmap
/// shorter than it claims) instead of returning an error, and a corrupt data
/// file must never crash ept. Lengths that would make them allocate beyond
/// the file are checked before (`arrow::read`, `parquet::read`): an
/// allocation failure aborts and cannot be caught.
pub(crate) fn guarded<T>(
    path: &Path,
    format: &str,
    decode: impl FnOnce() -> Result<T>,
) -> Result<T> {
    crate::error::catch_library_panic(decode)
        .unwrap_or_else(|why| Err(Error::data(path, format!("corrupt {format} data: {why}"))))
}

/// Reads and concatenates shards in order.
pub fn read_files(files: &[PathBuf], task: Option<Task>) -> Result<Table> {
    let mut table = Table {
        files: files.to_vec(),
        ..Table::default()
    };
    for (f, path) in files.iter().enumerate() {
        let rows = read_file(path, task)?;
        table.origin.extend((0..rows.len()).map(|r| (f, r)));
        table.rows.extend(rows);
    }
    Ok(table)
}

/// Other spellings of a published split's name in the original distributions (GLUE's `dev.tsv`,
/// SuperGLUE's `val.jsonl`).
fn split_aliases(split: &str) -> Vec<String> {
    let mut names = vec![split.to_string()];
    if let Some(rest) = split.strip_prefix("validation") {
        names.push(format!("dev{rest}"));
        names.push(format!("val{rest}"));
    }
    names
}

/// The folder name of the task in GLUE's and SuperGLUE's original zip files
/// (the display names: `SST-2`, `CoLA`, `ReCoRD`, ...).
fn original_dir_name(task: Task) -> &'static str {
    task.display_name()
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// `rest` is `NNNNN-of-NNNNN`.
fn is_shard_suffix(rest: &str) -> bool {
    let mut parts = rest.splitn(2, "-of-");
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    !a.is_empty()
        && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
}

/// Files of `split` directly in `root`, in any of the layouts (only the `datasets` cache's
/// `{name}-{split}.arrow` when `cache_only`); empty if none.
fn split_files_in(root: &Path, split: &str, cache_only: bool) -> Vec<PathBuf> {
    if !root.is_dir() {
        return vec![];
    }
    let entries = list_dir(root);
    if cache_only {
        return cache_arrow_files(&entries, split);
    }
    // Hub parquet shards: {split}-0000x-of-0000y.parquet
    let shards: Vec<PathBuf> = entries
        .iter()
        .filter(|p| {
            let n = file_name(p);
            n.strip_suffix(".parquet")
                .and_then(|s| s.strip_prefix(split))
                .and_then(|s| s.strip_prefix('-'))
                .is_some_and(is_shard_suffix)
        })
        .cloned()
        .collect();
    if !shards.is_empty() {
        return shards;
    }
    // refs/convert/parquet: {split}/0000.parquet; save_to_disk: {split}/data-*.arrow
    let sub = root.join(split);
    if sub.is_dir() {
        let inner = list_dir(&sub);
        let pq: Vec<PathBuf> = inner
            .iter()
            .filter(|p| file_name(p).ends_with(".parquet"))
            .cloned()
            .collect();
        if !pq.is_empty() {
            return pq;
        }
        let from_state = save_to_disk_files(&sub);
        if !from_state.is_empty() {
            return from_state;
        }
    }
    let cached = cache_arrow_files(&entries, split);
    if !cached.is_empty() {
        return cached;
    }
    // Single files named after the split.
    for name in split_aliases(split) {
        for ext in ["parquet", "arrow", "jsonl", "tsv", "json"] {
            let p = root.join(format!("{name}.{ext}"));
            if p.is_file() {
                return vec![p];
            }
        }
    }
    vec![]
}

/// The `datasets` cache's `{name}-{split}.arrow` / `{name}-{split}-0000x-of-0000y.arrow`.
fn cache_arrow_files(entries: &[PathBuf], split: &str) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|p| {
            let Some(stem) = file_name(p).strip_suffix(".arrow") else {
                return false;
            };
            if stem.ends_with(&format!("-{split}")) {
                return true;
            }
            let key = format!("-{split}-");
            stem.rfind(&key)
                .is_some_and(|i| is_shard_suffix(&stem[i + key.len()..]))
        })
        .cloned()
        .collect()
}

/// A `save_to_disk` split folder's arrow files, in `state.json`'s order when it lists them.
fn save_to_disk_files(dir: &Path) -> Vec<PathBuf> {
    if let Ok(text) = std::fs::read_to_string(dir.join("state.json"))
        && let Ok(state) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(files) = state.get("_data_files").and_then(|v| v.as_array())
    {
        let listed: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.get("filename").and_then(|n| n.as_str()))
            .map(|n| dir.join(n))
            .collect();
        if !listed.is_empty() && listed.iter().all(|p| p.is_file()) {
            return listed;
        }
    }
    list_dir(dir)
        .into_iter()
        .filter(|p| {
            let n = file_name(p);
            n.starts_with("data-") && n.ends_with(".arrow")
        })
        .collect()
}

/// Folders that may hold `task`'s split files under `dir`, most specific layouts first, each with
/// whether only the `datasets` cache layout is looked for there (the `{version}/{hash}` folders,
/// where any other match would be a coincidence of folder names).
fn candidate_roots(dir: &Path, task: Task) -> Vec<(PathBuf, bool)> {
    let config = task.hub_config();
    let mut roots: Vec<(PathBuf, bool)> = [
        dir.to_path_buf(),
        dir.join(config),
        dir.join(original_dir_name(task)),
        dir.join("data"),
        dir.join(config).join("data"),
    ]
    .into_iter()
    .map(|p| (p, false))
    .collect();
    // datasets cache: {config}/{version}/{hash}/ — newest version and most recent hash first.
    for base in [dir.join(config), dir.to_path_buf()] {
        let mut versions: Vec<PathBuf> =
            list_dir(&base).into_iter().filter(|p| p.is_dir()).collect();
        versions.reverse();
        for v in versions {
            let mut hashes: Vec<PathBuf> =
                list_dir(&v).into_iter().filter(|p| p.is_dir()).collect();
            hashes.sort_by_key(|p| std::cmp::Reverse(p.metadata().and_then(|m| m.modified()).ok()));
            roots.extend(hashes.into_iter().map(|h| (h, true)));
        }
    }
    roots
}

/// Finds the files holding published split `split` (`train`, `validation`,
/// `validation_matched`, ...) of `task` under `dir`, in any supported layout; shards in order.
pub fn find_split_files(dir: &Path, task: Task, split: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            path: dir.to_path_buf(),
            hint: "expected a data folder".into(),
        });
    }
    for (root, cache_only) in candidate_roots(dir, task) {
        let files = split_files_in(&root, split, cache_only);
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let found: Vec<String> = list_dir(dir)
        .iter()
        .take(12)
        .map(|p| file_name(p).to_string())
        .collect();
    let config = task.hub_config();
    Err(Error::NotFound {
        path: dir.to_path_buf(),
        hint: format!(
            "no `{split}` split of {task}: looked for {config}/{split}-*-of-*.parquet, {config}/{split}/*.parquet, \
             {split}/data-*.arrow, *-{split}.arrow, {}/{split}.{{tsv,jsonl}}; the folder holds: {}",
            original_dir_name(task),
            if found.is_empty() {
                "nothing".to_string()
            } else {
                found.join(", ")
            }
        ),
    })
}

pub use crate::io::hub::{hub_cache_dir, hub_cache_dir_with};

/// Snapshot folders of `task`'s data set repositories in the hub cache, best first: the commit
/// `refs/main` names, then the `refs/convert/parquet` commit, then any other snapshot (newest
/// first).
pub fn hub_snapshots(cache: &Path, task: Task) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for repo in task.hub_repos() {
        let folder = cache.join(format!("datasets--{}", repo.replace('/', "--")));
        if !folder.is_dir() {
            continue;
        }
        for r in ["main", "refs/convert/parquet"] {
            if let Ok(commit) = std::fs::read_to_string(folder.join("refs").join(r)) {
                let snap = folder.join("snapshots").join(commit.trim());
                if snap.is_dir() && !out.contains(&snap) {
                    out.push(snap);
                }
            }
        }
        let mut rest: Vec<PathBuf> = list_dir(&folder.join("snapshots"))
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        rest.sort_by_key(|p| std::cmp::Reverse(p.metadata().and_then(|m| m.modified()).ok()));
        for snap in rest {
            if !out.contains(&snap) {
                out.push(snap);
            }
        }
    }
    out
}

/// The `datasets` library's cache: `$HF_DATASETS_CACHE`, else `$HF_HOME/datasets`, else
/// `~/.cache/huggingface/datasets`.
pub fn datasets_cache_dir_with(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_DATASETS_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("datasets")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("datasets")))
}

/// Where downloaded data sets may already be: the hub cache (`hf download`, `load_dataset` of
/// parquet repos) and the `datasets` library's Arrow cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caches {
    pub hub: Option<PathBuf>,
    pub datasets: Option<PathBuf>,
}

impl Caches {
    /// Both caches as the environment places them.
    pub fn from_env() -> Caches {
        Caches {
            hub: hub_cache_dir(),
            datasets: datasets_cache_dir_with(|k| std::env::var_os(k)),
        }
    }
}

/// Folders of `task`'s data set in the `datasets` cache (`nyu-mll___glue`, `glue`, ...).
pub fn datasets_cache_folders(cache: &Path, task: Task) -> Vec<PathBuf> {
    task.hub_repos()
        .iter()
        .map(|repo| cache.join(repo.replace('/', "___")))
        .filter(|p| p.is_dir())
        .collect()
}

/// Finds published split `split` of `task`: under `data_dir` when given, else in the hub cache,
/// else in the `datasets` cache.
pub fn locate_split(
    task: Task,
    split: &str,
    data_dir: Option<&Path>,
    caches: &Caches,
) -> Result<Vec<PathBuf>> {
    if let Some(dir) = data_dir {
        return find_split_files(dir, task, split);
    }
    let mut places = Vec::new();
    if let Some(hub) = &caches.hub {
        places.extend(hub_snapshots(hub, task));
    }
    if let Some(ds) = &caches.datasets {
        places.extend(datasets_cache_folders(ds, task));
    }
    for place in &places {
        if let Ok(files) = find_split_files(place, task, split) {
            return Ok(files);
        }
    }
    let searched: Vec<String> = [&caches.hub, &caches.datasets]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    if searched.is_empty() {
        return Err(Error::invalid(format!(
            "{task}: no data folder given and no Hugging Face cache found (set HF_HOME or pass a data folder)"
        )));
    }
    Err(Error::NotFound {
        path: PathBuf::from(searched.join(" and ")),
        hint: format!(
            "no `{split}` split of {task} in the Hugging Face caches; download it with `hf download --repo-type dataset {} --include '{}/*'`, or pass a data folder",
            task.hub_repos()[0],
            task.hub_config()
        ),
    })
}
