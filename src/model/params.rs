//! A model's weights as a named list, for full-parameter training
//! (`ept pretrain`) and saving: [`T5::weights`](super::T5::weights) and
//! [`Llama::weights`](super::Llama::weights) list every tensor under its
//! Hugging Face checkpoint name, borrowed ([`WeightRef`]) or mutably
//! ([`WeightMut`]). The optimiser sees every weight as a matrix (`[1, n]`
//! for a vector).

use burn::tensor::{Gradients, Tensor};

/// A borrowed weight of either rank.
pub enum WeightRef<'a> {
    D1(&'a Tensor<1>),
    D2(&'a Tensor<2>),
}

impl WeightRef<'_> {
    pub fn numel(&self) -> usize {
        match self {
            WeightRef::D1(t) => t.dims()[0],
            WeightRef::D2(t) => t.dims().iter().product(),
        }
    }

    /// The values off the autodiff graph, a vector as `[1, n]`.
    pub fn inner_2d(&self) -> Tensor<2> {
        match self {
            WeightRef::D1(t) => (*t).clone().inner().unsqueeze::<2>(),
            WeightRef::D2(t) => (*t).clone().inner(),
        }
    }

    /// Its gradient in `grads`, a vector's as `[1, n]`.
    pub fn grad_2d(&self, grads: &Gradients) -> Option<Tensor<2>> {
        match self {
            WeightRef::D1(t) => t.grad(grads).map(|g| g.unsqueeze::<2>()),
            WeightRef::D2(t) => t.grad(grads),
        }
    }
}

/// A mutably borrowed weight of either rank.
pub enum WeightMut<'a> {
    D1(&'a mut Tensor<1>),
    D2(&'a mut Tensor<2>),
}

impl WeightMut<'_> {
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
