//! `ept inspect`: what a checkpoint is.

use clap::Args;
use ept::Result;
use ept::model::memory::StepShape;

use super::{DeviceArgs, ModelArgs};

#[derive(Args)]
pub struct InspectArgs {
    /// A folder as `save_pretrained` writes it, or a hub id found in the local Hugging Face cache.
    #[arg(long, required_unless_present = "devices")]
    model: Option<String>,
    /// Branch, tag or commit of a hub id in the cache.
    #[arg(long)]
    revision: Option<String>,
    /// Precision to load in: f32 (default), bf16 or bf16-mixed.
    #[arg(long)]
    dtype: Option<String>,
    /// Quantize the dense layers to 4 bits as they load (nf4 or fp4) and report the memory.
    #[arg(long)]
    quantize: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    /// List the compute devices `--device` can name: what this ept can use, and what another
    /// build could (GPUs the driver reports when the `cuda` feature is missing).
    #[arg(long, conflicts_with = "model")]
    devices: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Estimate the memory of a training step of this many examples (with --len).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    batch: Option<usize>,
    /// Input tokens per example for the step estimate [default: 256].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    len: Option<usize>,
    /// Prompt rows for the step estimate (PT's l, EPT's s) [default: 100].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    prompt_len: Option<usize>,
    /// Target tokens per example for the step estimate [default: 8].
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    target_len: Option<usize>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    if args.devices {
        let rows = ept::runtime::available_devices();
        if args.json {
            println!("{}", serde_json::json!({ "devices": rows }));
        } else {
            for r in rows {
                let mark = if r.usable { "yes" } else { "no" };
                println!("{:<12} {mark:<4} {}", r.name, r.detail);
            }
        }
        return Ok(());
    }
    let model = ModelArgs {
        model: args
            .model
            .clone()
            .expect("clap requires --model without --devices"),
        revision: args.revision.clone(),
        dtype: args.dtype.clone(),
        quantize: args.quantize.clone(),
        device: args.device.clone(),
    };
    let b = model.load(false)?;
    let m = &b.model;
    let memory = m.weight_memory();
    let mut info = serde_json::Map::new();
    info.insert("folder".into(), serde_json::json!(b.dir));
    info.insert("architecture".into(), m.architecture().into());
    for (k, v) in m.describe() {
        info.insert(k.into(), v);
    }
    for (k, v) in [
        ("tokenizer_vocab_size", b.tokenizer.vocab_size().into()),
        ("tied_head", m.tied_head().into()),
        ("storage_dtype", b.storage_dtype.clone().into()),
        ("compute_dtype", m.dtype().name().into()),
        ("parameters", m.num_parameters().into()),
        (
            "quantization",
            memory.quantization.clone().unwrap_or("none".into()).into(),
        ),
        ("quantized_parameters", memory.quantized_parameters.into()),
        (
            "quantized_bytes_per_parameter",
            serde_json::json!((memory.quantized_bytes_per_parameter() * 1e4).round() / 1e4),
        ),
        ("unquantized_parameters", memory.other_parameters.into()),
        (
            "weight_bytes",
            (memory.quantized_bytes + memory.other_bytes).into(),
        ),
        ("files", serde_json::json!(b.files)),
    ] {
        info.insert(k.into(), v);
    }
    if args.batch.is_some() || args.len.is_some() {
        let shape = StepShape {
            batch: args.batch.unwrap_or(8),
            prompt_len: args.prompt_len.unwrap_or(100),
            source_len: args.len.unwrap_or(256),
            target_len: args.target_len.unwrap_or(8),
        };
        // The prompt's own numbers: l·d (PT); EPT's are fewer at the same budget.
        let step = m.step_memory(&shape, shape.prompt_len * m.hidden_size());
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0));
        let text = format!(
            "{} = weights {} + activations {} + decoded 4-bit layer {} + prompt and AdamW {} \
             (batch {} × {} tokens, prompt {}, target {}; an estimate, docs/BENCHMARKS.md)",
            mib(step.total()),
            mib(step.weights),
            mib(step.activations),
            mib(step.decoded_layer),
            mib(step.trainable),
            shape.batch,
            shape.source_len,
            shape.prompt_len,
            shape.target_len,
        );
        let value = if args.json {
            serde_json::json!({"shape": shape, "bytes": step, "total_bytes": step.total()})
        } else {
            text.into()
        };
        info.insert("training_step_memory".into(), value);
    }
    let info = serde_json::Value::Object(info);
    if args.json {
        println!("{info}");
    } else {
        for (k, v) in info.as_object().expect("object") {
            println!("{k:>32}  {}", v.to_string().trim_matches('"'));
        }
    }
    Ok(())
}
