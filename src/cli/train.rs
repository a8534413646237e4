//! `ept train`: train a prompt on a task or on JSONL files, writing a run folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use ept::data::readers::Caches;
use ept::data::splits::Split;
use ept::data::{Purpose, Task, load_split, load_user_file};
use ept::evaluate::Scoring;
use ept::prompt::{FusionReading, Method, PromptConfig, PromptInit};
use ept::train::lock::RunLock;
use ept::train::presets::{closest, preset};
use ept::train::run::{RunData, RunResult, TrainConfig, run_dir, train_on};
use ept::train::schedule::Schedule;
use ept::{Error, Result};

use super::ModelArgs;

#[derive(Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainArgs {
    /// A TOML file of settings: every flag is a key (`lr_prompt = 0.3` or `lr-prompt = 0.3`);
    /// flags on the command line override it. The resolved settings are saved as run.toml.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (all other flags are read from it).
    #[arg(long, conflicts_with_all = ["task", "train_file"])]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// A folder as `save_pretrained` writes it, a hub id found in the local Hugging Face cache,
    /// or `organism`: the built-in pretrained tiny T5 [default: organism].
    #[arg(long)]
    model: Option<String>,
    /// Branch, tag or commit of a hub id in the cache.
    #[arg(long)]
    revision: Option<String>,
    /// Precision of the frozen model: f32 (default), bf16 (every tensor) or bf16-mixed (bf16
    /// dense layers with f32 sums, as PyTorch's bf16 autocast; AMX tiles or AVX512-BF16 where
    /// the CPU has them). Prompts and optimizer state always stay in f32.
    #[arg(long)]
    dtype: Option<String>,
    /// Quantize the frozen model's dense layers to 4 bits as they load (nf4 or fp4, with
    /// double quantization, as QLoRA); a 4-bit folder written by transformers needs no flag.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    /// auto (a CUDA GPU when this ept has the `cuda` feature and one is present, else the CPU),
    /// cpu, cuda[:N], vulkan[:N] or cubecl-cpu; `ept inspect --devices` lists them [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// Data parallel: every batch shared out equally among these devices (`cuda:0,cuda:1`;
    /// `cpu,cpu` runs the same code on the CPU), each with its own copy of the frozen model;
    /// the first holds the prompt and the optimiser. The results are the single device's.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// A GLUE/SuperGLUE/SQuAD task (its splits and metrics; data from --data or the HF caches),
    /// or a built-in toy task of the organism: toy-sst2, toy-mnli, toy-qqp, toy-stsb.
    #[arg(long)]
    task: Option<String>,
    /// The task's data folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Your own task: JSONL files of {"source","target"} (with --validation-file, optional --test-file).
    #[arg(long)]
    train_file: Option<PathBuf>,
    #[arg(long)]
    validation_file: Option<PathBuf>,
    #[arg(long)]
    test_file: Option<PathBuf>,
    /// Few-shot: k training examples per class (k in all for regression and QA), seeded by --seed.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    few_shot: Option<usize>,
    /// Use only the first N training examples.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    train_limit: Option<usize>,
    /// Use only the first N validation / test examples.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    eval_limit: Option<usize>,
    /// The paper's settings for a task: dept/TASK or ept/TASK (flags override them).
    #[arg(long)]
    preset: Option<String>,
    /// Start from this prompt checkpoint (few-shot transfer from a source task).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// pt, dept or ept [default: ept].
    #[arg(long)]
    method: Option<String>,
    /// Long prompt length l (the budget).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 100)]
    l: usize,
    /// Short prompt length s (default 60, or solved from --r).
    #[arg(long)]
    s: Option<usize>,
    /// Rank r (default: solved from the budget).
    #[arg(long)]
    r: Option<usize>,
    /// Maximum input length m (rows of A·B) [default: 256].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    m: Option<usize>,
    /// Number of spaces N_e.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 4)]
    num_experts: usize,
    /// Fusion reading: off, literal, prompt-softmax, cross-attention.
    #[arg(long, default_value = "cross-attention")]
    fusion: String,
    /// EPT ablation: no decomposition (no A, B).
    #[arg(long)]
    no_decomposition: bool,
    /// EPT ablation: no multi-space projection.
    #[arg(long)]
    no_multi_space: bool,
    /// Prompt init: vocab, random, or text:SOME WORDS.
    #[arg(long, default_value = "vocab")]
    init: String,
    /// Learning rate of the prompt [default: 0.3].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate)]
    lr_prompt: Option<f64>,
    /// Learning rate of A and B [default: 1e-4].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate)]
    lr_low_rank: Option<f64>,
    /// Learning rate of the experts and gate (default: the prompt's).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate)]
    lr_aux: Option<f64>,
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::non_negative, default_value_t = 0.0)]
    weight_decay: f64,
    /// linear, constant or cosine (after warm-up).
    #[arg(long, default_value = "linear")]
    schedule: String,
    #[arg(long, default_value_t = 500)]
    warmup_steps: u64,
    /// Training steps [default: 30000].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<u64>)]
    max_steps: Option<u64>,
    /// Examples per batch [default: 16].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    batch_size: Option<usize>,
    /// Batches per optimiser step (gradient accumulation).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 1)]
    #[serde(default = "one")]
    grad_accum: usize,
    /// Token budget per batch instead of a fixed example count.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    max_batch_tokens: Option<usize>,
    /// Gradient-norm clipping (0 = off).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::non_negative, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 1000)]
    eval_every: u64,
    /// Pad every input to m, as the paper's runs do.
    #[arg(long)]
    pad_to_max: bool,
    /// Write the resumable checkpoint every N steps too (0: at validations only).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Validation predictions: generate or rank.
    #[arg(long, default_value = "generate")]
    scoring: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run name: the folder runs/NAME.
    #[arg(long)]
    name: Option<String>,
    /// Parent folder of runs (default ./runs).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Replace an existing run folder.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON line per step instead of a progress line.
    #[arg(long)]
    json: bool,
    /// Print only the final results.
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
}

