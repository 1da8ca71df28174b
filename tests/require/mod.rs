//! What a test needs from the machine (the reference tools of `launcher/setup --reference`,
//! the named artefacts): missing, the test fails — it never passes having tested nothing.
//! `GRDR_ALLOW_SKIP=1` is the one way to skip such a test (launcher/test never sets it).
#![allow(dead_code)]
use std::path::PathBuf;

/// `found`, or — when it is missing — `None` under `GRDR_ALLOW_SKIP=1` and a failure otherwise.
pub fn or_skip<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) if std::env::var("GRDR_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIP (GRDR_ALLOW_SKIP=1): {what}: {e}");
            None
        }
        Err(e) => panic!("{what} is missing ({e}): run launcher/setup --reference, or set GRDR_ALLOW_SKIP=1 to skip"),
    }
}

/// The reference venv's Python (transformers, sentence-transformers, pytrec_eval, …).
pub fn reference_python() -> Option<PathBuf> {
    or_skip("the reference Python", grdr::assets::reference_python())
}

/// A named artefact (`minilm`, `t5-tokenizer`).
pub fn artefact(name: &str) -> Option<PathBuf> {
    or_skip(name, grdr::assets::resolve(name))
}
