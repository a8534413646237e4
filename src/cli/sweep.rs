//! `ept sweep`: run a grid of `ept train` settings, resumably, and summarise
//! them as a Markdown table (mean ± std over seeds) and the paper's figures.
//!
//! Runs go one after another, or one per device at once (`--devices`); a
//! grid can be cut into disjoint slices for several machines (`--shard i/N`)
//! whose finished runs `--collect` summarises.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;
use ept::error::{Error, write_atomic};
use ept::train::plots::{PanelSpec, plot_heatmap, plot_panels};
use ept::train::run::RunResult;
use ept::train::sweep::{
    Combo, Curve, MAX_RUNS, Record, Shard, Summary, expand, markdown, run_name, series_over, show,
    summarise,
};
use ept::{Result, prompt::checkpoint};

use super::train::{TrainArgs, apply_table, defaults, execute, read_toml};

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep file: `name = "..."`, a `[base]` table of train settings shared by every run and
    /// a `[grid]` table of lists (the runs are their product), e.g. `seed = [1, 2, 3]`.
    config: PathBuf,
    /// Parent folder of sweeps (default ./runs); the sweep goes to RUNS_DIR/NAME.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Print each run's step lines too.
    #[arg(long)]
    verbose: bool,
    /// The device every run trains on (overrides `device` in `[base]`); see `ept train --device`.
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Run grid points at once, one per device: `cuda:0,cuda:1,...` (a device may be named
    /// twice to run two runs on it).
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Vec<String>,
    /// Run only the I-th of N disjoint slices of the grid (I from 1): every N-th run from the
    /// I-th. N machines, or the jobs of a cluster array, cover the sweep; `--collect` then
    /// writes the summary. Without it, all runs.
    #[arg(long, value_parser = |s: &str| Shard::parse(s).map_err(|e| e.to_string()))]
    shard: Option<Shard>,
    /// Train nothing: summarise the runs the shards finished (results.md, figures). Every run
    /// of the grid must be finished.
    #[arg(long, conflicts_with_all = ["shard", "devices"])]
    collect: bool,
}

/// The keys a sweep file may hold at its top level.
const TOP_KEYS: [&str; 3] = ["name", "base", "grid"];

