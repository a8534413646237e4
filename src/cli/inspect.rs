//! `ept inspect`: what a checkpoint is.

use clap::Args;
use ept::Result;

use super::ModelArgs;

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let b = args.model.load(false)?;
    let m = &b.model;
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