fn load_data(args: &TrainArgs) -> Result<RunData> {
    let limit = |mut v: Vec<ept::data::Example>, n: Option<usize>| {
        if let Some(n) = n {
            v.truncate(n);
        }
        v
    };
    let Some(name) = &args.task else {
        return match (&args.train_file, &args.validation_file) {
            (Some(t), Some(v)) => Ok(RunData {
                task: None,
                train: limit(load_user_file(t)?, args.train_limit),
                validation: limit(load_user_file(v)?, args.eval_limit),
                test: match &args.test_file {
                    Some(f) => limit(load_user_file(f)?, args.eval_limit),
                    None => Vec::new(),
                },
            }),
            _ => Err(Error::invalid(
                "give --task TASK [--data DIR], or --train-file and --validation-file",
            )),
        };
    };
    let (task, [mut train, validation, test]) = match ept::organism::builtin_task(name)? {
        Some(found) => found,
        None => {
            let task = Task::parse(name)?;
            let caches = Caches::from_env();
            let dir = args.data.as_deref();
            let get =
                |s: Split, p: Purpose| load_split(task, s, dir, &caches, p).map(|l| l.examples);
            let splits = [
                get(Split::Train, Purpose::Train)?,
                get(Split::Validation, Purpose::Eval)?,
                get(Split::Test, Purpose::Eval)?,
            ];
            (task, splits)
        }
    };
    if let Some(k) = args.few_shot {
        let shot = ept::data::fewshot::sample(task, &train, k, args.seed)?;
        for (label, n) in &shot.short_classes {
            log::warn!("few-shot: class \"{label}\" has only {n} training examples");
        }
        train = shot.indices.iter().map(|&i| train[i].clone()).collect();
    }
    Ok(RunData {
        task: Some(task),
        train: limit(train, args.train_limit),
        validation: limit(validation, args.eval_limit),
        test: limit(test, args.eval_limit),
    })
}

