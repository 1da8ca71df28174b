//! Tokenizers from local `tokenizer.json` files (never from a hub), resolved by artefact
//! name (`minilm`, `t5-tokenizer`) or path. Stored ids carry no special tokens and no
//! truncation: the model's batcher decides both, so one prepared dataset serves any length.
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Loads a tokenizer by artefact name, directory (holding `tokenizer.json`) or file path,
/// with padding and truncation turned off (MiniLM's file pads to 128 otherwise).
pub fn load(name_or_path: &str) -> Result<(Tokenizer, PathBuf)> {
    let resolved = crate::assets::resolve(name_or_path)?;
    let file = if resolved.is_dir() { resolved.join("tokenizer.json") } else { resolved };
    let mut tok = Tokenizer::from_file(&file)
        .map_err(|e| Error::Tokenizer { name: file.display().to_string(), message: e.to_string() })?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| Error::Tokenizer { name: file.display().to_string(), message: e.to_string() })?;
    Ok((tok, file))
}

/// Token ids of every text, without special tokens, in order.
pub fn encode_all(tok: &Tokenizer, name: &Path, texts: &[&str], what: &str) -> Result<Vec<Vec<u32>>> {
    let bar = crate::progress::bar(texts.len() as u64, what);
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(4096) {
        let enc = tok
            .encode_batch(chunk.to_vec(), false)
            .map_err(|e| Error::Tokenizer { name: name.display().to_string(), message: e.to_string() })?;
        out.extend(enc.into_iter().map(|e| e.get_ids().to_vec()));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
