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

/// How a file can be mutated beyond its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Bytes,
    Json,
    JsonLines,
    Toml,
    Safetensors,
}

fn kind_of(path: &Path) -> Kind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Kind::Json,
        Some("jsonl") => Kind::JsonLines,
        Some("toml") => Kind::Toml,
        Some("safetensors") => Kind::Safetensors,
        _ => Kind::Bytes,
    }
}

/// Integers that break length and size arithmetic.
const HUGE: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 53,
    1 << 60,
    i64::MAX as u64,
    u64::MAX,
];

/// The seeded mutator of one case; `log` says what it did.
struct Mutator {
    rng: Rng,
    log: Vec<String>,
}

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.below(n as u64) as usize
        }
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn huge(&mut self) -> u64 {
        let v = HUGE[self.below(HUGE.len())];
        match self.below(3) {
            0 => v.wrapping_sub(1),
            1 => v.wrapping_add(1),
            _ => v,
        }
    }

    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// A mutation of `data` (of type `kind`): one or more structured or
    /// byte-level changes, or pure random bytes.
    fn mutate(&mut self, data: &[u8], kind: Kind) -> Vec<u8> {
        if self.chance(5) {
            let n = self.below(2 * data.len().clamp(16, 4096));
            self.log.push(format!("random bytes ×{n}"));
            return self.random_bytes(n);
        }
        let mut out = data.to_vec();
        if kind != Kind::Bytes && self.chance(55) {
            if let Some(m) = self.structured(&out, kind) {
                out = m;
            }
            if self.chance(70) {
                return out;
            }
        }
        for _ in 0..1 + self.below(3) {
            self.bytes(&mut out, kind);
        }
        out
    }

    fn bytes(&mut self, out: &mut Vec<u8>, kind: Kind) {
        let len = out.len();
        let at = self.below(len.max(1));
        match self.below(10) {
            0 => {
                let n = self.below(len + 1);
                self.log.push(format!("truncate to {n}"));
                out.truncate(n);
            }
            1 | 2 if len > 0 => {
                let bit = self.below(8);
                self.log.push(format!("flip bit {bit} of byte {at}"));
                out[at] ^= 1 << bit;
            }
            3 if len > 0 => {
                const SPECIAL: &[u8] = b"\0\xff\x7f\x80\"{}[],:\n\t\r\\-.e0912";
                let b = if self.chance(50) {
                    SPECIAL[self.below(SPECIAL.len())]
                } else {
                    self.rng.next_u64() as u8
                };
                self.log.push(format!("byte {at} := {b:#04x}"));
                out[at] = b;
            }
            4 if len > 0 => {
                let v = self.huge().to_le_bytes();
                let width = [1, 2, 4, 8][self.below(4)];
                let at = if kind == Kind::Safetensors && self.chance(50) {
                    0 // the header length
                } else {
                    at
                };
                let end = (at + width).min(len);
                self.log.push(format!(
                    "bytes {at}..{end} := {:#x} (LE)",
                    u64::from_le_bytes(v)
                ));
                out[at..end].copy_from_slice(&v[..end - at]);
            }
            5 => {
                let n = 1 + self.below(16);
                let b = self.random_bytes(n);
                self.log.push(format!("insert {n} random bytes at {at}"));
                let at = at.min(out.len());
                out.splice(at..at, b);
            }
            6 if len > 0 => {
                let n = 1 + self.below((len - at).min(256));
                self.log.push(format!("delete {at}..{}", at + n));
                out.drain(at..at + n);
            }
            7 if len > 0 => {
                let from = self.below(len);
                let n = 1 + self.below((len - from).min(512));
                let chunk = out[from..from + n].to_vec();
                let to = self.below(len);
                let end = (to + n).min(len);
                self.log
                    .push(format!("splice {from}..{} over {to}..{end}", from + n));
                out.splice(to..end, chunk);
            }
            8 if len > 0 => {
                let from = self.below(len);
                let n = 1 + self.below((len - from).min(512));
                let chunk = out[from..from + n].to_vec();
                let times = 1 + self.below(8);
                self.log
                    .push(format!("repeat {from}..{} ×{times}", from + n));
                for _ in 0..times {
                    out.splice(from..from, chunk.iter().copied());
                }
            }
            _ => {
                // A run of ASCII digits (a number in a text header) made huge.
                let Some(start) = (at..len).find(|&i| out[i].is_ascii_digit()) else {
                    return;
                };
                let end = (start..len)
                    .find(|&i| !out[i].is_ascii_digit())
                    .unwrap_or(len);
                let n = self.huge();
                let text = if self.chance(20) {
                    format!("-{n}")
                } else {
                    n.to_string()
                };
                self.log.push(format!("digits {start}..{end} := {text}"));
                out.splice(start..end, text.into_bytes());
            }
        }
    }

    /// A change that keeps the file's syntax: a JSON or TOML value replaced,
    /// a JSONL line's, or a safetensors header's (its length rewritten).
    fn structured(&mut self, data: &[u8], kind: Kind) -> Option<Vec<u8>> {
        match kind {
            Kind::Json => {
                let mut v: Value = serde_json::from_slice(data).ok()?;
                self.json(&mut v);
                Some(serde_json::to_vec(&v).ok()?)
            }
            Kind::JsonLines => {
                let text = std::str::from_utf8(data).ok()?;
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if lines.is_empty() {
                    return None;
                }
                let i = self.below(lines.len());
                let mut v: Value = serde_json::from_str(&lines[i]).ok()?;
                self.log.push(format!("line {}:", i + 1));
                self.json(&mut v);
                lines[i] = serde_json::to_string(&v).ok()?;
                Some(lines.join("\n").into_bytes())
            }
            Kind::Toml => {
                let text = std::str::from_utf8(data).ok()?;
                let mut t: toml::Table = toml::from_str(text).ok()?;
                self.toml(&mut t);
                Some(toml::to_string(&t).ok()?.into_bytes())
            }
            Kind::Safetensors => {
                let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
                let header = data.get(8..8usize.checked_add(n)?)?;
                let mut v: Value = serde_json::from_slice(header).ok()?;
                self.log.push("header:".into());
                if self.chance(30) && v.get("__metadata__").is_some_and(Value::is_object) {
                    self.metadata(&mut v["__metadata__"]);
                } else {
                    self.json(&mut v);
                }
                let header = serde_json::to_vec(&v).ok()?;
                let mut out = (header.len() as u64).to_le_bytes().to_vec();
                out.extend(header);
                out.extend(&data[8 + n..]);
                Some(out)
            }
            Kind::Bytes => None,
        }
    }

    /// Replaces a random value of `root` (or removes it, or grows an array).
    fn json(&mut self, root: &mut Value) {
        let mut paths = Vec::new();
        collect_json_paths(root, &mut Vec::new(), &mut paths);
        let path = paths[self.below(paths.len())].clone();
        let node = json_at(root, &path);
        let new = match self.below(9) {
            0 | 1 => Value::from(self.huge()),
            2 => Value::from((self.huge() as i64).wrapping_neg()),
            3 => serde_json::json!([1.5e300, -0.0, f64::MAX, 1e-300][self.below(4)]),
            4 => match &*node {
                // A type swap that keeps the text: 5 <-> "5", [..] -> its first item.
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number),
                Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                Value::Object(_) => Value::Array(vec![node.clone()]),
                other => Value::Array(vec![other.clone()]),
            },
            5 => [
                Value::Null,
                Value::Bool(true),
                Value::String(String::new()),
                Value::String("x".repeat(1 + self.below(64))),
                serde_json::json!([]),
                serde_json::json!({}),
            ][self.below(6)]
            .clone(),
            6 => Value::Array(vec![Value::from(self.huge()); 1 + self.below(4)]),
            7 => match &*node {
                Value::Array(a) if !a.is_empty() => {
                    let mut a = a.clone();
                    let i = self.below(a.len());
                    let item = a[i].clone();
                    a.extend(std::iter::repeat_n(item, 1 + self.below(4)));
                    Value::Array(a)
                }
                other => Value::Array(vec![other.clone(), other.clone()]),
            },
            _ => {
                // Remove the key (or item) altogether.
                self.log.push(format!("  remove {}", show_path(&path)));
                remove_json(root, &path);
                return;
            }
        };
        self.log.push(format!(
            "  {} := {}",
            show_path(&path),
            short(&new.to_string())
        ));
        *json_at(root, &path) = new;
    }

    /// A safetensors `__metadata__` string set to a number-like or odd text.
    fn metadata(&mut self, md: &mut Value) {
        let Some(obj) = md.as_object_mut() else {
            return;
        };
        let keys: Vec<String> = obj.keys().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let key = &keys[self.below(keys.len())];
        let text = match self.below(5) {
            0 => self.huge().to_string(),
            1 => format!("-{}", self.huge()),
            2 => ["", "nan", "inf", "1e999", "true", "null", "[]", "0x10"][self.below(8)].into(),
            3 => "9".repeat(1 + self.below(40)),
            _ => {
                self.log.push(format!("  remove __metadata__.{key}"));
                obj.remove(key);
                return;
            }
        };
        self.log
            .push(format!("  __metadata__.{key} := {}", short(&text)));
        obj.insert(key.clone(), Value::String(text));
    }

    /// Replaces a random value of a TOML table (or removes it).
    fn toml(&mut self, root: &mut toml::Table) {
        let mut paths = Vec::new();
        collect_toml_paths(root, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            return;
        }
        let path = paths[self.below(paths.len())].clone();
        let huge = self.huge();
        let new = match self.below(8) {
            0 | 1 => toml::Value::Integer(huge as i64),
            2 => toml::Value::Float([1e300, -0.0, f64::NAN, f64::INFINITY][self.below(4)]),
            3 => toml::Value::String(huge.to_string()),
            4 => toml::Value::Array(vec![toml::Value::Integer(huge as i64); 1 + self.below(3)]),
            5 => toml::Value::Boolean(true),
            6 => toml::Value::Table(toml::Table::new()),
            _ => {
                self.log.push(format!("  remove {}", path.join(".")));
                let (last, parents) = path.split_last().expect("non-empty");
                if let Some(t) = toml_table_at(root, parents) {
                    t.remove(last);
                }
                return;
            }
        };
        self.log.push(format!("  {} := {new}", path.join(".")));
        let (last, parents) = path.split_last().expect("non-empty");
        if let Some(t) = toml_table_at(root, parents) {
            t.insert(last.clone(), new);
        }
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn show_path(path: &[Step]) -> String {
    if path.is_empty() {
        return "(root)".into();
    }
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!(".{k}"),
            Step::Index(i) => format!("[{i}]"),
        })
        .collect()
}

