//! What a prompt method hands a frozen model: rows to prepend and an update of
//! the text's embeddings, as plain tensors.
//!
//! Why here and not in `prompt/`: the model composes them with its own
//! embeddings (T5 in front of the encoder input, a decoder in front of the
//! whole sequence and at every generated position), while `prompt/` only
//! computes them. Keeping the type below both lets dependencies point one
//! way: `prompt/` → `model/`.

use burn::tensor::{DType, Tensor};

/// The trainable additions to a frozen model's input (f32 in training).
#[derive(Clone, Debug, Default)]
pub struct SoftInput {
    /// Rows prepended to every input, `[n, d]` (P, or P_new of DePT/EPT).
    pub prefix: Option<Tensor<2>>,
    /// `[m, d]`: row j is added to the embedding of text position j (A·B);
    /// positions from m on get nothing.
    pub position_update: Option<Tensor<2>>,
}

impl SoftInput {
    /// The frozen model alone.
    pub fn none() -> Self {
        SoftInput::default()
    }

    /// Number of prepended rows.
    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.dims()[0])
    }

    /// Rows `0..t` of the position update, zero rows past its end, `[t, d]`.
    pub fn update_rows(&self, t: usize) -> Option<Tensor<2>> {
        let u = self.position_update.as_ref()?;
        let [m, d] = u.dims();
        Some(if t <= m {
            u.clone().narrow(0, 0, t)
        } else {
            let zeros = Tensor::<2>::zeros([t - m, d], (&u.device(), u.dtype()));
            Tensor::cat(vec![u.clone(), zeros], 0)
        })
    }

    /// `[prefix ; embeds + update]` and its mask `[1…1 ; mask]`: `embeds` is
    /// `[b, t, d]`, `mask` `[b, t]` (1 = real token). The sum is taken in the
    /// prompt's precision (f32) and the result cast back to `embeds`' dtype.
    pub fn apply(&self, embeds: Tensor<3>, mask: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        if self.prefix.is_none() && self.position_update.is_none() {
            return (embeds, mask);
        }
        let [b, t, d] = embeds.dims();
        let dtype = embeds.dtype();
        let own = self
            .prefix
            .as_ref()
            .or(self.position_update.as_ref())
            .map(|p| p.dtype())
            .unwrap_or(dtype);
        let embeds = embeds.cast(own);
        // Eq. 2 of the paper: row j of A·B added at text position j.
        let text = match self.update_rows(t) {
            Some(u) => embeds + u.unsqueeze::<3>(),
            None => embeds,
        };
        let Some(prefix) = &self.prefix else {
            return (text.cast(dtype), mask);
        };
        let n = prefix.dims()[0];
        let prompt = prefix.clone().unsqueeze::<3>().expand([b, n, d]);
        let input = Tensor::cat(vec![prompt, text], 1).cast(dtype);
        let ones = Tensor::<2>::ones([b, n], (&mask.device(), DType::F32));
        let mask = Tensor::cat(vec![ones, mask.cast(DType::F32)], 1);
        (input, mask)
    }
}
