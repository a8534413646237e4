//! Data parallelism over several devices, the portable way: each device
//! holds a replica of the frozen model, takes an equal share of every batch,
//! and sends its prompt gradients to the first device, where they are summed
//! and the one optimiser step is taken.
//!
//! Why the sum gives the single-device step: a batch's loss is the sum of its
//! target tokens' losses over the batch's token count (`n_tokens`), so each
//! share divides its own sum by the whole batch's count and the shares'
//! gradients add up to the batch's gradient — the global batch, the schedule
//! and the results stay those of one device, up to the order of f32 sums.
//! The prompt is a few hundred thousand numbers, so moving its gradients
//! through the host costs little beside a step; burn 0.22's NCCL all-reduce
//! (`burn::tensor::distributed`, CUDA only, one process) would do the same
//! sum on the devices.

use burn::tensor::Tensor;

use crate::evaluate::batch_loss_sums;
use crate::model::Backbone;
use crate::model::batch::TokenizedExample;
use crate::prompt::SoftPrompt;

/// The loss of `rows` (token losses summed, divided by `n_tokens`) and the
/// gradients of `prompt`'s parameters of that loss times `scale`, on the
/// first replica's device. With one replica, the plain step; with more, one
/// thread per replica on `rows` cut into equal contiguous shares, each on a
/// copy of the prompt on its device; the gradients are summed in replica
/// order (deterministic).
pub fn loss_and_gradients(
    replicas: &[Backbone],
    prompt: &SoftPrompt,
    rows: &[TokenizedExample],
    n_tokens: usize,
    pad_to: usize,
    scale: f64,
) -> (f64, Vec<Option<Tensor<2>>>) {
    let step = |backbone: &Backbone, prompt: &SoftPrompt, rows: &[TokenizedExample]| {
        let loss =
            batch_loss_sums(backbone.model.as_ref(), prompt, rows, pad_to).sum() / n_tokens as f64;
        let value = crate::tensors::to_f32_vec(loss.clone())[0] as f64;
        let grads = (loss * scale).backward();
        let g: Vec<Option<Tensor<2>>> = prompt
            .params()
            .iter()
            .map(|(_, _, t)| t.grad(&grads))
            .collect();
        (value, g)
    };
    if replicas.len() <= 1 || rows.len() <= 1 {
        return step(&replicas[0], prompt, rows);
    }
    let home = replicas[0].model.device().clone();
    let home = &home;
    let share = rows.len().div_ceil(replicas.len());
    let shares: Vec<(f64, Vec<Option<Tensor<2>>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = replicas
            .iter()
            .zip(rows.chunks(share))
            .map(|(replica, part)| {
                let copy = replica_prompt(prompt, replica.model.device());
                scope.spawn(move || {
                    let (value, g) = step(replica, &copy, part);
                    let g = g
                        .into_iter()
                        .map(|t| t.map(|t| t.to_device(home)))
                        .collect();
                    (value, g)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a replica's step does not panic"))
            .collect()
    });
    let mut value = 0.0;
    let mut sum: Vec<Option<Tensor<2>>> = Vec::new();
    for (v, g) in shares {
        value += v;
        sum = add_gradients(sum, g);
    }
    (value, sum)
}

/// `a + b` parameter by parameter (`a` empty: `b`); a parameter without a
/// gradient on one side takes the other's.
pub fn add_gradients(
    a: Vec<Option<Tensor<2>>>,
    b: Vec<Option<Tensor<2>>>,
) -> Vec<Option<Tensor<2>>> {
    if a.is_empty() {
        return b;
    }
    a.into_iter()
        .zip(b)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        })
        .collect()
}

/// A trainable copy of `prompt` on `device`: fresh leaves, so each replica's
/// backward pass reaches its own copy (a move within one device would
/// otherwise record an operation and leave no leaf to hold the gradient).
fn replica_prompt(prompt: &SoftPrompt, device: &burn::tensor::Device) -> SoftPrompt {
    let mut copy = prompt.clone();
    for t in copy.params_mut() {
        *t = t.clone().to_device(device).detach().require_grad();
    }
    copy
}
