//! A model's weights as a named list, for full-parameter training
//! (`ept pretrain`) and saving: [`T5::weights`](super::T5::weights) and
//! [`Llama::weights`](super::Llama::weights) list every tensor under its
//! Hugging Face checkpoint name, borrowed ([`WeightRef`]) or mutably
//! ([`WeightMut`]). The optimiser sees every weight as a matrix (`[1, n]`
//! for a vector).

use burn::tensor::{Gradients, Tensor, TensorData};

use std::sync::Arc;

use crate::io::bnb4::Quant4;

/// A borrowed weight of either rank, or a dense layer's 4-bit weight.
pub enum WeightRef<'a> {
    D1(&'a Tensor<1>),
    D2(&'a Tensor<2>),
    /// `[out, in]` in 4 bits (frozen: no gradient, never trained).
    Quant4(&'a Quant4),
}

impl<'a> WeightRef<'a> {
    /// A dense layer's weight ([`Linear`]'s fields): its `[in, out]` tensor,
    /// or its 4-bit form when it has one.
    pub fn linear(weight: &'a Tensor<2>, quant: &'a Option<Arc<Quant4>>) -> Self {
        match quant {
            Some(q) => WeightRef::Quant4(q),
            None => WeightRef::D2(weight),
        }
    }

    pub fn numel(&self) -> usize {
        match self {
            WeightRef::D1(t) => t.dims()[0],
            WeightRef::D2(t) => t.dims().iter().product(),
            WeightRef::Quant4(q) => q.numel(),
        }
    }

    /// The values off the autodiff graph, a vector as `[1, n]`; a 4-bit
    /// weight decoded, `[in, out]` as dense layers hold it, on the CPU.
    pub fn inner_2d(&self) -> Tensor<2> {
        match self {
            WeightRef::D1(t) => (*t).clone().inner().unsqueeze::<2>(),
            WeightRef::D2(t) => (*t).clone().inner(),
            WeightRef::Quant4(q) => {
                let data = TensorData::new(q.dequantize(), [q.shape[0], q.shape[1]]);
                Tensor::<2>::from_data(data, &crate::runtime::cpu_device(false)).transpose()
            }
        }
    }

    /// Its gradient in `grads`, a vector's as `[1, n]` (none for a 4-bit weight).
    pub fn grad_2d(&self, grads: &Gradients) -> Option<Tensor<2>> {
        match self {
            WeightRef::D1(t) => t.grad(grads).map(|g| g.unsqueeze::<2>()),
            WeightRef::D2(t) => t.grad(grads),
            WeightRef::Quant4(_) => None,
        }
    }
}

/// Where a model's weight memory goes: the 4-bit dense layers and the rest.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WeightMemory {
    /// Parameters held in 4 bits, and the bytes they take (indices and scales).
    pub quantized_parameters: usize,
    pub quantized_bytes: usize,
    /// Every other parameter, and its bytes in the dtype it is held in.
    pub other_parameters: usize,
    pub other_bytes: usize,
    /// The 4-bit code and whether the scales are double-quantized, when any layer is 4-bit.
    pub quantization: Option<String>,
}

impl WeightMemory {
    /// The memory of the weights `weights` list.
    pub fn of(weights: &[(String, WeightRef<'_>)]) -> Self {
        let mut m = WeightMemory::default();
        for (_, w) in weights {
            match w {
                WeightRef::Quant4(q) => {
                    m.quantized_parameters += q.numel();
                    m.quantized_bytes += q.bytes();
                    let double = matches!(q.absmax, crate::io::bnb4::Absmax::Nested { .. });
                    m.quantization.get_or_insert_with(|| {
                        format!(
                            "{}{}",
                            q.quant_type.name(),
                            if double { " + double quantization" } else { "" }
                        )
                    });
                }
                WeightRef::D1(t) => {
                    m.other_parameters += w.numel();
                    m.other_bytes += w.numel() * t.dtype().size();
                }
                WeightRef::D2(t) => {
                    m.other_parameters += w.numel();
                    m.other_bytes += w.numel() * t.dtype().size();
                }
            }
        }
        m
    }

    /// Bytes per quantized parameter (0 when none is).
    pub fn quantized_bytes_per_parameter(&self) -> f64 {
        self.quantized_bytes as f64 / self.quantized_parameters.max(1) as f64
    }
}

/// A mutably borrowed weight of either rank.
pub enum WeightMut<'a> {
    D1(&'a mut Tensor<1>),
    D2(&'a mut Tensor<2>),
}

impl<'a> WeightMut<'a> {
    /// A dense layer's `[in, out]` tensor (a 4-bit layer's is empty: moving
    /// it between devices or graphs is all these lists are used for then).
    pub fn linear(weight: &'a mut Tensor<2>, _quant: &Option<Arc<Quant4>>) -> Self {
        WeightMut::D2(weight)
    }

    /// Cut from the autodiff graph.
    pub fn detach(self) {
        match self {
            WeightMut::D1(t) => *t = t.clone().detach(),
            WeightMut::D2(t) => *t = t.clone().detach(),
        }
    }

    /// The same values on the inner (non-autodiff) device.
    pub fn without_autodiff(self) {
        match self {
            WeightMut::D1(t) => *t = t.clone().without_autodiff(),
            WeightMut::D2(t) => *t = t.clone().without_autodiff(),
        }
    }

    /// Tracked: a backward pass computes its gradient.
    pub fn require_grad(self) {
        match self {
            WeightMut::D1(t) => *t = t.clone().require_grad(),
            WeightMut::D2(t) => *t = t.clone().require_grad(),
        }
    }

    /// Replaces the weight with `new` (inner-device values, a vector as
    /// `[1, n]`), a tracked leaf on the autodiff device. A vector is
    /// reshaped before it is tracked: tracked first, it would be the output
    /// of a reshape, whose gradient a backward pass does not keep.
    pub fn set_tracked(self, new: Tensor<2>) {
        match self {
            WeightMut::D1(t) => *t = new.squeeze::<1>().autodiff().require_grad(),
            WeightMut::D2(t) => *t = new.autodiff().require_grad(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every replaced weight, vectors included, gets a gradient in the next backward pass.
    #[test]
    fn replaced_weights_keep_their_gradients() {
        let device = crate::runtime::cpu_device(true);
        let mut v = Tensor::<1>::ones([3], &device).require_grad();
        let mut m = Tensor::<2>::ones([2, 3], &device).require_grad();
        for round in 0..2 {
            let loss = (m.clone() * v.clone().unsqueeze::<2>()).sum();
            let grads = loss.backward();
            let refs = [WeightRef::D1(&v), WeightRef::D2(&m)];
            for w in &refs {
                assert!(
                    w.grad_2d(&grads).is_some(),
                    "round {round}: a gradient is missing"
                );
            }
            let new: Vec<Tensor<2>> = refs.iter().map(|w| w.inner_2d() * 0.5).collect();
            let mut new = new.into_iter();
            WeightMut::D1(&mut v).set_tracked(new.next().unwrap());
            WeightMut::D2(&mut m).set_tracked(new.next().unwrap());
        }
        assert_eq!(crate::tensors::to_f32_vec(v.inner()), [0.25; 3]);
    }
}
