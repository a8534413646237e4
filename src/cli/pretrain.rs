//! `ept pretrain`: train a model organism (a small T5, or with `--arch llama`
//! a small Llama; every weight trainable) on the synthetic language, from
//! scratch, offline and seeded.

use std::path::PathBuf;

use clap::Args;
use ept::Result;
use ept::error::Error;
use ept::train::pretrain::{Architecture, LlamaShape, PretrainConfig, T5Shape, pretrain};

#[derive(Args)]
pub struct PretrainArgs {
    /// Folder to write the model into (tokenizer.json, config.json, model.safetensors, pretrain.json).
    #[arg(long)]
    out: PathBuf,
    /// Replace the model files in an existing --out folder.
    #[arg(long)]
    overwrite: bool,
    /// The architecture: t5 (default; the shipped `organism`) or llama (`organism-llama`).
    #[arg(long)]
    arch: Option<String>,
    /// Seed of the corpus, tokenizer text, initialisation, mixture and masks.
    #[arg(long)]
    seed: Option<u64>,
    /// Optimiser steps.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<u64>)]
    steps: Option<u64>,
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    batch_size: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::rate)]
    lr: Option<f64>,
    /// Model width (d_model, hidden_size); T5's d_ff is twice it and Llama's
    /// intermediate_size three times, a head's width is it over the heads.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    d_model: Option<usize>,
    /// Layers (T5: encoder and decoder layers each).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    layers: Option<usize>,
    /// Share of each batch drawn from the supervised auxiliary tasks (0 to 1).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::fraction)]
    supervised_fraction: Option<f64>,
    /// Score the held-out documents and auxiliary tasks every N steps.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<u64>)]
    eval_every: Option<u64>,
    /// Log every N steps to stderr (0: only the evaluations).
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// One JSON line per step on stdout instead of the log.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(args: PretrainArgs) -> Result<()> {
    match args.arch.as_deref().unwrap_or(T5Shape::NAME) {
        T5Shape::NAME => run_with(PretrainConfig::<T5Shape>::default(), args),
        LlamaShape::NAME => run_with(PretrainConfig::<LlamaShape>::default(), args),
        other => Err(Error::invalid(format!(
            "--arch {other}: unknown architecture; expected {} or {}",
            T5Shape::NAME,
            LlamaShape::NAME
        ))),
    }
}

/// Pretrains `A`'s default recipe with the flags' changes.
fn run_with<A: Architecture>(mut cfg: PretrainConfig<A>, args: PretrainArgs) -> Result<()> {
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.steps {
        cfg.steps = v;
    }
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = args.lr {
        cfg.lr = v;
    }
    if let Some(d) = args.d_model {
        let heads = cfg.model.heads();
        if d == 0 || d % heads != 0 {
            return Err(Error::invalid(format!(
                "--d-model {d}: must be a positive multiple of the {heads} heads"
            )));
        }
        cfg.model.set_width(d);
    }
    if let Some(v) = args.supervised_fraction {
        cfg.supervised_fraction = v;
    }
    if let Some(v) = args.eval_every {
        cfg.eval_every = v;
    }
    if let Some(n) = args.layers {
        cfg.model.set_layers(n);
    }
    if args.out.join("model.safetensors").exists() && !args.overwrite {
        return Err(Error::invalid(format!(
            "{}: already holds a model; pass --overwrite to replace it",
            args.out.display()
        )));
    }
    let device = args.device.open(true)?;
    let json = args.json;
    let every = args.log_every;
    let result = pretrain(&cfg, &args.out, &device, &mut |log| {
        if json {
            println!("{}", serde_json::to_string(log).expect("logs serialise"));
        } else if let Some(e) = log.eval_loss {
            let exact: Vec<String> = log
                .eval_exact_match
                .iter()
                .flatten()
                .map(|(task, v)| format!("{task} {v:.1}"))
                .collect();
            eprintln!(
                "step {:>5}  loss {:.4}  held-out {:.4}  exact match: {}  lr {:.2e}  {:.0} tok/s",
                log.step,
                log.loss,
                e,
                exact.join(", "),
                log.lr,
                log.tokens_per_s
            );
        } else if every > 0 && log.step % every == 0 {
            eprintln!(
                "step {:>5}  loss {:.4}  lr {:.2e}  |g| {:.2}  {:.0} tok/s",
                log.step, log.loss, log.lr, log.grad_norm, log.tokens_per_s
            );
        }
    })?;
    if !json {
        println!(
            "pretrained {} parameters (vocab {}) in {:.0} s: held-out {} loss {:.3} -> {:.3}; written to {}",
            result.parameters,
            result.vocab_size,
            result.wall_seconds,
            A::HELD_OUT,
            result.first_eval_loss,
            result.final_eval_loss,
            args.out.display()
        );
    }
    Ok(())
}
