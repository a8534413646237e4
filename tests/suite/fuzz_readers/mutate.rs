//! The seeded mutations: bytes, JSON and TOML values, lengths.

use super::*;

/// How a file can be mutated beyond its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Bytes,
    Json,
    JsonLines,
    Toml,
    Safetensors,
}

pub(super) fn kind_of(path: &Path) -> Kind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Kind::Json,
        Some("jsonl") => Kind::JsonLines,
        Some("toml") => Kind::Toml,
        Some("safetensors") => Kind::Safetensors,
        _ => Kind::Bytes,
    }
}

/// Integers that break length and size arithmetic.
pub(super) const HUGE: [u64; 12] = [
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
pub(super) struct Mutator {
    pub(super) rng: Rng,
    pub(super) log: Vec<String>,
}

impl Mutator {
    pub(super) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.below(n as u64) as usize
        }
    }

    pub(super) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(super) fn huge(&mut self) -> u64 {
        let v = HUGE[self.below(HUGE.len())];
        match self.below(3) {
            0 => v.wrapping_sub(1),
            1 => v.wrapping_add(1),
            _ => v,
        }
    }

    pub(super) fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// A mutation of `data` (of type `kind`): one or more structured or
    /// byte-level changes, or pure random bytes.
    pub(super) fn mutate(&mut self, data: &[u8], kind: Kind) -> Vec<u8> {
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

    pub(super) fn bytes(&mut self, out: &mut Vec<u8>, kind: Kind) {
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
    pub(super) fn structured(&mut self, data: &[u8], kind: Kind) -> Option<Vec<u8>> {
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
    pub(super) fn json(&mut self, root: &mut Value) {
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
    pub(super) fn metadata(&mut self, md: &mut Value) {
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
    pub(super) fn toml(&mut self, root: &mut toml::Table) {
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
pub(super) enum Step {
    Key(String),
    Index(usize),
}

pub(super) fn show_path(path: &[Step]) -> String {
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

pub(super) fn short(s: &str) -> String {
    if s.len() <= 60 {
        s.to_string()
    } else {
        let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    }
}

/// Every path in `v`, at most 5,000 (enough to reach any field of a config or header).
pub(super) fn collect_json_paths(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
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

pub(super) fn json_at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

pub(super) fn remove_json(root: &mut Value, path: &[Step]) {
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

pub(super) fn collect_toml_paths(
    t: &toml::Table,
    at: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    for (k, v) in t {
        at.push(k.clone());
        out.push(at.clone());
        if let toml::Value::Table(inner) = v {
            collect_toml_paths(inner, at, out);
        }
        at.pop();
    }
}

pub(super) fn toml_table_at<'a>(
    t: &'a mut toml::Table,
    path: &[String],
) -> Option<&'a mut toml::Table> {
    path.iter().try_fold(t, |t, k| match t.get_mut(k) {
        Some(toml::Value::Table(inner)) => Some(inner),
        _ => None,
    })
}
