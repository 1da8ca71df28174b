//! Named artefacts: `minilm`, `t5-tokenizer`, … resolve to the paths that `launcher/setup`
//! recorded in `$GRDR_CACHE/assets.json`, so configs never hold a machine path. Anything
//! that is not a known name is taken as a path (a user's own HF checkpoint directory).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The cache that `launcher/setup` fills: `$GRDR_CACHE`, else `~/.cache/grdr`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRDR_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("grdr")
}

fn registry_path() -> PathBuf {
    cache_dir().join("assets.json")
}

/// All named artefacts known on this machine.
pub fn registry() -> Result<BTreeMap<String, PathBuf>> {
    let path = registry_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(&path, "no artefact registry; run launcher/setup first", e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, crate::error::Location::Line(e.line()), "assets", e.to_string()))
}

/// Resolves a name from the registry, or an existing path as itself.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let registry = registry()?;
    match registry.get(name_or_path) {
        Some(p) => Ok(p.clone()),
        None => Err(Error::usage(
            name_or_path,
            format!(
                "neither an existing path nor a known artefact (known: {})",
                registry.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The Python interpreter of the reference venv (`launcher/setup --reference`), used by
/// tests and benchmarks that compare against pytrec_eval, transformers, faiss.
pub fn reference_python() -> Result<PathBuf> {
    let py = resolve("python")?;
    if !py.exists() {
        return Err(Error::usage("python", format!("{} missing: run `launcher/setup --reference`", py.display())));
    }
    Ok(py)
}