fn short(s: &str) -> String {
    if s.len() <= 60 {
        s.to_string()
    } else {
        let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    }
}

/// Every path in `v`, at most 5,000 (enough to reach any field of a config or header).
fn collect_json_paths(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if out.len() >= 5000 {
        return;
    }
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(Step::Key(k.clone()));
                collect_json_paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(Step::Index(i));
                collect_json_paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

fn remove_json(root: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        *root = Value::Null;
        return;
    };
    match (json_at(root, parents), last) {
        (Value::Object(m), Step::Key(k)) => {
            m.remove(k);
        }
        (Value::Array(a), Step::Index(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn collect_toml_paths(t: &toml::Table, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in t {
        at.push(k.clone());
        out.push(at.clone());
        if let toml::Value::Table(inner) = v {
            collect_toml_paths(inner, at, out);
        }
        at.pop();
    }
}

fn toml_table_at<'a>(t: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    path.iter().try_fold(t, |t, k| match t.get_mut(k) {
        Some(toml::Value::Table(inner)) => Some(inner),
        _ => None,
    })
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

// ---- safetensors weights, sharded indexes, config.json, tokenizer.json ----

/// `WeightFile` over a (mutated) folder: every tensor read raw and as f32,
/// then the whole model loaded as `ept` loads it (4-bit weights included).
fn read_weights(dir: &Path) -> Outcome {
    use ept::io::weights::WeightFile;
    let weights = match WeightFile::open_dir(dir) {
        Ok(w) => w,
        Err(_) => return Outcome::Refused,
    };
    let names: Vec<String> = weights.names().map(str::to_owned).collect();
    let _ = weights.storage_dtype();
    for name in &names {
        if let Ok(Some(raw)) = weights.raw(name) {
            let _ = weights.read_f32(name, &raw.shape);
        }
    }
    ept::model::Backbone::load(dir, None, &device()).into()
}

#[test]
fn safetensors_weights() {
    let f = fixtures();
    let w = &["model.safetensors"];
    fuzz(
        "safetensors",
        &[
            seed(f.join("t5/relu-tied"), w),
            seed(f.join("t5/relu-bf16"), w),
            seed(f.join("llama/llama-gqa"), w),
            seed(f.join("nf4/llama-gqa"), w),
            seed(f.join("nf4/qwen2-bias"), w),
        ],
        true,
        |dir, _| read_weights(dir),
    );
}

#[test]
fn safetensors_sharded_index() {
    let f = fixtures();
    fuzz(
        "shard-index",
        &[
            seed(
                f.join("t5/sharded-silu"),
                &[
                    "model.safetensors.index.json",
                    "model.safetensors.index.json",
                    "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors",
                ],
            ),
            seed(
                f.join("llama/mistral-window-sharded"),
                &["model.safetensors.index.json"],
            ),
        ],
        true,
        |dir, _| read_weights(dir),
    );
}

#[test]
fn config_json() {
    let f = fixtures();
    let c = &["config.json"];
    let mut seeds: Vec<Seed> = [
        "t5/relu-tied",
        "t5/gated-untied",
        "t5/v5-flag",
        "llama/llama-gqa",
        "llama/llama-v4-config",
        "llama/llama3-mqa-tied",
        "llama/qwen2-bias",
        "nf4/llama-gqa",
    ]
    .iter()
    .map(|d| seed(f.join(d), c))
    .collect();
    seeds.push(seed(repo().join("assets/organism-llama"), c));
    fuzz("config.json", &seeds, true, |dir, path| {
        let Ok((p, value)) = ept::model::read_config(dir) else {
            return Outcome::Refused;
        };
        let _ = ept::io::bnb4::QuantConfig::from_config(&value, &p);
        let _ = ept::model::T5Config::from_file(path);
        let _ = ept::model::LlamaConfig::from_file(path);
        let _ = ept::model::ModelShape::from_dir(dir);
        ept::model::Backbone::load(dir, None, &device()).into()
    });
}

#[test]
fn tokenizer_json() {
    let f = fixtures();
    let t = &["tokenizer.json"];
    fuzz(
        "tokenizer.json",
        &[
            seed(f.join("t5/relu-tied"), t),
            seed(f.join("llama/llama-gqa"), t),
            seed(repo().join("assets/organism-llama"), t),
        ],
        true,
        |_, path| {
            use ept::model::TextTokenizer;
            let Ok(tok) = TextTokenizer::from_file(path, 1) else {
                return Outcome::Refused;
            };
            let _ = tok.vocab_size();
            let ids = tok.encode("The quick brown fox, 42 times.", Some(12));
            let _ = tok.encode_target("yes");
            let _ = tok.for_decoder().encode_target("no");
            ids.into()
        },
    );
}

// ---- prompt checkpoints and run folders ----

#[test]
fn prompt_checkpoint() {
    let f = fixtures().join("prompt");
    let p = &["prompt.safetensors"];
    let mut seeds: Vec<Seed> = [
        "pt",
        "dept",
        "ept-cross",
        "ept-cross-gated",
        "ept-literal",
        "ablate-multispace",
    ]
    .iter()
    .map(|d| seed(f.join(d), p))
    .collect();
    seeds.push(seed(
        fixtures().join("llama/llama-gqa"),
        &["pt_prompt.safetensors"],
    ));
    fuzz("prompt", &seeds, true, |_, path| {
        let r = ept::prompt::checkpoint::load(path, &device());
        if let Ok((prompt, _)) = &r {
            let _ = ept::prompt::checkpoint::check_fits(path, prompt, 16);
        }
        r.into()
    });
}

/// A finished short run on the T5 fixture with a checkpoint in `last/`
/// (made by the binary, as `resume.rs` does), in `dir/run`.
fn make_run(dir: &Path) -> PathBuf {
    let data = fixtures().join("data.jsonl");
    let model = fixtures().join("t5/gated-untied");
    let out = Command::new(env!("CARGO_BIN_EXE_ept"))
        .args(["train", "--model"])
        .arg(&model)
        .arg("--train-file")
        .arg(&data)
        .arg("--validation-file")
        .arg(&data)
        .args([
            "--method",
            "ept",
            "--l",
            "10",
            "--s",
            "6",
            "--m",
            "64",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--eval-every",
            "2",
            "--save-every",
            "2",
            "--name",
            "run",
        ])
        .arg("--runs-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("run");
    assert!(run.join("last/state.json").is_file(), "the run saved last/");
    run
}

/// `last/` of a run: state.json, the prompt, and (`optimizer: true`) the
/// optimiser's moments, read as `ept train --resume` reads them.
fn fuzz_run_folder(reader: &str, files: &[&'static str]) {
    let made = temp_dir(&format!("fuzz-{reader}-made"));
    let run = make_run(&made);
    // The optimiser's parameter count, from the valid file.
    let bytes = std::fs::read(run.join("last/optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n_params = st
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("m.")?.parse::<usize>().ok())
        .max()
        .map_or(0, |i| i + 1);
    fuzz(reader, &[seed(run.join("last"), files)], true, |last, _| {
        // `last_dir` and `load_last` look for `last/` inside the run folder.
        let run = last.parent().unwrap().join("run");
        if !run.join("last").exists() {
            std::fs::create_dir_all(&run).unwrap();
            std::os::unix::fs::symlink(last, run.join("last")).unwrap();
        }
        let _ = ept::train::state::last_dir(&run);
        let mut optim =
            ept::train::optim::AdamW::new(ept::train::optim::AdamWConfig::default(), n_params);
        ept::train::state::load_last(&run, &mut optim, &device()).into()
    });
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn run_folder_state() {
    fuzz_run_folder("run-state", &["state.json", "prompt.safetensors"]);
}

/// `optimizer.safetensors` of `last/`: its moments must be F32 and of their
/// parameters' shapes (a 1-D `m.0` once panicked on `shape[1]`).
#[test]
fn run_folder_optimizer() {
    fuzz_run_folder("run-optimizer", &["optimizer.safetensors"]);
}

// ---- data files ----

#[test]
fn jsonl_files() {
    use ept::data::Task;
    let t = fixtures().join("tables");
    let seeds = [
        seed(fixtures(), &["data.jsonl"]),
        seed(t.join("user"), &["train.jsonl"]),
        seed(t.join("superglue/CB"), &["train.jsonl"]),
        seed(t.join("superglue/MultiRC"), &["val.jsonl"]),
        seed(t.join("superglue/WSC"), &["val.jsonl"]),
        seed(t.join("superglue/ReCoRD"), &["train.jsonl"]),
        seed(t.join("squad_json"), &["validation.json"]),
    ];
    let tasks = [
        None,
        None,
        Some(Task::Cb),
        Some(Task::MultiRc),
        Some(Task::Wsc),
        Some(Task::Record),
        Some(Task::Squad),
    ];
    fuzz("jsonl", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        let _ = ept::data::readers::read_file(path, None);
        match tasks[i] {
            Some(task) => format_rows(task, path, ept::data::readers::read_file(path, Some(task))),
            None => ept::data::load_user_file(path).into(),
        }
    });
}

/// Rows formatted as training examples, as `load_split` would.
fn format_rows(
    task: ept::data::Task,
    path: &Path,
    rows: ept::Result<Vec<ept::data::Row>>,
) -> Outcome {
    use ept::data::{Purpose, RowSource, format_row};
    let Ok(rows) = rows else {
        return Outcome::Refused;
    };
    for (row, r) in rows.iter().enumerate() {
        for purpose in [Purpose::Train, Purpose::Eval] {
            if format_row(task, r, purpose, RowSource { path, row }).is_err() {
                return Outcome::Refused;
            }
        }
    }
    Outcome::Valid
}

#[test]
fn tsv_files() {
    use ept::data::Task;
    let g = fixtures().join("tables/glue");
    let seeds = [
        seed(g.join("RTE"), &["dev.tsv"]),
        seed(g.join("CoLA"), &["train.tsv"]),
        seed(g.join("MRPC"), &["train.tsv"]),
    ];
    let tasks = [Task::Rte, Task::Cola, Task::Mrpc];
    fuzz("tsv", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        let task = tasks[i];
        format_rows(task, path, ept::data::readers::read_file(path, Some(task)))
    });
}

#[test]
fn parquet_files() {
    use ept::data::Task;
    let hub = fixtures().join("tables/hub");
    let glue = hub.join("datasets--nyu-mll--glue/snapshots/0123abcd");
    let sg = hub.join("datasets--aps--super_glue/snapshots/feed0001");
    let seeds = [
        seed(glue.join("rte"), &["validation-00000-of-00001.parquet"]),
        seed(glue.join("stsb"), &["validation-00000-of-00001.parquet"]),
        seed(sg.join("cb/train"), &["0000.parquet"]),
        seed(sg.join("record/train"), &["0000.parquet"]),
        seed(
            hub.join("datasets--rajpurkar--squad/snapshots/c0ffee/plain_text"),
            &["validation-00000-of-00001.parquet"],
        ),
    ];
    let tasks = [Task::Rte, Task::Stsb, Task::Cb, Task::Record, Task::Squad];
    fuzz("parquet", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        format_rows(tasks[i], path, ept::data::readers::read_file(path, None))
    });
}

/// An Arrow IPC *file* (magic `ARROW1`) with the batches of the stream `from`.
fn ipc_file_from_stream(from: &Path, to: &Path) {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(from).unwrap(), None).unwrap();
    let schema = reader.schema();
    let file = std::fs::File::create(to).unwrap();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(file, &schema).unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn arrow_files() {
    use ept::data::Task;
    let t = fixtures().join("tables");
    let made = temp_dir("fuzz-arrow-made");
    let boolq = t.join("saved_boolq/train/data-00000-of-00001.arrow");
    ipc_file_from_stream(&boolq, &made.join("file-format.arrow"));
    let seeds = [
        seed(
            t.join("cache/super_glue/multirc/1.0.3/abcdef0123"),
            &["super_glue-validation.arrow"],
        ),
        seed(t.join("saved_boolq/train"), &["data-00000-of-00001.arrow"]),
        seed(&made, &["file-format.arrow"]),
    ];
    let tasks = [Task::MultiRc, Task::BoolQ, Task::BoolQ];
    fuzz("arrow", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        format_rows(tasks[i], path, ept::data::readers::read_file(path, None))
    });
    let _ = std::fs::remove_dir_all(&made);
}

// ---- files only the binary reads: train TOML, sweep files, args.json ----

/// Runs the binary; a panic (exit 101, "panicked" on stderr), a signal or no
/// answer within 60 s is a failure (a panic here, which `fuzz` records).
fn run_ept(args: &[&std::ffi::OsStr]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ept"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no answer within 60 s (a mutant that trains? the fast-fail flags did not hold)"
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let code = status.code();
    if code.is_none() || stderr.contains("panicked") || !matches!(code, Some(0 | 2)) {
        panic!("exit {status}; stderr: {}", short(stderr.trim()));
    }
    if code == Some(0) {
        Outcome::Valid
    } else {
        Outcome::Refused
    }
}

#[test]
fn train_config_toml() {
    let made = temp_dir("fuzz-config-made");
    let data = fixtures().join("data.jsonl");
    std::fs::write(
        made.join("fixture.toml"),
        format!(
            "model = {:?}\ntrain_file = {data:?}\nvalidation-file = {data:?}\n\
             method = \"ept\"\nl = 10\ns = 6\nm = 64\nlr_low_rank = 0.01\nmax_steps = 6\n\
             warmup_steps = 2\nbatch_size = 3\neval_every = 3\nfusion = \"literal\"\n",
            fixtures().join("t5/gated-untied").display()
        ),
    )
    .unwrap();
    let ex = repo().join("examples");
    let seeds = [
        seed(&made, &["fixture.toml"]),
        seed(&ex, &["toy-sst2.toml", "toy-sst2-llama.toml"]),
    ];
    let runs = made.join("runs");
    // Every key of the file is read and type-checked; then `--max-steps 0`
    // (the command line wins over the file) stops the run before any data or
    // model is read, and `--device bogus` before any weights are.
    fuzz("train-config", &seeds, false, |_, path| {
        run_ept(&[
            "train".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
            "--max-steps".as_ref(),
            "0".as_ref(),
            "--device".as_ref(),
            "bogus".as_ref(),
            "--runs-dir".as_ref(),
            runs.as_os_str(),
            "--quiet".as_ref(),
        ])
    });
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn sweep_file_toml() {
    let made = temp_dir("fuzz-sweep-made");
    // Settings that fail fast in every run: no steps, no such data or model.
    std::fs::write(
        made.join("sweep.toml"),
        "name = \"fz\"\n[base]\nmodel = \"/nonexistent/model\"\n\
         train_file = \"/nonexistent/train.jsonl\"\nmax_steps = 0\nl = 10\n\
         [grid]\nmethod = [\"pt\", \"ept\"]\nseed = [1, 2]\nlr_prompt = [0.3, 0.1]\n",
    )
    .unwrap();
    let runs = made.join("runs");
    let ex = repo().join("examples");
    // `--device bogus` fails every run of a valid mutant before its weights are read.
    fuzz(
        "sweep-file",
        &[
            seed(&made, &["sweep.toml"]),
            seed(&ex, &["organism-fusion.toml", "organism-methods.toml"]),
        ],
        false,
        |_, path| {
            run_ept(&[
                "sweep".as_ref(),
                path.as_os_str(),
                "--runs-dir".as_ref(),
                runs.as_os_str(),
                "--device".as_ref(),
                "bogus".as_ref(),
            ])
        },
    );
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn resume_args_json() {
    let made = temp_dir("fuzz-resume-made");
    let run = make_run(&made);
    // The saved settings made to fail fast once read: no steps to take.
    let args_path = run.join("args.json");
    let mut args: Value = serde_json::from_slice(&std::fs::read(&args_path).unwrap()).unwrap();
    args["max_steps"] = Value::from(0);
    std::fs::write(&args_path, serde_json::to_vec_pretty(&args).unwrap()).unwrap();
    fuzz(
        "resume-args",
        &[seed(&run, &["args.json"])],
        false,
        |dir, _| {
            run_ept(&[
                "train".as_ref(),
                "--resume".as_ref(),
                dir.as_os_str(),
                "--quiet".as_ref(),
            ])
        },
    );
    let _ = std::fs::remove_dir_all(&made);
}
