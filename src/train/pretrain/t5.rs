//! The T5 organism (`assets/organism`, the default): its shape, span
//! corruption, and [`T5`] as a [`Trainable`].

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{Architecture, Objective, PretrainConfig, Scored, Trainable, same_named, token_id};
use crate::error::{Error, Result};
use crate::model::batch::{Seq2SeqBatch, TokenizedExample};
use crate::model::{T5, T5Config};
use crate::organism::tokenizer::{self, sentinel};

/// The T5 organism's shape and span-corruption settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct T5Shape {
    pub sentinels: usize,
    pub noise_density: f64,
    pub mean_noise_span_length: f64,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub feed_forward_proj: String,
}

impl Default for PretrainConfig<T5Shape> {
    /// The shipped organism's recipe (`assets/organism/`, docs/ORGANISM.md).
    fn default() -> Self {
        PretrainConfig::shipped(T5Shape {
            sentinels: 16,
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
            d_model: 128,
            d_kv: 32,
            d_ff: 256,
            num_heads: 4,
            num_layers: 2,
            num_decoder_layers: 2,
            feed_forward_proj: "gated-gelu".into(),
        })
    }
}

impl Architecture for T5Shape {
    type Model = T5;
    const NAME: &'static str = "t5";
    const HELD_OUT: &'static str = "span-corruption";

    fn reserved_tokens(&self) -> usize {
        self.sentinels + tokenizer::SPECIAL.len()
    }

    fn heads(&self) -> usize {
        self.num_heads
    }

    /// d_ff is twice the width, d_kv the width over the heads.
    fn set_width(&mut self, d: usize) {
        self.d_model = d;
        self.d_ff = 2 * d;
        self.d_kv = d / self.num_heads;
    }

    fn set_layers(&mut self, n: usize) {
        self.num_layers = n;
        self.num_decoder_layers = n;
    }

    fn tokenizer(&self, texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
        tokenizer::train(texts, vocab_size, self.sentinels)
    }

    fn objective(&self, tk: &tokenizers::Tokenizer) -> Result<Objective> {
        Ok(Objective::SpanCorruption {
            sentinels: (0..self.sentinels)
                .map(|i| token_id(tk, &sentinel(i)))
                .collect::<Result<_>>()?,
            eos: token_id(tk, "</s>")?,
            noise_density: self.noise_density,
            mean_noise_span_length: self.mean_noise_span_length,
        })
    }

    fn model(&self, tk: &tokenizers::Tokenizer, seed: u64, device: &Device) -> Result<T5> {
        let config: T5Config = serde_json::from_value(serde_json::json!({
            "model_type": "t5",
            "vocab_size": tk.get_vocab_size(true),
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "feed_forward_proj": self.feed_forward_proj,
            "tie_word_embeddings": false,
            "pad_token_id": token_id(tk, "<pad>")?,
            "eos_token_id": token_id(tk, "</s>")?,
            "decoder_start_token_id": token_id(tk, "<pad>")?,
        }))
        .map_err(|e| Error::invalid(format!("pretrain: model config: {e}")))?;
        Ok(T5::init(config, seed, device))
    }
}

impl Trainable for T5 {
    fn scored(&self, rows: &[TokenizedExample]) -> Scored {
        let c = &self.config;
        let batch = Seq2SeqBatch::new(rows, c.pad_id(), c.decoder_start_id(), self.device());
        let enc = self.encode_embeds(self.embed(batch.input_ids.clone()), &batch.attention_mask);
        let logits = self.decode(batch.decoder_input_ids.clone(), enc, &batch.attention_mask);
        Scored {
            logits,
            labels: batch.labels,
            mask: batch.label_mask,
            tokens: batch.n_tokens,
        }
    }

    same_named!(T5);

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}
