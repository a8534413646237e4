//! Padded encoder-decoder batches: ids to tensors, padding only to the longest member.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// One tokenized example: source ids (with `</s>`) and target ids (with `</s>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    pub label_ids: Vec<u32>,
}

/// A batch ready for the model.
#[derive(Clone, Debug)]
pub struct Seq2SeqBatch {
    /// `[b, t_in]`, padded with `pad`.
    pub input_ids: Tensor<2, Int>,
    /// `[b, t_in]`, 1 for real tokens.
    pub attention_mask: Tensor<2>,
    /// `[b, t_out]`: labels shifted right behind the decoder start token.
    pub decoder_input_ids: Tensor<2, Int>,
    /// `[b, t_out]`, padded with `pad` (masked out by `label_mask`).
    pub labels: Tensor<2, Int>,
    /// `[b, t_out]`, 1 where a target token counts.
    pub label_mask: Tensor<2>,
    /// Number of counted target tokens.
    pub n_tokens: usize,
    /// Longest input in the batch.
    pub input_len: usize,
}

fn pad_ids(rows: &[&[u32]], pad: u32, min_len: usize) -> (Vec<i64>, Vec<f32>, usize) {
    let len = rows
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(0)
        .max(min_len)
        .max(1);
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * len);
    for r in rows {
        for j in 0..len {
            ids.push(r.get(j).map_or(pad as i64, |&x| x as i64));
            mask.push(if j < r.len() { 1.0 } else { 0.0 });
        }
    }
    (ids, mask, len)
}

impl Seq2SeqBatch {
    /// Pads inputs to the batch's longest member.
    pub fn new(
        examples: &[TokenizedExample],
        pad: u32,
        decoder_start: u32,
        device: &Device,
    ) -> Self {
        Self::padded_to(examples, pad, decoder_start, 0, device)
    }

    /// Pads inputs to at least `min_input_len` (the paper's fixed-length runs pad to m).
    pub fn padded_to(
        examples: &[TokenizedExample],
        pad: u32,
        decoder_start: u32,
        min_input_len: usize,
        device: &Device,
    ) -> Self {
        let b = examples.len();
        let inputs: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        let (in_ids, in_mask, t_in) = pad_ids(&inputs, pad, min_input_len);
        let labels: Vec<&[u32]> = examples.iter().map(|e| e.label_ids.as_slice()).collect();
        let (lab_ids, lab_mask, t_out) = pad_ids(&labels, pad, 0);
        let shifted: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                let mut v = vec![decoder_start];
                v.extend_from_slice(&e.label_ids[..e.label_ids.len().saturating_sub(1)]);
                v
            })
            .collect();
        let shifted_refs: Vec<&[u32]> = shifted.iter().map(|v| v.as_slice()).collect();
        let (dec_ids, _, _) = pad_ids(&shifted_refs, pad, 0);
        let n_tokens = examples.iter().map(|e| e.label_ids.len()).sum();
        let int =
            |v: Vec<i64>, t: usize| Tensor::<2, Int>::from_data(TensorData::new(v, [b, t]), device);
        let float = |v: Vec<f32>, t: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [b, t]), (device, DType::F32))
        };
        Seq2SeqBatch {
            input_ids: int(in_ids, t_in),
            attention_mask: float(in_mask, t_in),
            decoder_input_ids: int(dec_ids, t_out),
            labels: int(lab_ids, t_out),
            label_mask: float(lab_mask, t_out),
            n_tokens,
            input_len: t_in,
        }
    }
}
