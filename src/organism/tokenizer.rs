//! Training the organism's tokenizer: a Unigram model in T5's layout, written
//! as a Hugging Face `tokenizer.json` that both this tool and transformers load.
//!
//! T5's conventions are kept so that every T5 code path treats it like the
//! real thing: `<pad>` = 0, `</s>` = 1, `<unk>` = 2; words split on spaces and
//! marked with `▁` (Metaspace); `</s>` appended by the post-processor; sentinels
//! `<extra_id_0>`, `<extra_id_1>`, … at the top of the vocabulary in descending
//! order (`<extra_id_0>` is the last id, as in T5's span corruption).

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// T5's special tokens, in id order.
pub const SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// The sentinel token number `i` (`<extra_id_i>`).
pub fn sentinel(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// Trains a Unigram tokenizer on `texts` with `vocab_size` pieces in all
/// (special tokens and `n_sentinels` sentinels included). The language's words
/// are few, so most become single pieces; the trainer may stop below the
/// requested size when the texts hold fewer useful pieces.
pub fn train(texts: &[String], vocab_size: usize, n_sentinels: usize) -> Result<Tokenizer> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::invalid(format!("tokenizer training failed: {e}"))
    };
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    let mut tk = Tokenizer::new(ModelWrapper::Unigram(Unigram::default()));
    tk.with_normalizer(Some(NormalizerWrapper::Lowercase(Lowercase)));
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace.clone())));
    tk.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|t| AddedToken::from(*t, true)).collect();
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size((vocab_size - n_sentinels) as u32)
        .special_tokens(specials)
        .unk_token(Some("<unk>".into()))
        .build()
        .map_err(|e| Error::invalid(format!("tokenizer trainer: {e}")))?;
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tk.train(&mut trainer, texts.iter()).map_err(fail)?;
    // The trainer sums over hash maps in a random order, so the scores differ
    // in their last digits from run to run, and it gives characters it must
    // keep scores a step apart in hash order. Rounding the scores to 1e-3 and
    // ordering equal scores by text makes the tokenizer the same for the same texts.
    let ModelWrapper::Unigram(trained) = tk.get_model() else {
        unreachable!("a Unigram trainer trains a Unigram model")
    };
    let mut pieces: Vec<(String, f64)> = trained
        .iter()
        .map(|(p, s)| (p.clone(), (s * 1e3).round() / 1e3))
        .collect();
    // Pieces of equal score come out in either order, and the order is the ids:
    // after the special tokens, by score, then by text.
    pieces[SPECIAL.len()..].sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let unk = pieces.iter().position(|(p, _)| p == "<unk>");
    let rounded = Unigram::from(pieces, unk, false).map_err(fail)?;
    tk.with_model(ModelWrapper::Unigram(rounded));
    let sentinels: Vec<AddedToken> = (0..n_sentinels)
        .rev()
        .map(|i| AddedToken::from(sentinel(i), true))
        .collect();
    tk.add_special_tokens(&sentinels);
    let eos = tk
        .token_to_id("</s>")
        .ok_or_else(|| Error::invalid("tokenizer training lost `</s>`"))?;
    let template = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|b| b.try_pair("$A </s> $B </s>"))
        .map_err(|e| Error::invalid(format!("tokenizer template: {e}")))?
        .special_tokens(vec![("</s>", eos)])
        .build()
        .map_err(|e| Error::invalid(format!("tokenizer template: {e}")))?;
    tk.with_post_processor(Some(PostProcessorWrapper::Template(template)));
    Ok(tk)
}
