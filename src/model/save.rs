//! Writing a T5 back in Hugging Face's layout (`config.json` + `model.safetensors`),
//! so that a model trained here (`ept pretrain`) loads in this tool and in
//! transformers like any downloaded checkpoint.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use super::t5::{T5, WeightRef, is_dense_weight};
use crate::error::{Error, Result, write_atomic};
use crate::tensors::{NamedF32, safetensors_f32, to_f32_vec};

impl T5 {
    /// Writes `config.json` and `model.safetensors` (f32) into `dir`, each
    /// atomically. Dense weights go back to PyTorch's `[out, in]`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: Vec<NamedF32> = self
            .weights()
            .into_iter()
            .map(|(name, w)| match w {
                WeightRef::D1(t) => (name, t.dims().to_vec(), to_f32_vec(t.clone())),
                WeightRef::D2(t) => {
                    let t = if is_dense_weight(&name) {
                        t.clone().transpose()
                    } else {
                        t.clone()
                    };
                    (name, t.dims().to_vec(), to_f32_vec(t))
                }
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = dir.join("model.safetensors");
        let bytes = safetensors_f32(&tensors, metadata)
            .map_err(|e| Error::data(&path, format!("cannot serialise: {e}")))?;
        write_atomic(&path, &bytes)?;
        let config = self.hf_config();
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        write_atomic(dir.join("config.json"), format!("{text}\n").as_bytes())
    }

    /// The config as transformers writes it: our fields (unset optional ones
    /// left out) plus the architecture name and the saved dtype.
    fn hf_config(&self) -> Value {
        let mut v = serde_json::to_value(&self.config).expect("the config serialises");
        let map = v.as_object_mut().expect("a struct serialises to an object");
        map.retain(|_, value| !value.is_null());
        map.insert(
            "architectures".into(),
            json!(["T5ForConditionalGeneration"]),
        );
        map.insert("model_type".into(), json!("t5"));
        map.insert("torch_dtype".into(), json!("float32"));
        if self.config.pad_token_id.is_none() {
            map.insert("pad_token_id".into(), json!(self.config.pad_id()));
        }
        if self.config.decoder_start_token_id.is_none() {
            map.insert(
                "decoder_start_token_id".into(),
                json!(self.config.decoder_start_id()),
            );
        }
        v
    }
}