/// Fills the flags a preset sets and the user left out.
fn apply_preset(mut args: TrainArgs) -> Result<TrainArgs> {
    let Some(name) = &args.preset else {
        return Ok(args);
    };
    let p = preset(name)?;
    if args.task.is_none() && args.train_file.is_none() {
        args.task = Some(p.task.to_string());
    }
    args.method.get_or_insert_with(|| p.method.to_string());
    args.lr_prompt.get_or_insert(p.lr_prompt);
    args.lr_low_rank.get_or_insert(p.lr_low_rank);
    if args.s.is_none() && args.r.is_none() {
        args.s = Some(p.s);
        args.r = Some(p.r);
    }
    args.max_steps.get_or_insert(p.max_steps);
    args.batch_size.get_or_insert(p.batch_size);
    args.m.get_or_insert(p.m);
    Ok(args)
}

fn prompt_config(args: &TrainArgs) -> Result<PromptConfig> {
    let method = Method::parse(args.method.as_deref().unwrap_or("ept"))?;
    let mut p = PromptConfig::new(method);
    p.l = args.l;
    p.s = args.s;
    p.r = args.r;
    p.m = args.m.unwrap_or(256);
    p.num_experts = args.num_experts;
    if method == Method::Ept {
        p.fusion = FusionReading::parse(&args.fusion)?;
        p.decomposition = !args.no_decomposition;
        p.multi_space = !args.no_multi_space;
    }
    p.init = match args.init.as_str() {
        "vocab" => PromptInit::Vocab,
        "random" => PromptInit::Random,
        t if t.starts_with("text:") => PromptInit::Text(t["text:".len()..].to_string()),
        other => {
            return Err(Error::invalid(format!(
                "unknown --init `{other}`: expected vocab, random or text:WORDS"
            )));
        }
    };
    p.seed = args.seed;
    Ok(p)
}

/// The flags of the run in `dir`, as it saved them.
fn saved_args(dir: &std::path::Path) -> Result<TrainArgs> {
    let path = dir.join("args.json");
    let value: serde_json::Value =
        ept::error::parse_json(&path, &ept::error::read_to_string(&path)?)?;
    // A hand-edited args.json obeys the flags' rules too.
    if let Some(fields) = value.as_object() {
        let cmd = flags();
        for (key, v) in fields {
            if v.is_number() {
                super::checks::check_setting(&cmd, &path, key, &v.to_string())?;
            }
        }
    }
    ept::error::from_json_value(&path, value)
}

/// The flags of `ept train`, with their value parsers.
fn flags() -> clap::Command {
    TrainArgs::augment_args(clap::Command::new("train"))
}

fn one() -> usize {
    1
}

/// Applies `--config FILE`: each key sets its flag unless the command line gave it.
fn apply_config_file(args: TrainArgs, matches: &ArgMatches) -> Result<TrainArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let table = read_toml(&path)?;
    apply_table(args, table, &path, Some(matches))
}

/// Reads a TOML file into a table; a syntax error names the file and line.
pub fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = ept::error::read_to_string(path)?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        Error::Toml {
            path: path.to_path_buf(),
            line,
            msg: e.message().to_string(),
        }
    })
}

/// The settings of `ept train` with nothing given: every flag at its default.
pub fn defaults() -> TrainArgs {
    let matches = flags()
        .try_get_matches_from(["train"])
        .expect("no flags parse");
    TrainArgs::from_arg_matches(&matches).expect("defaults are valid")
}

/// Sets the flags named by `table`'s keys (`lr_prompt` or `lr-prompt`), except
/// those given on the command line (`matches`). Unknown keys, values of the
/// wrong type and numbers outside their flag's range are errors naming `origin`,
/// the key and, for a typo, the closest key.
pub fn apply_table(
    args: TrainArgs,
    table: toml::Table,
    origin: &Path,
    matches: Option<&ArgMatches>,
) -> Result<TrainArgs> {
    let mut value = serde_json::to_value(&args).expect("flags serialise");
    let cmd = flags();
    let known: Vec<String> = value
        .as_object()
        .expect("flags serialise to an object")
        .keys()
        .cloned()
        .collect();
    for (key, v) in table {
        let field = key.replace('-', "_");
        if !known.contains(&field) {
            let hint = closest(&field, known.iter().map(String::as_str))
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            return Err(Error::field(origin, key, format!("unknown setting{hint}")));
        }
        if matches.and_then(|m| m.value_source(&field)) == Some(ValueSource::CommandLine) {
            continue;
        }
        if v.is_integer() || v.is_float() {
            // As TOML writes it: `nan` and `inf` stay visible (JSON would make them null).
            super::checks::check_setting(&cmd, origin, &key, &v.to_string())?;
        }
        let json = serde_json::to_value(&v).expect("TOML values serialise");
        let mut next = value.clone();
        next[&field] = json;
        serde_json::from_value::<TrainArgs>(next.clone())
            .map_err(|e| Error::field(origin, &key, format!("{e} (the value given is `{v}`)")))?;
        value = next;
    }
    let mut merged: TrainArgs = serde_json::from_value(value).expect("checked key by key");
    (merged.config, merged.quiet, merged.resume) = (args.config, args.quiet, args.resume);
    Ok(merged)
}

