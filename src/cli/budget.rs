//! `ept budget`: solve `l·d = s·d + (m+d)·r` and print the parameter counts.

use clap::Args;
use ept::Result;
use ept::prompt::budget::{Budget, auxiliary_params};

#[derive(Args)]
pub struct BudgetArgs {
    /// Long prompt length.
    #[arg(long, allow_negative_numbers = true)]
    l: Option<i64>,
    /// Short prompt length.
    #[arg(long, allow_negative_numbers = true)]
    s: Option<i64>,
    /// Rank of A·B.
    #[arg(long, allow_negative_numbers = true)]
    r: Option<i64>,
    /// Maximum input length (rows of A).
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 256)]
    m: usize,
    /// Model width; or give --model to read it from config.json.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    d: Option<usize>,
    /// A model whose d_model is used.
    #[arg(long)]
    model: Option<String>,
    /// Number of spaces (experts), for the auxiliary count.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 4)]
    num_experts: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: BudgetArgs) -> Result<()> {
    let d = match (args.d, &args.model) {
        (Some(d), _) => d,
        (None, Some(model)) => {
            let dir = ept::io::hub::resolve_model(model, None)?;
            ept::model::ModelShape::from_dir(&dir)?.hidden_size
        }
        (None, None) => 768,
    };
    let b = Budget::solve(args.l, args.s, args.r, args.m, d)?;
    let (experts, gate) = auxiliary_params(d, args.m, args.num_experts);
    if args.json {
        let v = serde_json::json!({
            "l": b.l, "s": b.s, "r": b.r, "m": b.m, "d": b.d,
            "prompt": b.prompt_params(), "a": b.a_params(), "b": b.b_params(),
            "core": b.core_params(), "target": b.target_params(),
            "experts": experts, "gate": gate,
        });
        println!("{v}");
    } else {
        println!(
            "l = {}, s = {}, r = {} (m = {}, d = {})",
            b.l, b.s, b.r, b.m, b.d
        );
        println!("P_s     {:>10}  (s·d)", b.prompt_params());
        println!("A       {:>10}  (m·r)", b.a_params());
        println!("B       {:>10}  (r·d)", b.b_params());
        println!(
            "core    {:>10}  (budget l·d = {})",
            b.core_params(),
            b.target_params()
        );
        println!(
            "discarded after training: experts {} ({} × (d·m + m + m·d + d)), gate {}",
            experts, args.num_experts, gate
        );
    }
    Ok(())
}
