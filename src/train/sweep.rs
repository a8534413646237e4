//! Sweeps: a grid of training settings run one after another, and the table
//! and figures that summarise them (mean ± std over seeds).
//!
//! A sweep file is TOML with two tables: `[base]`, settings every run shares
//! (any key of `ept train --config`), and `[grid]`, keys whose values are
//! lists; the runs are the product of the lists, keys in alphabetical order. Each run is named after its grid values (`fusion=literal,seed=1`)
//! so a re-started sweep finds the runs already done and skips them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One run of the grid: its `(key, value)` settings in grid order.
pub type Combo = Vec<(String, toml::Value)>;

/// Settings in their shown form, `(key, value)`.
pub type Settings = Vec<(String, String)>;

/// A figure's series: its label and `(x, mean, std)` points.
pub type Curve = (String, Vec<(f64, f64, f64)>);

/// The most runs a sweep file may ask for: a few lists in a small file can
/// multiply to more runs than memory holds, and no study runs more.
pub const MAX_RUNS: usize = 100_000;

/// The product of the grid's lists (a scalar counts as a one-element list);
/// `None` when it would exceed [`MAX_RUNS`].
pub fn expand(grid: &toml::Table) -> Option<Vec<Combo>> {
    let count = grid.values().try_fold(1usize, |n, v| match v {
        toml::Value::Array(a) => n.checked_mul(a.len()),
        _ => Some(n),
    })?;
    if count > MAX_RUNS {
        return None;
    }
    let mut combos: Vec<Combo> = vec![Vec::new()];
    for (key, value) in grid {
        let values = match value {
            toml::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    Some(combos)
}

/// One of N disjoint slices of a grid, so that N machines (or the jobs of a
/// cluster's array) cover one sweep: `--shard i/N` with i from 1 to N takes
/// every N-th run from the i-th. Interleaved rather than cut in blocks, so
/// each slice mixes the grid's settings and seeds and the slices take about
/// the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// From 1 to `count`.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `i/N`, 1 ≤ i ≤ N.
    pub fn parse(s: &str) -> Result<Shard> {
        let parsed = s.split_once('/').and_then(|(i, n)| {
            Some((
                i.trim().parse::<usize>().ok()?,
                n.trim().parse::<usize>().ok()?,
            ))
        });
        match parsed {
            Some((index, count)) if (1..=count).contains(&index) => Ok(Shard { index, count }),
            _ => Err(Error::invalid(format!(
                "--shard {s}: expected I/N with 1 ≤ I ≤ N, e.g. 2/8"
            ))),
        }
    }

    /// Whether the run at `position` (from 0, in grid order) is in this slice.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }
}

/// A value as it appears in run names and tables (`0.3`, `literal`, `true`).
pub fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The folder name of a run: `key=value` pairs joined by commas, with
/// characters that do not belong in a file name replaced by `_`.
pub fn run_name(combo: &[(String, toml::Value)]) -> String {
    let name = combo
        .iter()
        .map(|(k, v)| format!("{k}={}", show(v)))
        .collect::<Vec<_>>()
        .join(",");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=,.-_+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() { "run".into() } else { name }
}

/// What one finished run contributes to the summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Grid settings (shown form), seed included.
    pub settings: Vec<(String, String)>,
    pub validation: f64,
    pub test: Option<f64>,
    pub wall_seconds: f64,
    /// Trainable parameters kept after training (prompt + low-rank).
    pub parameters: usize,
}

/// One line of the summary: the runs that differ only in `seed`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub settings: Vec<(String, String)>,
    pub runs: usize,
    pub validation: (f64, f64),
    pub test: Option<(f64, f64)>,
    pub wall_seconds: (f64, f64),
    pub parameters: usize,
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Groups `records` by their settings other than `seed`, in first-seen order.
pub fn summarise(records: &[Record]) -> Vec<Summary> {
    let mut groups: BTreeMap<usize, (Settings, Vec<&Record>)> = BTreeMap::new();
    let mut keys: Vec<Vec<(String, String)>> = Vec::new();
    for r in records {
        let key: Vec<(String, String)> = r
            .settings
            .iter()
            .filter(|(k, _)| k != "seed")
            .cloned()
            .collect();
        let i = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
            keys.push(key.clone());
            keys.len() - 1
        });
        groups
            .entry(i)
            .or_insert_with(|| (key, Vec::new()))
            .1
            .push(r);
    }
    groups
        .into_values()
        .map(|(settings, rs)| {
            let val: Vec<f64> = rs.iter().map(|r| r.validation).collect();
            let tests: Vec<f64> = rs.iter().filter_map(|r| r.test).collect();
            let wall: Vec<f64> = rs.iter().map(|r| r.wall_seconds).collect();
            Summary {
                settings,
                runs: rs.len(),
                validation: mean_std(&val),
                test: (tests.len() == rs.len()).then(|| mean_std(&tests)),
                wall_seconds: mean_std(&wall),
                parameters: rs[0].parameters,
            }
        })
        .collect()
}

