//! T5 as a [`FrozenModel`]: the prompt goes in front of the encoder input,
//! targets are scored by the decoder behind its start token.

use burn::tensor::{Device, Tensor};

use super::batch::{Seq2SeqBatch, TokenizedExample};
use super::frozen::FrozenModel;
use super::layers::{embedding_rows, f64_values, token_loss_sums};
use super::soft::SoftInput;
use super::t5::T5;
use crate::io::weights::FloatType;

impl T5 {
    /// The encoder's output and mask for a batch of sources with the prompt.
    fn encode_with(&self, soft: &SoftInput, batch: &Seq2SeqBatch) -> (Tensor<3>, Tensor<2>) {
        let embeds = self.embed(batch.input_ids.clone());
        let (enc_in, mask) = soft.apply(embeds, batch.attention_mask.clone());
        (self.encode_embeds(enc_in, &mask), mask)
    }

    fn batch(&self, rows: &[TokenizedExample], min_input_len: usize) -> Seq2SeqBatch {
        let c = &self.config;
        Seq2SeqBatch::padded_to(
            rows,
            c.pad_id(),
            c.decoder_start_id(),
            min_input_len,
            &self.device,
        )
    }

    /// Inputs without targets (a lone `</s>` stands in), for generation and ranking.
    fn inputs_only(&self, inputs: &[Vec<u32>]) -> Vec<TokenizedExample> {
        inputs
            .iter()
            .map(|ids| TokenizedExample {
                input_ids: ids.clone(),
                label_ids: vec![self.config.eos_token_id],
            })
            .collect()
    }
}

impl FrozenModel for T5 {
    fn architecture(&self) -> &'static str {
        "t5"
    }

    fn peft_task_type(&self) -> &'static str {
        "SEQ_2_SEQ_LM"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hidden_size(&self) -> usize {
        self.config.d_model
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    fn num_heads(&self) -> usize {
        self.config.num_heads
    }

    fn dtype(&self) -> FloatType {
        self.dtype
    }

    fn num_parameters(&self) -> usize {
        T5::num_parameters(self)
    }

    fn weight_memory(&self) -> crate::model::params::WeightMemory {
        crate::model::params::WeightMemory::of(&self.weights())
    }

    fn tied_head(&self) -> bool {
        self.tied_head
    }

    fn step_activations(&self, shape: &super::memory::StepShape) -> super::memory::Activations {
        let c = &self.config;
        let gated = c
            .feed_forward(std::path::Path::new("config.json"))
            .is_ok_and(|k| k.gated);
        super::memory::t5(c, gated, shape)
    }

    fn describe(&self) -> Vec<(&'static str, serde_json::Value)> {
        let c = &self.config;
        // Validated at load: the kind is known.
        let gated = c
            .feed_forward(std::path::Path::new("config.json"))
            .is_ok_and(|k| k.gated);
        vec![
            ("feed_forward", c.feed_forward_proj.clone().into()),
            ("gated", gated.into()),
            ("d_model", c.d_model.into()),
            ("d_kv", c.d_kv.into()),
            ("num_heads", c.num_heads.into()),
            ("d_ff", c.d_ff.into()),
            ("encoder_layers", c.num_layers.into()),
            ("decoder_layers", c.decoder_layers().into()),
            ("vocab_size", c.vocab_size.into()),
            (
                "relative_attention_num_buckets",
                c.relative_attention_num_buckets.into(),
            ),
            (
                "relative_attention_max_distance",
                c.relative_attention_max_distance.into(),
            ),
            ("rescale_decoder_output", c.rescale_decoder_output().into()),
        ]
    }

    fn embedding_rows(&self, ids: &[usize]) -> Tensor<2> {
        embedding_rows(&self.shared, ids)
    }

    fn for_inference(&self) -> Box<dyn FrozenModel> {
        Box::new(T5::for_inference(self))
    }

    fn loss_sums(
        &self,
        soft: &SoftInput,
        rows: &[TokenizedExample],
        min_input_len: usize,
    ) -> Tensor<1> {
        let batch = self.batch(rows, min_input_len);
        let (enc, mask) = self.encode_with(soft, &batch);
        let logits = self.decode(batch.decoder_input_ids.clone(), enc, &mask);
        token_loss_sums(logits, batch.labels, batch.label_mask)
    }

    fn generate(
        &self,
        soft: &SoftInput,
        inputs: &[Vec<u32>],
        min_input_len: usize,
        max_new_tokens: usize,
    ) -> Vec<Vec<u32>> {
        let batch = self.batch(&self.inputs_only(inputs), min_input_len);
        let (enc, mask) = self.encode_with(soft, &batch);
        T5::generate(self, enc, &mask, max_new_tokens)
    }

    /// The encoder runs once for all options; the decoder once per option.
    fn option_loss_sums(
        &self,
        soft: &SoftInput,
        inputs: &[Vec<u32>],
        options: &[Vec<u32>],
        min_input_len: usize,
    ) -> Vec<Vec<f64>> {
        let rows = self.inputs_only(inputs);
        let (enc, mask) = self.encode_with(soft, &self.batch(&rows, min_input_len));
        options
            .iter()
            .map(|option| {
                let with_option: Vec<TokenizedExample> = rows
                    .iter()
                    .map(|r| TokenizedExample {
                        input_ids: r.input_ids.clone(),
                        label_ids: option.clone(),
                    })
                    .collect();
                let ob = self.batch(&with_option, 0);
                let logits = self.decode(ob.decoder_input_ids.clone(), enc.clone(), &mask);
                let nll = token_loss_sums(logits, ob.labels, ob.label_mask);
                f64_values(nll)
            })
            .collect()
    }
}