/// Sets where a run goes and how it reports (for `ept sweep`).
impl TrainArgs {
    pub fn place(&mut self, runs_dir: &Path, name: String, quiet: bool, overwrite: bool) {
        self.runs_dir = Some(runs_dir.to_path_buf());
        self.name = Some(name);
        self.quiet = quiet;
        self.overwrite = overwrite;
    }
}

pub fn run(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let resume = args.resume.clone();
    let args = match &resume {
        Some(dir) => {
            let saved = saved_args(dir)?;
            TrainArgs {
                json: args.json,
                quiet: args.quiet,
                // A run may continue on another machine's devices, and on
                // another number of them (the state is the same).
                ..if args.device.is_some() || !args.devices.is_empty() {
                    TrainArgs {
                        device: args.device.clone(),
                        devices: args.devices.clone(),
                        ..saved
                    }
                } else {
                    saved
                }
            }
        }
        None => apply_config_file(args, matches)?,
    };
    execute(args, resume).map(|_| ())
}

/// Trains with resolved settings (`resume`: the run folder to continue);
/// returns the run folder and its results.
pub fn execute(args: TrainArgs, resume: Option<PathBuf>) -> Result<(PathBuf, RunResult)> {
    let args = apply_preset(args)?;
    let prompt = prompt_config(&args)?;
    let mut cfg = TrainConfig::new(prompt);
    cfg.lr_prompt = args.lr_prompt.unwrap_or(0.3);
    cfg.lr_low_rank = args.lr_low_rank.unwrap_or(1e-4);
    cfg.lr_aux = args.lr_aux;
    cfg.weight_decay = args.weight_decay;
    cfg.schedule = Schedule::parse(&args.schedule)?;
    cfg.warmup_steps = args.warmup_steps;
    cfg.max_steps = args.max_steps.unwrap_or(30_000);
    cfg.batch_size = args.batch_size.unwrap_or(16);
    cfg.grad_accum = args.grad_accum;
    cfg.init_from = args.init_from.clone();
    cfg.max_batch_tokens = args.max_batch_tokens;
    cfg.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    cfg.eval_every = args.eval_every;
    cfg.pad_to_max = args.pad_to_max;
    cfg.scoring = Scoring::parse(&args.scoring)?;
    cfg.save_every = args.save_every;
    cfg.seed = args.seed;
    cfg.validate()?;

    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.task.as_deref().unwrap_or("custom"),
            args.method.as_deref().unwrap_or("ept")
        )
    });
    let dir = match &resume {
        Some(d) => d.clone(),
        None => run_dir(&name, args.runs_dir.as_deref()),
    };
    let exists_error = |dir: &Path| {
        Error::invalid(format!(
            "{}: the run folder exists; pass --overwrite to replace it, or --name for another",
            dir.display()
        ))
    };
    if resume.is_none() && dir.exists() && !args.overwrite {
        return Err(exists_error(&dir));
    }
    // One process per run folder (see `ept::train::lock`): a folder that exists is
    // locked before anything else, so a second process refuses without touching it.
    let mut lock = if dir.is_dir() && (resume.is_some() || args.overwrite) {
        Some(RunLock::acquire(&dir)?)
    } else {
        None
    };
    let data = load_data(&args)?;
    let model = ModelArgs {
        model: args
            .model
            .clone()
            .unwrap_or_else(|| ept::io::hub::ORGANISM.to_string()),
        revision: args.revision.clone(),
        dtype: args.dtype.clone(),
        quantize: args.quantize.clone(),
        device: super::DeviceArgs {
            device: args.device.clone().or(args.devices.first().cloned()),
        },
    };
    // One copy of the frozen model per device (data parallel), the first
    // holding the prompt; a device is opened before any weight is read.
    let mut replicas = vec![model.load(true)?];
    for device in args.devices.iter().skip(1) {
        let mut on = model.clone();
        on.device.device = Some(device.clone());
        replicas.push(on.load(true)?);
    }
    let backbone = &replicas[0];
    // Everything that can be refused is refused before the run folder is written.
    data.check()?;
    if resume.is_none()
        && let Some(path) = &cfg.init_from
    {
        ept::train::run::load_init(path, &cfg, backbone)?;
    }
    if resume.is_none() {
        match &lock {
            Some(held) => held.empty_folder()?,
            None => {
                // A new folder: created here (not if another process made it
                // meanwhile, unless --overwrite), then locked before any write.
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && args.overwrite => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(exists_error(&dir));
                    }
                    Err(e) => return Err(Error::io(&dir, e)),
                }
                let held = lock.insert(RunLock::acquire(&dir)?);
                if args.overwrite {
                    held.empty_folder()?;
                }
            }
        }
        let json = serde_json::to_string_pretty(&args).expect("flags serialise");
        ept::error::write_atomic(dir.join("args.json"), json.as_bytes())?;
        let resolved = toml::to_string(&args)
            .map_err(|e| Error::invalid(format!("cannot write run.toml: {e}")))?;
        ept::error::write_atomic(dir.join("run.toml"), resolved.as_bytes())?;
    }
    let (json, quiet) = (args.json, args.quiet);
    let total = cfg.max_steps;
    // A bar on a terminal; log lines (RUST_LOG, default `info`) elsewhere, e.g. in CI logs.
    let bar = (!json && !quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("a valid template"),
        );
        bar
    });
    let mut on_step = |log: &ept::train::run::StepLog| {
        let val = log
            .validation
            .as_ref()
            .map(|v| format!("validation {:.2} (loss {:.4})", v.selection, v.loss));
        let line = format!(
            "step {:>6}/{total}  loss {:.4}  lr {:.3e}  |g| {:.3}  {:.0} tok/s",
            log.step, log.loss, log.lr_prompt, log.grad_norm, log.tokens_per_s
        );
        if json {
            println!("{}", serde_json::to_string(log).expect("serialisable"));
        } else if quiet {
        } else if let Some(bar) = &bar {
            bar.set_position(log.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                log.loss, log.lr_prompt, log.tokens_per_s
            ));
            if let Some(v) = &val {
                bar.println(format!("step {:>6}/{total}  {v}", log.step));
            }
        } else if let Some(v) = &val {
            log::info!("{line}  {v}");
        } else if log.step == 1 || log.step.is_multiple_of(10) {
            log::info!("{line}");
        } else {
            log::debug!("{line}");
        }
    };
    let result = train_on(
        &cfg,
        &replicas,
        &data,
        &dir,
        &model.model,
        resume.is_some(),
        &mut on_step,
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = serde_json::json!({"run": dir, "results": result});
    if json {
        println!("{summary}");
    } else {
        println!("run folder      {}", dir.display());
        println!("best step       {}", result.best_step);
        println!("validation      {:?}", result.validation.metrics);
        if let Some(t) = &result.test {
            println!("test            {:?}", t.metrics);
        }
        println!(
            "parameters      prompt {} + low-rank {} (+ auxiliary {}, discarded)",
            result.params_prompt, result.params_low_rank, result.params_auxiliary
        );
        println!(
            "time            {:.1} s ({:.2} steps/s)",
            result.wall_seconds, result.steps_per_second
        );
    }
    // The lock is released, and its file deleted, only now: every write is done.
    drop(lock);
    Ok((dir, result))
}