pub fn run(args: SweepArgs) -> Result<()> {
    let mut file = read_toml(&args.config)?;
    for key in file.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            return Err(Error::field(
                &args.config,
                key,
                "unknown key: a sweep file holds `name`, `[base]` and `[grid]`",
            ));
        }
    }
    let table = |file: &mut toml::Table, key: &str| -> Result<toml::Table> {
        match file.remove(key) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t),
            Some(_) => Err(Error::field(&args.config, key, "expected a table")),
        }
    };
    let base = table(&mut file, "base")?;
    let grid = table(&mut file, "grid")?;
    let name = match file.remove("name") {
        Some(toml::Value::String(s)) => s,
        None => args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sweep".into()),
        Some(_) => return Err(Error::field(&args.config, "name", "expected a string")),
    };
    let dir = args
        .runs_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs"))
        .join(&name);
    let combos = expand(&grid).ok_or_else(|| {
        Error::field(
            &args.config,
            "grid",
            format!("its lists multiply to more than {MAX_RUNS} runs"),
        )
    })?;
    // Check every run's settings before the first one trains.
    let mut planned = Vec::with_capacity(combos.len());
    for combo in &combos {
        let args0 = apply_table(defaults(), base.clone(), &args.config, None)?;
        let table: toml::Table = combo.iter().cloned().collect();
        let mut run_args = apply_table(args0, table, &args.config, None)?;
        if args.device.device.is_some() {
            run_args.device = args.device.device.clone();
        }
        let run = run_name(combo);
        // A run folder without results is an interrupted run: resumed if it has
        // a checkpoint, else started again.
        run_args.place(&dir, run.clone(), !args.verbose, true);
        planned.push(Planned {
            combo,
            run,
            args: run_args,
        });
    }
    if args.collect {
        let missing: Vec<&str> = planned
            .iter()
            .filter(|p| !dir.join(&p.run).join("results.json").is_file())
            .map(|p| p.run.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "{}: {} of {} runs are not finished ({}); run the shards that hold them",
                dir.display(),
                missing.len(),
                planned.len(),
                missing.join(" "),
            )));
        }
    } else {
        let mine: Vec<(usize, &Planned)> = planned
            .iter()
            .enumerate()
            .filter(|(i, _)| args.shard.is_none_or(|s| s.holds(*i)))
            .collect();
        let devices: Vec<Option<String>> = if args.devices.is_empty() {
            vec![None]
        } else {
            args.devices.iter().cloned().map(Some).collect()
        };
        run_all(&mine, &devices, &dir, planned.len())?;
        if let Some(s) = args.shard {
            eprintln!(
                "shard {}/{}: its {} runs are finished; `ept sweep {} --collect` summarises the \
                 sweep once every shard is",
                s.index,
                s.count,
                mine.len(),
                args.config.display()
            );
            return Ok(());
        }
    }
    let mut records = Vec::with_capacity(planned.len());
    let mut metrics: Vec<String> = Vec::new();
    for p in &planned {
        let run_dir = dir.join(&p.run);
        let result: RunResult = read_json(&run_dir.join("results.json"))?;
        if let Some(m) = saved_task(&run_dir)
            && !metrics.contains(&m)
        {
            metrics.push(m);
        }
        records.push(Record {
            settings: p.combo.iter().map(|(k, v)| (k.clone(), show(v))).collect(),
            validation: result.validation.selection,
            test: result.test.as_ref().map(|t| t.selection),
            wall_seconds: result.wall_seconds,
            parameters: result.params_prompt + result.params_low_rank,
        });
    }
    // One metric name when every run's task selects by the same one.
    let metric = match metrics.as_slice() {
        [one] => one.clone(),
        _ => "score".to_string(),
    };
    let summaries = summarise(&records);
    let table = markdown(&summaries, &metric);
    write_atomic(
        dir.join("results.md"),
        format!("# Sweep `{name}`\n\n{table}").as_bytes(),
    )?;
    let json = serde_json::json!({"records": records, "summary": summaries});
    write_atomic(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)
            .expect("serialisable")
            .as_bytes(),
    )?;
    let figures = figures(&dir, &grid, &summaries, &combos)?;
    print!("{table}");
    println!("written: {}", dir.join("results.md").display());
    for f in figures {
        println!("written: {}", f.display());
    }
    Ok(())
}

/// One run of the grid, its settings checked.
struct Planned<'a> {
    combo: &'a Combo,
    run: String,
    args: TrainArgs,
}

/// Trains the `runs` (position in the grid, plan) not finished yet: one at a
/// time on each of `devices` (`None`: the run's own setting), taking the next
/// from a shared queue. A failed run stops the others from starting new ones;
/// the first error is returned.
fn run_all(
    runs: &[(usize, &Planned)],
    devices: &[Option<String>],
    dir: &Path,
    total: usize,
) -> Result<()> {
    let queue = Mutex::new(runs.iter());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let worker = |device: &Option<String>| loop {
        if failure.lock().expect("no panics hold it").is_some() {
            return;
        }
        let Some(&(i, p)) = queue.lock().expect("no panics hold it").next() else {
            return;
        };
        let mut run_args = p.args.clone();
        if device.is_some() {
            run_args.device = device.clone();
        }
        let run_dir = dir.join(&p.run);
        let at = match device {
            Some(d) => format!(" on {d}"),
            None => String::new(),
        };
        let outcome = if run_dir.join("results.json").is_file() {
            eprintln!("[{}/{total}] {}: done before, skipped", i + 1, p.run);
            Ok(())
        } else if run_dir.join("last").join("state.json").is_file() {
            eprintln!("[{}/{total}] {}: resuming{at}", i + 1, p.run);
            execute(run_args, Some(run_dir)).map(drop)
        } else {
            eprintln!("[{}/{total}] {}{at}", i + 1, p.run);
            execute(run_args, None).map(drop)
        };
        if let Err(e) = outcome {
            failure.lock().expect("no panics hold it").get_or_insert(e);
        }
    };
    std::thread::scope(|scope| {
        for device in devices {
            scope.spawn(|| worker(device));
        }
    });
    match failure.into_inner().expect("no panics hold it") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = ept::error::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        line: Some(e.line()),
        msg: e.to_string(),
    })
}

