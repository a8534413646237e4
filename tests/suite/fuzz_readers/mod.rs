//! Every reader of user files, fed random bytes and random mutations of valid
//! files (issue #21, "fuzzed readers"): it must answer with an error or a valid
//! result, never a panic, an abort or an allocation far beyond the input's size.
//!
//! Each test starts from valid inputs (the committed fixtures, or files this
//! module writes), mutates one file per case with a seeded generator
//! (truncation, bit flips, byte overwrites, splices, huge numbers in length
//! fields and JSON/TOML values, type swaps, pure random bytes) and calls the
//! crate's reader on it under `catch_unwind`, watching the largest single
//! allocation (`alloc_probe`). Readers reachable only through the binary
//! (`train --config`, sweep files, `train --resume`'s `args.json`) are driven
//! through it: exit status 0 or 2, never 101 (a panic) or a signal.
//!
//! Bounded: each test stops after `EPT_FUZZ_CASES` cases (default 20,000) or
//! `EPT_FUZZ_SECONDS` seconds (default 6), whichever comes first, and prints
//! its case count. Deterministic: the cases follow from `EPT_FUZZ_SEED`
//! (default 0x5EED) and the case number. A failure names the reader, the seed,
//! the case, the mutations, and where the mutated file was kept;
//! `EPT_FUZZ_CASE=N` replays case N alone, and `EPT_FUZZ_VERBOSE=1` prints
//! every case before it runs (to find the case behind an abort).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ept::rng::Rng;
use serde_json::Value;

use crate::alloc_probe;
use crate::common::{copy_dir, fixtures, temp_dir};

mod binary;
mod data;
mod models;
mod mutate;
mod runs;

use mutate::*;

const MIB: usize = 1 << 20;

