//! `ept bench`: time a prompt-tuning step on a random-weight T5 (no files needed).

use clap::Args;
use ept::Result;
use ept::bench::{BenchMethod, BenchSettings, Shape};
use ept::io::weights::FloatType;

#[derive(Args)]
pub struct BenchArgs {
    /// Architecture: t5-small (6+6 layers, d 512), t5-base (12+12, d 768) or
    /// t5-v1_1-small (8+8, d 512, gated-GELU).
    #[arg(long, default_value = "t5-small")]
    shape: String,
    /// Examples per batch (default 16 for t5-small, 8 for t5-base).
    #[arg(long)]
    batch: Option<usize>,
    /// Input length in tokens, also EPT's m (default 128 for t5-small, 256 for t5-base).
    #[arg(long)]
    len: Option<usize>,
    /// pt (l rows), ept (s rows + A·B + fusion + experts) or none (gradient w.r.t. the input embeddings).
    #[arg(long, default_value = "pt")]
    method: String,
    /// PT's prompt length; EPT's budget l.
    #[arg(long, default_value_t = 100)]
    l: usize,
    /// EPT's short prompt length.
    #[arg(long, default_value_t = 60)]
    s: usize,
    /// EPT's rank.
    #[arg(long, default_value_t = 30)]
    r: usize,
    /// EPT's number of experts (spaces).
    #[arg(long, default_value_t = 4)]
    num_experts: usize,
    /// Measured steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Unmeasured steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Seed of the random weights, prompt and batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute dtype of the frozen model: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Burn's plain tensor operations instead of the fused CPU kernels
    /// (RMS norm, attention softmax): to measure what the kernels buy.
    #[arg(long)]
    plain_ops: bool,
}

/// The allocator setting `main` put in force (`ept::runtime::tune_allocator`).
fn allocator_setting() -> String {
    let base = if cfg!(all(target_os = "linux", target_env = "gnu")) {
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
    ept::model::fused::set_enabled(!args.plain_ops);
    let report = ept::bench::run(&settings, &allocator_setting())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a bench report serialises")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
