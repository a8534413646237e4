//! `ept export`: a trained prompt in PEFT's, DePT's or our own materialised format.

use std::path::PathBuf;

use clap::Args;
use ept::prompt::checkpoint;
use ept::prompt::export::{Format, export};
use ept::{Error, Result};

#[derive(Args)]
pub struct ExportArgs {
    /// The prompt checkpoint (e.g. runs/NAME/best/prompt.safetensors).
    checkpoint: PathBuf,
    /// peft (P_new only), dept (lossless) or native (materialised).
    #[arg(long)]
    format: String,
    /// The output folder.
    #[arg(long)]
    out: PathBuf,
    /// The backbone (for PEFT's adapter config); default: the model recorded in the checkpoint.
    #[arg(long)]
    model: Option<String>,
    /// DePT's lora_alpha (it scales A·B by alpha/√r at run time).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate, default_value_t = 8.0)]
    lora_alpha: f64,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let format = Format::parse(&args.format)?;
    let device = ept::runtime::cpu_device(false);
    let (prompt, meta) = checkpoint::load(&args.checkpoint, &device)?;
    let model = args.model.clone().unwrap_or_else(|| meta.model.clone());
    if model.is_empty() {
        return Err(Error::invalid(format!(
            "{}: the checkpoint records no model: pass --model",
            args.checkpoint.display()
        )));
    }
    let dir = ept::io::hub::resolve_model(&model, None)?;
    let config = ept::model::ModelShape::from_dir(&dir)?;
    checkpoint::check_fits(&args.checkpoint, &prompt, config.hidden_size)?;
    let report = export(&prompt, &meta, &config, format, &args.out, args.lora_alpha)?;
    if let Some(w) = &report.warning {
        eprintln!("ept: warning: {w}");
    }
    for f in &report.files {
        println!("{}", f.display());
    }
    Ok(())
}