/// The largest single allocation a reader may make for an input of `bytes`
/// bytes (all the files it reads): `max(64 × bytes, 16 MiB)`. Why 64×: a
/// reader legitimately expands its input (JSON text into maps and strings,
/// safetensors bf16 into f32, a tokenizer's vocabulary into hash tables,
/// snappy pages into Arrow buffers), but by a small factor of the bytes it
/// was given; why 16 MiB: fixed-size tables and buffers (parquet's and
/// `BufReader`'s, the NF4 decoder's) do not scale with small inputs. What the
/// bound catches is a header, shape, length or count taken at its word: a
/// file claiming a 2^60-byte tensor, a billion-element shape or a million
/// layers must not make the reader allocate it.
fn alloc_bound(input_bytes: usize) -> usize {
    input_bytes.saturating_mul(64).max(16 * MIB)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn budget() -> (usize, Duration) {
    (
        env_or("EPT_FUZZ_CASES", 20_000),
        Duration::from_secs_f64(env_or("EPT_FUZZ_SECONDS", 6.0)),
    )
}

fn base_seed() -> u64 {
    std::env::var("EPT_FUZZ_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(0x5EED)
}

/// One valid input: a folder the reader is pointed at (copied once to a work
/// folder), and the files in it that cases mutate, one per case.
struct Seed {
    dir: PathBuf,
    files: Vec<&'static str>,
}

fn seed(dir: impl Into<PathBuf>, files: &[&'static str]) -> Seed {
    Seed {
        dir: dir.into(),
        files: files.to_vec(),
    }
}

/// What a reader call came to (a panic is caught separately).
enum Outcome {
    Valid,
    Refused,
}

impl<T> From<ept::Result<T>> for Outcome {
    fn from(r: ept::Result<T>) -> Self {
        match r {
            Ok(_) => Outcome::Valid,
            Err(_) => Outcome::Refused,
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

fn dir_bytes(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len() as usize)
                .sum()
        })
        .unwrap_or(0)
}

/// Runs cases of `reader` over `seeds` until the budget is spent: each case
/// writes one mutated file into the seed's work folder, calls `read(work
/// folder, mutated file)` and restores the file. `watch_alloc`: check the
/// allocation bound (off for readers run in a child process). Panics with
/// every failure found.
fn fuzz(reader: &str, seeds: &[Seed], watch_alloc: bool, read: impl Fn(&Path, &Path) -> Outcome) {
    let (max_cases, time) = budget();
    let seed0 = base_seed();
    let verbose = std::env::var_os("EPT_FUZZ_VERBOSE").is_some();
    let root = temp_dir(&format!("fuzz-{reader}"));
    let keep = std::env::temp_dir().join("ept-fuzz-failures");
    let salt = reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    // Work copies and the original bytes of every mutated file.
    let mut originals: Vec<Vec<(PathBuf, Vec<u8>)>> = Vec::new();
    let mut works = Vec::new();
    for (i, s) in seeds.iter().enumerate() {
        let work = root.join(i.to_string());
        copy_dir(&s.dir, &work);
        originals.push(
            s.files
                .iter()
                .map(|f| {
                    let p = work.join(f);
                    let bytes =
                        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    (p, bytes)
                })
                .collect(),
        );
        works.push(work);
    }
    let start = Instant::now();
    let (mut cases, mut valid, mut refused) = (0usize, 0usize, 0usize);
    let mut largest_seen = 0usize;
    let mut failures: Vec<String> = Vec::new();
    // `EPT_FUZZ_CASE=N` replays case N alone (with the same seed).
    let only: Option<usize> = std::env::var("EPT_FUZZ_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut next = only.unwrap_or(0);
    while cases < max_cases && start.elapsed() < time && (only.is_none() || cases == 0) {
        let case = next;
        next += 1;
        cases += 1;
        let mut m = Mutator {
            rng: Rng::new(seed0 ^ salt ^ (case as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            log: Vec::new(),
        };
        let s = m.below(seeds.len());
        let f = m.below(originals[s].len());
        let (path, bytes) = &originals[s][f];
        let mutated = m.mutate(bytes, kind_of(path));
        std::fs::write(path, &mutated).unwrap();
        let what = format!(
            "{reader}: EPT_FUZZ_SEED={seed0:#x} case {case}, {} mutated: {}",
            seeds[s].dir.join(seeds[s].files[f]).display(),
            m.log.join("; ")
        );
        if verbose {
            eprintln!("{what}");
        }
        let input = dir_bytes(&works[s]);
        let bound = alloc_bound(input);
        alloc_probe::reset(if watch_alloc { bound } else { 0 });
        let result = catch_unwind(AssertUnwindSafe(|| read(&works[s], path)));
        let largest = alloc_probe::largest();
        alloc_probe::reset(0);
        largest_seen = largest_seen.max(largest);
        let problem = match result {
            Err(p) => Some(format!("panicked: {}", panic_text(p.as_ref()))),
            Ok(_) if watch_alloc && largest > bound => Some(format!(
                "allocated {largest} bytes at once for {input} bytes of input (bound {bound})"
            )),
            Ok(Outcome::Valid) => {
                valid += 1;
                None
            }
            Ok(Outcome::Refused) => {
                refused += 1;
                None
            }
        };
        if let Some(problem) = problem {
            let _ = std::fs::create_dir_all(&keep);
            let kept = keep.join(format!(
                "{reader}-{seed0:x}-{case}-{}",
                path.file_name().unwrap().to_string_lossy()
            ));
            let _ = std::fs::write(&kept, &mutated);
            failures.push(format!(
                "{what}\n    {problem}\n    input kept at {}",
                kept.display()
            ));
        }
        std::fs::write(path, bytes).unwrap();
    }
    eprintln!(
        "fuzz {reader}: {cases} cases in {:.1} s ({valid} valid, {refused} refused, {} failed); \
         largest single allocation {largest_seen} bytes",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn device() -> burn::tensor::Device {
    ept::runtime::cpu_device(false)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
