//! `ept inspect`: what a checkpoint is.

use clap::Args;
use ept::Result;

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
