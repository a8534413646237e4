//! `tokenizer.json` through the `tokenizers` crate, with T5's truncation rule
//! and the decoders' target rule.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A Hugging Face fast tokenizer plus the ids the model needs.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pub eos_id: u32,
    /// Targets as a decoder scores them: the text's tokens without special
    /// tokens, then EOS (a post-processor would put BOS in front). T5's
    /// post-processor already appends `</s>`, and its targets are encoded as its sources.
    decoder_targets: bool,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, eos_id: u32) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::NotFound {
                path: path.into(),
                hint: "the model folder needs a tokenizer.json (save it with AutoTokenizer.save_pretrained)".into(),
            });
        }
        let text = crate::error::read_to_string(path)?;
        // A syntax error is reported here, with its line: inside the
        // tokenizers crate one in the `decoder` panics (`expect("Helper")`).
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| Error::Json {
            path: path.into(),
            line: Some(e.line()),
            msg: e.to_string(),
        })?;
        // Valid JSON of the wrong shape can still reach an `expect` in the
        // tokenizers crate's deserializers (normalizers' `Precompiled`, ...):
        // a file must never crash ept, so such a panic is an error too.
        let parsed = crate::error::catch_library_panic(|| text.parse::<tokenizers::Tokenizer>())
            .unwrap_or_else(|_| Err("the tokenizers crate panicked on it".into()));
        let inner = parsed.map_err(|e| Error::data(path, format!("cannot read tokenizer: {e}")))?;
        // A post-processor template may name a special token its table does
        // not define: the tokenizers crate then panics on every encode, so
        // one probe here turns that into an error at load.
        let probe = crate::error::catch_library_panic(|| {
            let _ = inner.encode("a", true);
        });
        if probe.is_err() {
            return Err(Error::data(
                path,
                "cannot read tokenizer: it fails to encode a test text \
                 (does its post_processor name a special token it does not define?)",
            ));
        }
        Ok(TextTokenizer {
            inner,
            path: path.into(),
            eos_id,
            decoder_targets: false,
        })
    }

    /// The tokenizer of a decoder: targets are encoded without special tokens and end in EOS.
    pub fn for_decoder(mut self) -> Self {
        self.decoder_targets = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` with the post-processor's `</s>`; when longer than
    /// `max_len`, the text is cut and `</s>` kept last (what transformers'
    /// `truncation=True, max_length=max_len` does).
    pub fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::data(&self.path, format!("cannot tokenize input: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(m) = max_len
            && ids.len() > m
        {
            let ends_with_eos = ids.last() == Some(&self.eos_id);
            ids.truncate(m);
            if ends_with_eos && m > 0 {
                ids[m - 1] = self.eos_id;
            }
        }
        Ok(ids)
    }

    /// Token ids of a target, as the model scores it: T5's `tokens </s>`, a
    /// decoder's `tokens EOS` (no BOS, whatever the post-processor adds to sources).
    pub fn encode_target(&self, text: &str) -> Result<Vec<u32>> {
        if !self.decoder_targets {
            return self.encode(text, None);
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::data(&self.path, format!("cannot tokenize target: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::data(&self.path, format!("cannot decode ids: {e}")))
    }
}
