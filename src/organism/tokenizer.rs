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

/// `▁word` pieces for the words of `texts` (lowercased, split on spaces) that
/// `pieces` lacks, each scored by the log of its share of all words: a whole
/// word then always outscores its spelling in smaller pieces.
fn missing_words(texts: &[String], pieces: &[(String, f64)]) -> Vec<(String, f64)> {
    let have: std::collections::HashSet<&str> = pieces.iter().map(|(p, _)| p.as_str()).collect();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for text in texts {
        for word in text.to_lowercase().split_whitespace() {
            *counts.entry(format!("▁{word}")).or_default() += 1;
        }
    }
    let total: u64 = counts.values().sum();
    counts
        .into_iter()
        .filter(|(piece, _)| !have.contains(piece.as_str()))
        .map(|(piece, n)| {
            let score = (n as f64 / total as f64).ln();
            (piece, score)
        })
        .collect()
}

/// T5's special tokens, in id order.
pub const SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// The sentinel token number `i` (`<extra_id_i>`).
pub fn sentinel(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// Trains a Unigram tokenizer on `texts`: the `tokenizers` crate's Unigram
/// trainer asked for `vocab_size` pieces (special tokens and `n_sentinels`
/// sentinels included), then every word of the texts that is not yet a piece
/// added whole, scored by its frequency.
///
/// Why the second step: on this small language the trainer (tokenizers 0.22)
/// stops near 400 pieces whatever size is asked for, and keeps so few whole
/// words that common ones fall apart into letters ("never" → `▁ n e ver`,
/// "hideous" → `▁ h i d e ous`). A model then has to assemble each word from
/// letters before it can use its meaning, and sequences are twice as long.
/// Real T5's vocabulary has whole pieces for all common English words; adding
/// the language's few hundred words does the same here, and the trainer's
/// sub-word pieces still spell any other text.
pub fn train(texts: &[String], vocab_size: usize, n_sentinels: usize) -> Result<Tokenizer> {
    let mut tk = unigram(texts, vocab_size - n_sentinels, &SPECIAL)?;
    let sentinels: Vec<AddedToken> = (0..n_sentinels)
        .rev()
        .map(|i| AddedToken::from(sentinel(i), true))
        .collect();
    tk.add_special_tokens(&sentinels);
    with_template(tk, "</s>", "$A </s>", "$A </s> $B </s>")
}

/// The decoder organism's special tokens, in id order: T5's, then `<s>`.
pub const DECODER_SPECIAL: [&str; 4] = ["<pad>", "</s>", "<unk>", "<s>"];

/// The tokenizer of the decoder organism (`ept pretrain --arch llama`): the
/// same pieces as [`train`] (the trainer, then every word whole), with
/// [`DECODER_SPECIAL`], no sentinels, and a post-processor that puts `<s>` in
/// front of a text (Llama's convention: ept's decoders then append a
/// target and `</s>`, LLAMA.md).
pub fn train_decoder(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let tk = unigram(texts, vocab_size, &DECODER_SPECIAL)?;
    with_template(tk, "<s>", "<s> $A", "<s> $A <s> $B")
}

/// `tk` with a post-processor that adds `token` to a text (`single`) and a pair (`pair`).
fn with_template(mut tk: Tokenizer, token: &str, single: &str, pair: &str) -> Result<Tokenizer> {
    let id = tk
        .token_to_id(token)
        .ok_or_else(|| Error::invalid(format!("tokenizer training lost `{token}`")))?;
    let template = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::invalid(format!("tokenizer template: {e}")))?
        .special_tokens(vec![(token, id)])
        .build()
        .map_err(|e| Error::invalid(format!("tokenizer template: {e}")))?;
    tk.with_post_processor(Some(PostProcessorWrapper::Template(template)));
    Ok(tk)
}

/// A lowercasing Metaspace Unigram tokenizer of `vocab_size` pieces trained
/// on `texts`, `specials` first (`<unk>` among them), plus every word of the
/// texts whole; no post-processor.
fn unigram(texts: &[String], vocab_size: usize, specials: &[&str]) -> Result<Tokenizer> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::invalid(format!("tokenizer training failed: {e}"))
    };
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    let mut tk = Tokenizer::new(ModelWrapper::Unigram(Unigram::default()));
    tk.with_normalizer(Some(NormalizerWrapper::Lowercase(Lowercase)));
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace.clone())));
    tk.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(vocab_size as u32)
        .special_tokens(added)
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
    let mut pieces: Vec<(String, f64)> = trained.iter().map(|(p, s)| (p.clone(), *s)).collect();
    pieces.extend(missing_words(texts, &pieces));
    for (_, score) in &mut pieces {
        *score = (*score * 1e3).round() / 1e3;
    }
    // Pieces of equal score come out in either order, and the order is the ids:
    // after the special tokens, by score, then by text.
    pieces[specials.len()..].sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let unk = pieces.iter().position(|(p, _)| p == "<unk>");
    let rounded = Unigram::from(pieces, unk, false).map_err(fail)?;
    tk.with_model(ModelWrapper::Unigram(rounded));
    Ok(tk)
}
