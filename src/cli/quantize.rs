//! `ept quantize`: a checkpoint folder in 4 bits, as transformers + bitsandbytes write it.

use std::path::PathBuf;

use clap::Args;
use ept::io::bnb4::{QuantConfig, QuantizeSpec};
use ept::io::hub::resolve_model;
use ept::io::quantize::write_quantized;
use ept::{Error, Result};

#[derive(Args)]
pub struct QuantizeArgs {
    /// A folder as `save_pretrained` writes it, or a hub id found in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Branch, tag or commit of a hub id in the cache.
    #[arg(long)]
    revision: Option<String>,
    /// The output folder (loads in transformers with bitsandbytes installed, and in ept).
    #[arg(long)]
    out: PathBuf,
    /// nf4 or fp4.
    #[arg(long, default_value = "nf4")]
    quant_type: String,
    /// Keep the per-block scales in f32 (bitsandbytes' `bnb_4bit_use_double_quant=False`).
    #[arg(long)]
    no_double_quant: bool,
    /// Modules to leave unquantized, as `llm_int8_skip_modules` (repeatable).
    #[arg(long)]
    skip: Vec<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let mut spec = QuantizeSpec::parse(&args.quant_type)?;
    spec.double = !args.no_double_quant;
    spec.skip = args.skip.clone();
    let dir = resolve_model(&args.model, args.revision.as_deref())?;
    if args.out.exists() && !args.overwrite {
        return Err(Error::invalid(format!(
            "{}: exists; pass --overwrite to replace it",
            args.out.display()
        )));
    }
    let (config_path, config) = ept::model::read_config(&dir)?;
    if QuantConfig::from_config(&config, &config_path)?.is_some() {
        return Err(Error::field(
            &config_path,
            "quantization_config",
            "the model is already quantized; quantize an f32/bf16/f16 checkpoint",
        ));
    }
    // Checked as a model before anything is written.
    ept::model::ModelShape::from_dir(&dir)?;
    let (is_dense, arch_skip) = ept::model::quantizable(&config);
    let spec = spec.skipping(arch_skip);
    let report = write_quantized(&dir, &config, &spec, is_dense, &args.out)?;
    eprintln!(
        "ept: {} dense weights in {} + double quant {} ({} parameters, {:.4} bytes each); {} tensors kept as stored ({} bytes)",
        report.quantized,
        spec.quant_type.name(),
        if spec.double { "on" } else { "off" },
        report.quantized_parameters,
        report.quantized_bytes as f64 / report.quantized_parameters.max(1) as f64,
        report.kept,
        report.kept_bytes
    );
    for f in &report.files {
        println!("{}", f.display());
    }
    Ok(())
}
