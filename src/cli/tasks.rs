//! `ept tasks`: the tasks, their metrics and sizes; `ept tasks show`: formatted rows.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ept::Result;
use ept::data::describe;
use ept::data::readers::Caches;
use ept::data::splits::{Split, expected_sizes};
use ept::data::{Purpose, Task, load_split};

#[derive(Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    action: Option<TasksAction>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TasksAction {
    /// Formatted rows of one task's split, as the model sees them.
    Show(ShowArgs),
}

#[derive(Args)]
struct ShowArgs {
    /// Task name (rte, mnli, superglue-wsc.fixed, SST-2, ...).
    task: String,
    /// A folder holding the task's files (hub snapshot, datasets cache, TSV/JSONL);
    /// without it, the Hugging Face caches are searched.
    #[arg(long)]
    data: Option<PathBuf>,
    /// train, validation or test (DePT's splits).
    #[arg(long, default_value = "validation")]
    split: String,
    /// Print at most this many rows.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    limit: Option<usize>,
    /// One {"source","target"} JSON object per line, nothing else.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TasksArgs) -> Result<()> {
    match args.action {
        None => list(args.json),
        Some(TasksAction::Show(s)) => show(s),
    }
}

fn list(json: bool) -> Result<()> {
    if json {
        for task in Task::ALL {
            let [train, valid, test] = expected_sizes(task);
            let metrics: Vec<&str> = task.metrics().iter().map(|m| m.key()).collect();
            let v = serde_json::json!({
                "task": task.name(), "name": task.display_name(), "metrics": metrics,
                "selection": task.selection_metric().key(),
                "sizes": {"train": train, "validation": valid, "test": test},
            });
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{:<10} {:<10} {:<28} {:>9} {:>7} {:>7}",
        "task", "name", "metrics (selection first)", "train", "valid", "test"
    );
    for task in Task::ALL {
        let [train, valid, test] = expected_sizes(task);
        let sel = task.selection_metric().key();
        let mut metrics = vec![sel];
        metrics.extend(task.metrics().iter().map(|m| m.key()).filter(|k| *k != sel));
        println!(
            "{:<10} {:<10} {:<28} {:>9} {:>7} {:>7}",
            task.name(),
            task.display_name(),
            metrics.join(","),
            train,
            valid,
            test
        );
    }
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let split: Split = args.split.parse()?;
    if let Some((task, examples)) = ept::organism::builtin_split(&args.task, split)? {
        if !args.json {
            print!("{}", describe(task));
            println!(
                "split `{}`: {} rows of the built-in toy task `{}` (generated, seed {})",
                split.name(),
                examples.len(),
                args.task,
                ept::organism::tasks::BUILTIN_SEED
            );
        }
        print_rows(&examples, args.limit, args.json);
        return Ok(());
    }
    let task = Task::parse(&args.task)?;
    let loaded = load_split(
        task,
        split,
        args.data.as_deref(),
        &Caches::from_env(),
        Purpose::Eval,
    )?;
    if args.json {
        print_rows(&loaded.examples, args.limit, true);
        return Ok(());
    }
    print!("{}", describe(task));
    println!(
        "split `{}`: {} rows from `{}` ({} rows) in {}",
        split.name(),
        loaded.examples.len(),
        loaded.source_split,
        loaded.source_rows,
        loaded
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_rows(&loaded.examples, args.limit, false);
    Ok(())
}

/// The first `limit` rows, as JSON lines or numbered source/target pairs.
fn print_rows(examples: &[ept::data::Example], limit: Option<usize>, json: bool) {
    for (i, e) in examples
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .enumerate()
    {
        if json {
            println!(
                "{}",
                serde_json::json!({"source": e.source, "target": e.target})
            );
        } else {
            println!("[{i}] source: {}", e.source);
            println!("    target: {}", e.target);
        }
    }
}