/// The name of the selection metric of a run's task, from its saved settings.
fn saved_task(run_dir: &Path) -> Option<String> {
    let args: serde_json::Value = read_json(&run_dir.join("args.json")).ok()?;
    let task = args.get("task")?.as_str()?;
    let task = ept::organism::ToyTask::parse(task)
        .and_then(|t| t.glue())
        .or_else(|| ept::data::Task::parse(task).ok())?;
    Some(task.selection_metric().key().to_string())
}

/// The paper-style figures the grid allows: score (and time) vs prompt length
/// `l` (Figure 4b), score vs number of spaces (Figure 5), and the gate's
/// weights of the last EPT run with multi-space projection (Figure 8).
fn figures(
    dir: &Path,
    grid: &toml::Table,
    summaries: &[Summary],
    combos: &[Vec<(String, toml::Value)>],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    type Line = (String, Vec<(f64, f64)>);
    let points = |s: Vec<Curve>| -> Vec<Line> {
        s.into_iter()
            .map(|(n, p)| (n, p.into_iter().map(|(x, m, _)| (x, m)).collect()))
            .collect()
    };
    if grid.contains_key("l") {
        let stem = dir.join("fig4b-prompt-length");
        plot_panels(
            &stem,
            "Score and training time vs prompt length (Figure 4b)",
            &[
                PanelSpec {
                    x_label: "prompt length l".into(),
                    y_label: "validation score".into(),
                    series: points(series_over(summaries, "l", false)?),
                },
                PanelSpec {
                    x_label: "prompt length l".into(),
                    y_label: "training time (s)".into(),
                    series: points(series_over(summaries, "l", true)?),
                },
            ],
        )?;
        written.push(stem.with_extension("png"));
    }
    if grid.contains_key("num_experts") || grid.contains_key("num-experts") {
        let key = if grid.contains_key("num_experts") {
            "num_experts"
        } else {
            "num-experts"
        };
        let stem = dir.join("fig5-spaces");
        plot_panels(
            &stem,
            "Score vs number of spaces N_e (Figure 5)",
            &[PanelSpec {
                x_label: "number of spaces N_e".into(),
                y_label: "validation score".into(),
                series: points(series_over(summaries, key, false)?),
            }],
        )?;
        written.push(stem.with_extension("png"));
    }
    // Reading the gate for a figure: the CPU is enough.
    let device = ept::runtime::cpu_device(false);
    // The last run with a gate: grids usually list N_e in ascending order.
    for combo in combos.iter().rev() {
        let best = dir
            .join(run_name(combo))
            .join("best")
            .join("prompt.safetensors");
        if !best.is_file() {
            continue;
        }
        let (prompt, _) = checkpoint::load(&best, &device)?;
        if let Some(gate) = prompt.gate_weights() {
            let stem = dir.join("fig8-gate");
            let values: Vec<Vec<f64>> = gate
                .iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect();
            plot_heatmap(
                &stem,
                &format!(
                    "Gate weights per prompt token and space (Figure 8): {}",
                    run_name(combo)
                ),
                "space",
                "prompt token",
                &values,
            )?;
            written.push(stem.with_extension("png"));
            break;
        }
    }
    Ok(written)
}
