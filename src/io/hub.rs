//! Finding checkpoints offline: a local folder, or a model id in the Hugging Face cache.
//!
//! ept never downloads. A hub id is resolved the way `huggingface_hub` lays out
//! its cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--{org}--{name}/refs/{revision}` holds a
//! commit hash and `snapshots/{commit}/` the files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    hub_cache_dir_with(|k| std::env::var_os(k))
}

/// [`hub_cache_dir`] with the environment supplied by the caller (testable without touching the
/// process environment).
pub fn hub_cache_dir_with(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The ids a user may mean: legacy canonical names moved under organisations
/// (`t5-base` now lives at `google-t5/t5-base`), and the reverse.
fn candidate_ids(id: &str) -> Vec<String> {
    let mut ids = vec![id.to_string()];
    if !id.contains('/') {
        if id.starts_with("t5-") {
            ids.push(format!("google-t5/{id}"));
        }
        ids.push(format!("google/{id}"));
    } else if let Some(rest) = id.strip_prefix("google-t5/") {
        ids.push(rest.to_string());
    }
    ids
}

/// Resolves `repo_type` ("models" or "datasets") `id` at `revision` in `cache`.
pub fn resolve_in_cache(
    cache: &Path,
    repo_type: &str,
    id: &str,
    revision: &str,
) -> Option<PathBuf> {
    for cand in candidate_ids(id) {
        let repo = cache.join(format!("{repo_type}--{}", cand.replace('/', "--")));
        if !repo.is_dir() {
            continue;
        }
        let snapshots = repo.join("snapshots");
        // A revision may be a commit hash that names a snapshot directly...
        let direct = snapshots.join(revision);
        if direct.is_dir() {
            return Some(direct);
        }
        // ...or a ref (a branch or tag) whose file holds the commit.
        if let Ok(commit) = std::fs::read_to_string(repo.join("refs").join(revision)) {
            let dir = snapshots.join(commit.trim());
            if dir.is_dir() {
                return Some(dir);
            }
        }
    }
    None
}

/// The name of the built-in model organism (`--model organism`, the default): a T5.
pub const ORGANISM: &str = "organism";

/// The name of the built-in decoder organism (`--model organism-llama`): a Llama.
pub const ORGANISM_LLAMA: &str = "organism-llama";

/// Where the built-in organism lives: `assets/organism` of the source tree this
/// binary was built from (docs/ORGANISM.md).
pub fn organism_dir() -> PathBuf {
    assets_dir(ORGANISM)
}

/// Where the built-in decoder organism lives: `assets/organism-llama`.
pub fn organism_llama_dir() -> PathBuf {
    assets_dir(ORGANISM_LLAMA)
}

fn assets_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// Resolves `--model`: an existing folder, a built-in organism, or a hub id in the local cache.
pub fn resolve_model(spec: &str, revision: Option<&str>) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    for (name, arch) in [(ORGANISM, "t5"), (ORGANISM_LLAMA, "llama")] {
        if spec != name {
            continue;
        }
        let dir = assets_dir(name);
        if !dir.join("config.json").is_file() {
            return Err(Error::NotFound {
                path: dir,
                hint: format!(
                    "the built-in model organism `{name}` ships in the repository's assets/{name}; \
                     rebuild it with `ept pretrain --arch {arch} --out assets/{name}` (docs/ORGANISM.md)"
                ),
            });
        }
        return Ok(dir);
    }
    if path.is_file() {
        return Err(Error::invalid(format!(
            "{spec}: --model expects a folder holding config.json, not a file"
        )));
    }
    let cache = hub_cache_dir().unwrap_or_default();
    let revision = revision.unwrap_or("main");
    resolve_in_cache(&cache, "models", spec, revision).ok_or_else(|| {
        Error::invalid(format!(
            "model `{spec}` is neither a folder nor in the Hugging Face cache at {} (revision `{revision}`); \
             ept never downloads: fetch it where there is network (e.g. `hf download {spec}`) and copy the cache or folder here",
            cache.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_refs_and_commit_and_legacy_names() {
        let tmp = std::env::temp_dir().join(format!("ept-hub-test-{}", std::process::id()));
        let repo = tmp.join("models--google-t5--t5-small");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/def456")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let got = resolve_in_cache(&tmp, "models", "t5-small", "main").unwrap();
        assert!(got.ends_with("snapshots/abc123"));
        let got = resolve_in_cache(&tmp, "models", "google-t5/t5-small", "def456").unwrap();
        assert!(got.ends_with("snapshots/def456"));
        assert!(resolve_in_cache(&tmp, "models", "t5-small", "nope").is_none());
        assert!(resolve_in_cache(&tmp, "models", "t5-base", "main").is_none());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
