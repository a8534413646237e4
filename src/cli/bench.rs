//! `ept bench`: time a prompt-tuning step on a random-weight T5 (no files needed).

use clap::Args;
use ept::Result;
use ept::bench::{BenchMethod, BenchSettings, Shape};
use ept::io::weights::FloatType;

#[derive(Args)]
pub struct BenchArgs {
    /// Architecture: t5-small (6+6 layers, d 512), t5-base (12+12, d 768),
    /// t5-v1_1-small (8+8, d 512, gated-GELU), t5-3b, t5-11b (24+24, d 1024), or a decoder: smollm2-135m
    /// (30 layers, d 576), tinyllama-1.1b (22, d 2048), llama2-7b (32, d 4096).
    #[arg(long, default_value = "t5-small")]
    shape: String,
    /// Examples per batch (default 16 for t5-small, 8 for t5-base and smollm2-135m,
    /// 4 for tinyllama-1.1b, 2 for llama2-7b).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    batch: Option<usize>,
    /// Input length in tokens, also EPT's m (default 128 for t5-small, 256 for t5-base).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    len: Option<usize>,
    /// pt (l rows), ept (s rows + A·B + fusion + experts) or none (gradient w.r.t. the input embeddings).
    #[arg(long, default_value = "pt")]
    method: String,
    /// PT's prompt length; EPT's budget l.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 100)]
    l: usize,
    /// EPT's short prompt length.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 60)]
    s: usize,
    /// EPT's rank.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 30)]
    r: usize,
    /// EPT's number of experts (spaces).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 4)]
    num_experts: usize,
    /// Measured steps.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 5)]
    steps: usize,
    /// Unmeasured steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Seed of the random weights, prompt and batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Precision of the frozen model: f32, bf16 (every tensor) or bf16-mixed
    /// (bf16 dense layers with f32 sums, on AMX tiles or AVX512-BF16 where
    /// the CPU has them; EPT_BF16_KERNEL=amx|avx512bf16|portable picks one).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The dense layers in 4 bits, quantized as they are drawn (nf4 or fp4, double
    /// quantization; T5's wo kept as transformers keeps it): t5-3b, t5-11b, llama2-7b.
    #[arg(long)]
    quantize: Option<String>,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Task level: one training epoch of an sst2- or rte-shaped workload
    /// (lengths drawn like the real task's; batches of 32 unless --batch; m = --len, default 256).
    #[arg(long)]
    task: Option<String>,
    /// Task level: examples in the epoch.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 512)]
    examples: usize,
    /// Task level: pad every input to this length (DePT's pipeline); 0 = length buckets,
    /// each batch padded to its longest input (`ept train`'s way).
    #[arg(long, default_value_t = 0)]
    pad_to: usize,
    /// Task level: the prompt's learning rate (constant).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate, default_value_t = 0.3)]
    lr: f64,
    /// Task level: write the model, examples and initial prompt here, for
    /// `scripts/bench_pytorch.py --task-dir`.
    #[arg(long)]
    export: Option<std::path::PathBuf>,
    /// Task level: instead of a training epoch, score the examples once, by
    /// `generate` (greedy, DePT's way) or `rank` (label ranking, 2 options).
    #[arg(long)]
    eval: Option<String>,
    /// Task level, --eval generate: the most tokens generated per example.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 20)]
    max_new_tokens: usize,
    /// Burn's plain tensor operations instead of the fused CPU kernels
    /// (RMS norm, attention softmax): to measure what the kernels buy.
    #[arg(long)]
    plain_ops: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// The allocator setting `main` put in force (`ept::runtime::tune_allocator`).
fn allocator_setting() -> String {
    let base = if ept::runtime::allocator_untouched() {
        "system allocator, defaults (EPT_DEFAULT_MALLOC)".to_string()
    } else if cfg!(all(target_os = "linux", target_env = "gnu")) {
        "glibc malloc, mallopt mmap_threshold=32MiB trim_threshold=INT_MAX (ept::runtime::tune_allocator)"
            .to_string()
    } else {
        "system allocator, untuned".to_string()
    };
    match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{base}; GLIBC_TUNABLES={t}"),
        _ => base,
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let shape = Shape::parse(&args.shape)?;
    let mut settings = BenchSettings::new(shape, BenchMethod::parse(&args.method)?);
    let (batch, len) = shape.default_batch_len();
    settings.batch = args.batch.unwrap_or(batch);
    settings.len = args.len.unwrap_or(len);
    settings.l = args.l;
    settings.s = args.s;
    settings.r = args.r;
    settings.num_experts = args.num_experts;
    settings.steps = args.steps;
    settings.warmup = args.warmup;
    settings.seed = args.seed;
    settings.dtype = FloatType::parse(&args.dtype)?;
    settings.quantize = match &args.quantize {
        Some(q) => Some(ept::io::bnb4::QuantizeSpec::parse(q)?.quant_type),
        None => None,
    };
    settings.device = args.device.open(true)?;
    ept::kernels::set_enabled(!args.plain_ops);
    if let Some(task) = &args.task {
        settings.batch = args.batch.unwrap_or(32);
        settings.len = args.len.unwrap_or(256);
        let task = ept::bench::task::TaskBenchSettings {
            step: settings,
            task: ept::bench::task::TaskShape::parse(task)?,
            examples: args.examples,
            pad_to: args.pad_to,
            lr: args.lr,
            export: args.export.clone(),
        };
        if let Some(scoring) = &args.eval {
            let eval = ept::bench::eval::EvalBenchSettings {
                task,
                scoring: ept::evaluate::Scoring::parse(scoring)?,
                max_new_tokens: args.max_new_tokens,
            };
            let report = ept::bench::eval::run(&eval)?;
            print_report(&report, args.json, || report.table());
            return Ok(());
        }
        let report = ept::bench::task::run(&task)?;
        print_report(&report, args.json, || report.table());
        return Ok(());
    }
    let report = ept::bench::run(&settings, &allocator_setting())?;
    print_report(&report, args.json, || report.table());
    Ok(())
}

/// One JSON object (`--json`) or the human-readable table.
fn print_report<R: serde::Serialize>(report: &R, json: bool, table: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("a bench report serialises")
        );
    } else {
        print!("{}", table());
    }
}