/// The summary as a Markdown table: one column per grid key (seed folded
/// into mean ± std), then validation and test scores, parameters, time.
pub fn markdown(summaries: &[Summary], metric: &str) -> String {
    let keys: Vec<&str> = summaries
        .first()
        .map(|s| s.settings.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let mut out = String::new();
    let mut header: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    header.extend([
        "runs".into(),
        format!("validation {metric}"),
        format!("test {metric}"),
        "parameters".into(),
        "time (s)".into(),
    ]);
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for s in summaries {
        let mut cells: Vec<String> = s.settings.iter().map(|(_, v)| v.clone()).collect();
        cells.push(s.runs.to_string());
        cells.push(pm(s.validation));
        cells.push(s.test.map(pm).unwrap_or_else(|| "–".into()));
        cells.push(s.parameters.to_string());
        cells.push(format!("{:.1}", s.wall_seconds.0));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn pm((mean, std): (f64, f64)) -> String {
    format!("{mean:.2} ± {std:.2}")
}

/// Points `(x, mean, std)` of a figure over grid key `x_key` (numeric), one
/// series per combination of the other keys (seed excluded), for the
/// validation score or, with `time`, the wall time.
pub fn series_over(summaries: &[Summary], x_key: &str, time: bool) -> Result<Vec<Curve>> {
    let mut out: Vec<Curve> = Vec::new();
    for s in summaries {
        let Some((_, x)) = s.settings.iter().find(|(k, _)| k == x_key) else {
            continue;
        };
        let x: f64 = x.parse().map_err(|_| {
            Error::invalid(format!(
                "sweep figure over `{x_key}`: value `{x}` is not a number"
            ))
        })?;
        let label: Vec<String> = s
            .settings
            .iter()
            .filter(|(k, _)| k != x_key)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let label = if label.is_empty() {
            "all".to_string()
        } else {
            label.join(", ")
        };
        let (m, sd) = if time { s.wall_seconds } else { s.validation };
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, pts)) => pts.push((x, m, sd)),
            None => out.push((label, vec![(x, m, sd)])),
        }
    }
    for (_, pts) in &mut out {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_product_names_and_summary() {
        let grid: toml::Table =
            toml::from_str("fusion = ['literal', 'off']\nseed = [1, 2]\nl = 10").unwrap();
        let combos = expand(&grid).unwrap();
        // 100 × 100 × 100 runs: refused before any is built.
        let huge: toml::Table = toml::from_str(&format!(
            "a = {v:?}\nb = {v:?}\nc = {v:?}",
            v = (0..100).collect::<Vec<i32>>()
        ))
        .unwrap();
        assert!(expand(&huge).is_none());
        assert_eq!(combos.len(), 4);
        assert_eq!(run_name(&combos[0]), "fusion=literal,l=10,seed=1");
        assert_eq!(run_name(&combos[3]), "fusion=off,l=10,seed=2");
        let rec = |f: &str, seed: &str, v: f64| Record {
            settings: vec![("fusion".into(), f.into()), ("seed".into(), seed.into())],
            validation: v,
            test: Some(v - 1.0),
            wall_seconds: 2.0,
            parameters: 7,
        };
        let s = summarise(&[
            rec("literal", "1", 80.0),
            rec("literal", "2", 90.0),
            rec("off", "1", 70.0),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].runs, 2);
        assert!((s[0].validation.0 - 85.0).abs() < 1e-12);
        // Sample standard deviation of {80, 90}: sqrt(50).
        assert!((s[0].validation.1 - 50f64.sqrt()).abs() < 1e-12);
        assert_eq!(s[1].validation, (70.0, 0.0));
        let md = markdown(&s, "accuracy");
        assert!(
            md.contains("| literal | 2 | 85.00 ± 7.07 | 84.00 ± 7.07 | 7 | 2.0 |"),
            "{md}"
        );
        assert!(
            md.starts_with("| fusion | runs | validation accuracy |"),
            "{md}"
        );
    }

    #[test]
    fn shards_cover_the_grid_exactly_once() {
        for count in 1..=7 {
            for len in 0..20 {
                for position in 0..len {
                    let holders = (1..=count)
                        .filter(|&index| Shard { index, count }.holds(position))
                        .count();
                    assert_eq!(holders, 1, "run {position} of {len}, {count} shards");
                }
            }
        }
        assert_eq!(Shard::parse("2/8").unwrap(), Shard { index: 2, count: 8 });
        for bad in ["0/8", "9/8", "1/0", "2", "a/b", "-1/4"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_over_a_numeric_key() {
        let sum = |l: &str, m: &str, v: f64| Summary {
            settings: vec![("l".into(), l.into()), ("method".into(), m.into())],
            runs: 1,
            validation: (v, 0.5),
            test: None,
            wall_seconds: (v / 10.0, 0.0),
            parameters: 1,
        };
        let s = [
            sum("20", "pt", 1.0),
            sum("10", "pt", 2.0),
            sum("10", "ept", 3.0),
        ];
        let series = series_over(&s, "l", false).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].0, "method=pt");
        assert_eq!(series[0].1, vec![(10.0, 2.0, 0.5), (20.0, 1.0, 0.5)]);
        let bad = [sum("short", "pt", 1.0)];
        assert!(series_over(&bad, "l", false).is_err());
    }
}
