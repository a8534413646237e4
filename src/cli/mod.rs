//! Command definitions and dispatch. Each command lives in its own file.

mod bench;
mod budget;
mod checks;
mod eval;
mod export;
mod generate;
mod inspect;
mod predict;
mod pretrain;
mod quantize;
mod sweep;
mod tasks;
mod train;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ept::Result;
use ept::io::bnb4::QuantizeSpec;
use ept::io::hub::resolve_model;
use ept::io::weights::FloatType;
use ept::model::Backbone;

#[derive(Parser)]
#[command(
    name = "ept",
    version,
    about = "Efficient prompt tuning (EPT, DePT, PT) for frozen Hugging Face models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a prompt (PT, DePT or EPT) on a task and keep the best checkpoint.
    Train(Box<train::TrainArgs>),
    /// Token-weighted cross-entropy of a model (and prompt) on a data set.
    Eval(eval::EvalArgs),
    /// Write a trained prompt in PEFT's, DePT's or our materialised format.
    Export(export::ExportArgs),
    /// Predictions of a model with a prompt, as JSON lines.
    Predict(predict::PredictArgs),
    /// Greedy continuation of a text.
    Generate(generate::GenerateArgs),
    /// The tasks, their metrics and split sizes; `tasks show` prints formatted rows.
    Tasks(tasks::TasksArgs),
    /// Solve the parameter budget l·d = s·d + (m+d)·r.
    Budget(budget::BudgetArgs),
    /// Architecture, sizes, dtype, parameter count and files of a model.
    Inspect(inspect::InspectArgs),
    /// Run a grid of training settings (resumably) and summarise it: Markdown table, figures.
    Sweep(sweep::SweepArgs),
    /// Pretrain a model organism: a small T5 (or `--arch llama`: a Llama) on the synthetic language, every weight trained.
    Pretrain(pretrain::PretrainArgs),
    /// Write a checkpoint in 4 bits (NF4/FP4, double quantization) as transformers + bitsandbytes do.
    Quantize(quantize::QuantizeArgs),
    /// Time a prompt-tuning step (forward, backward, prompt gradients) on a random-weight T5.
    Bench(bench::BenchArgs),
}

/// Where the frozen model comes from.
#[derive(Args, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelArgs {
    /// A folder as `save_pretrained` writes it, or a hub id found in the local Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// Branch, tag or commit of a hub id in the cache.
    #[arg(long)]
    pub revision: Option<String>,
    /// Precision: f32 (default; bf16 checkpoints are upcast), bf16 or bf16-mixed
    /// (bf16 dense layers with f32 sums; AMX tiles or AVX512-BF16 where the CPU has them).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize the dense layers to 4 bits as they load, as transformers + bitsandbytes
    /// (`load_in_4bit`, double quantization): nf4 or fp4. A 4-bit folder needs no flag.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    pub fn load(&self, train: bool) -> Result<Backbone> {
        let dir = resolve_model(&self.model, self.revision.as_deref())?;
        let dtype = self.dtype.as_deref().map(FloatType::parse).transpose()?;
        let quantize = self
            .quantize
            .as_deref()
            .map(QuantizeSpec::parse)
            .transpose()?;
        // Flags are checked before the device is opened, the device before the weights are read.
        let device = self.device.open(train)?;
        Backbone::load_quantized(&dir, dtype, quantize, &device)
    }
}

/// Where the model runs.
#[derive(Args, Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeviceArgs {
    /// auto (a CUDA GPU when this ept has the `cuda` feature and the driver reports one,
    /// else the CPU), cpu, cuda[:N], vulkan[:N], or cubecl-cpu (the GPU kernels compiled for
    /// this CPU, for testing). `ept inspect --devices` lists them [default: auto].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl DeviceArgs {
    /// The device (with autodiff for training); logs which one it is.
    pub fn open(&self, train: bool) -> Result<burn::tensor::Device> {
        ept::runtime::DeviceChoice::from_flag(self.device.as_deref())?.open(train)
    }
}

pub fn run() -> Result<()> {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| exit_on(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_on(e));
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Budget(a) => budget::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tasks(a) => tasks::run(a),
        Command::Export(a) => export::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Train(a) => {
            let sub = matches
                .subcommand_matches("train")
                .expect("the train subcommand");
            train::run(*a, sub)
        }
        Command::Pretrain(a) => pretrain::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Sweep(a) => sweep::run(a),
    }
}

/// Help and version go to stdout with success, as clap prints them; a usage
/// error is one line, `ept: ...`, exit 2, like every other error.
fn exit_on(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("ept: {}", checks::one_line(&e));
            std::process::exit(2)
        }
    }
}
