//! The decoder organism (`assets/organism-llama`, `--arch llama`): a tiny
//! Llama, its next-token objective, and [`Llama`] as a [`Trainable`].
//!
//! A document is trained as `<s> document </s>`, every token after `<s>`
//! scored; a supervised example as ept scores every decoder example
//! (`crate::model::llama_frozen`): `<s> source` then `target </s>`, only the
//! target and `</s>` scored. Both go through [`Llama::target_logits`], the
//! code that computes a prompt's loss on a decoder.

use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{Architecture, Objective, PretrainConfig, Scored, Trainable, same_named, token_id};
use crate::error::Result;
use crate::model::batch::TokenizedExample;
use crate::model::{Llama, LlamaConfig, SoftInput};
use crate::organism::tokenizer;

/// The decoder organism's shape, under transformers' `LlamaConfig` names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: key/value heads (divides the heads).
    pub num_key_value_heads: usize,
    pub num_hidden_layers: usize,
    /// The head is the embedding's transpose.
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
}

impl Default for PretrainConfig<LlamaShape> {
    /// The shipped decoder organism's recipe (`assets/organism-llama/`, docs/ORGANISM.md).
    fn default() -> Self {
        PretrainConfig::shipped(LlamaShape {
            hidden_size: 128,
            intermediate_size: 384,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            num_hidden_layers: 4,
            tie_word_embeddings: true,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
        })
    }
}

impl Architecture for LlamaShape {
    type Model = Llama;
    const NAME: &'static str = "llama";
    const HELD_OUT: &'static str = "next-token";

    fn reserved_tokens(&self) -> usize {
        tokenizer::DECODER_SPECIAL.len()
    }

    fn heads(&self) -> usize {
        self.num_attention_heads
    }

    /// The feed-forward width is three times the width.
    fn set_width(&mut self, d: usize) {
        self.hidden_size = d;
        self.intermediate_size = 3 * d;
    }

    fn set_layers(&mut self, n: usize) {
        self.num_hidden_layers = n;
    }

    fn tokenizer(&self, texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
        tokenizer::train_decoder(texts, vocab_size)
    }

    fn objective(&self, tk: &tokenizers::Tokenizer) -> Result<Objective> {
        Ok(Objective::CausalLm {
            bos: token_id(tk, "<s>")?,
            eos: token_id(tk, "</s>")?,
        })
    }

    fn model(&self, tk: &tokenizers::Tokenizer, seed: u64, device: &Device) -> Result<Llama> {
        let value = serde_json::json!({
            "model_type": "llama",
            "vocab_size": tk.get_vocab_size(true),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": token_id(tk, "<s>")?,
            "eos_token_id": token_id(tk, "</s>")?,
            "pad_token_id": token_id(tk, "<pad>")?,
        });
        let config = LlamaConfig::from_value(&value, Path::new("<pretrain --arch llama>"))?;
        Ok(Llama::init(config, seed, device))
    }
}

impl Trainable for Llama {
    fn scored(&self, rows: &[TokenizedExample]) -> Scored {
        let (logits, labels, mask) = self.target_logits(&SoftInput::none(), rows, 0);
        Scored {
            logits,
            labels,
            mask,
            tokens: rows.iter().map(|r| r.label_ids.len()).sum(),
        }
    }

    same_named!(Llama);

    fn vocab_size(&self) -> usize {
        self.config.raw.vocab_size
    }
}
