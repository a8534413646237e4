//! `ept pretrain`: train the model organism (a small T5, every weight trainable)
//! on the synthetic language, from scratch, offline and seeded.

use std::path::PathBuf;

use clap::Args;
use ept::Result;
use ept::error::Error;
use ept::train::pretrain::{PretrainConfig, pretrain};

#[derive(Args)]
pub struct PretrainArgs {
    /// Folder to write the model into (tokenizer.json, config.json, model.safetensors, pretrain.json).
    #[arg(long)]
    out: PathBuf,
    /// Replace the model files in an existing --out folder.
    #[arg(long)]
    overwrite: bool,
    /// Seed of the corpus, tokenizer text, initialisation, mixture and masks.
    #[arg(long)]
    seed: Option<u64>,
    /// Optimiser steps.
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Model width (d_model); d_ff is twice it, d_kv is d_model / heads.
    #[arg(long)]
    d_model: Option<usize>,
    /// Encoder and decoder layers each.
    #[arg(long)]
    layers: Option<usize>,
    /// Share of each batch drawn from the supervised auxiliary tasks (0 to 1).
    #[arg(long)]
    supervised_fraction: Option<f64>,
    /// Score the held-out documents and auxiliary tasks every N steps.
    #[arg(long)]
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
    let mut cfg = PretrainConfig::default();
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
        cfg.d_model = d;
        cfg.d_ff = 2 * d;
        cfg.d_kv = d / cfg.num_heads;
        if d % cfg.num_heads != 0 {
            return Err(Error::invalid(format!(
                "--d-model {d}: must be a multiple of the {} heads",
                cfg.num_heads
            )));
        }
    }
    if let Some(v) = args.supervised_fraction {
        cfg.supervised_fraction = v;
    }
    if let Some(v) = args.eval_every {
        cfg.eval_every = v;
    }
    if let Some(n) = args.layers {
        cfg.num_layers = n;
        cfg.num_decoder_layers = n;
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
            "pretrained {} parameters (vocab {}) in {:.0} s: held-out span-corruption loss {:.3} -> {:.3}; written to {}",
            result.parameters,
            result.vocab_size,
            result.wall_seconds,
            result.first_eval_loss,
            result.final_eval_loss,
            args.out.display()
        );
    }
    Ok(())
}
