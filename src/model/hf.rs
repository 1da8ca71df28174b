//! HF checkpoint directories: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`. Loading copies tensors into a
//! `VarStore` whose paths equal the HF keys, reporting missing and unexpected keys; export
//! writes a directory that `transformers` loads.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use super::bert::BertModel;
use super::t5::T5Config;
use super::t5_model::{T5EncoderModel, T5ForConditionalGeneration};
use super::BertConfig;
use crate::error::{Error, Location, Result};

/// How to load a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    /// Floating-point kind of the parameters (checkpoints in f16/bf16 are converted).
    pub kind: Kind,
    /// Accept missing weights (they keep their random initialisation) instead of failing.
    pub allow_missing: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, kind: Kind::Float, allow_missing: false }
    }
}

/// What a load did with the checkpoint's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters the checkpoint did not provide (randomly initialised).
    pub missing: Vec<String>,
    /// Checkpoint keys the model has no parameter for (ignored).
    pub unexpected: Vec<String>,
    /// Number of parameters filled.
    pub loaded: usize,
}

/// How checkpoint keys map onto a model's parameter names.
#[derive(Debug, Clone, Default)]
pub struct KeyRules {
    /// Checkpoint key → parameter it also names (tied weights saved under several keys).
    pub aliases: Vec<(String, String)>,
    /// Checkpoint keys that are buffers or known leftovers, neither loaded nor reported.
    pub ignored: Vec<String>,
    /// Parameters that may be absent without failing (e.g. BERT's pooler), still reported.
    pub optional: Vec<String>,
    /// Prefixes stripped from checkpoint keys (`bert.` of `BertForMaskedLM` checkpoints).
    pub strip_prefixes: Vec<String>,
}

/// An HF model the loader and exporter know: how to build it from `config.json`, how its
/// keys map, and the `config.json` it exports.
pub trait HfModel: Sized {
    /// `architectures[0]` in an exported `config.json`.
    const ARCHITECTURE: &'static str;
    /// `keys`: the tensor names the checkpoint holds (structure can depend on them, as
    /// transformers 5 unties a T5 lm_head only when the checkpoint has its own).
    fn build(p: &nn::Path, config: &serde_json::Value, keys: &BTreeSet<String>) -> Result<Self>;
    fn key_rules(&self) -> KeyRules;
    fn config_json(&self) -> serde_json::Value;
}

/// A loaded model with the variables it owns.
pub struct Loaded<M> {
    pub vs: nn::VarStore,
    pub model: M,
    pub report: LoadReport,
    /// The directory it came from (its `tokenizer.json` travels with an export).
    pub dir: PathBuf,
}

/// The parsed `config.json` of an HF directory.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::read_text(&path, "cannot read model config", e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(&path, Location::Line(e.line()), "config", e.to_string()))
}

/// `model_type` of an HF directory (`t5`, `bert`, …).
pub fn model_type(dir: &Path) -> Result<String> {
    let cfg = read_config(dir)?;
    Ok(cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string())
}

/// The weight files of a directory: `model.safetensors`, or the shards of its index.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text =
            std::fs::read_to_string(&index).map_err(|e| Error::read_text(&index, "cannot read shard index", e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(&index, Location::Line(e.line()), "weight_map", e.to_string()))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::input(&index, Location::File, "weight_map", "missing or not an object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        " (pytorch_model.bin is not read: convert it to safetensors)"
    } else {
        ""
    };
    Err(Error::io(
        dir,
        format!("no model.safetensors or model.safetensors.index.json{hint}"),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    ))
}

/// Copies checkpoint tensors into the variables of `vs` by name, under `rules`.
pub fn load_weights(vs: &nn::VarStore, files: &[PathBuf], rules: &KeyRules, allow_missing: bool) -> Result<LoadReport> {
    let vars = vs.variables(); // name → tensor (shallow clones of the stored ones)
    let aliases: BTreeMap<&str, &str> = rules.aliases.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut filled: BTreeSet<String> = BTreeSet::new();
    let mut via_alias: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for file in files {
        super::safetensors::for_each_tensor(file, |raw, t| {
            let key = rules.strip_prefixes.iter().find_map(|p| raw.strip_prefix(p.as_str())).unwrap_or(raw);
            if rules.ignored.iter().any(|i| i == key) {
                return Ok(());
            }
            if let Some(target) = aliases.get(key) {
                // Used only if the canonical key is absent from every file.
                via_alias.entry(target.to_string()).or_insert(t);
                return Ok(());
            }
            match vars.get(key) {
                Some(var) => {
                    copy_into(file, key, var, &t)?;
                    filled.insert(key.to_string());
                }
                None => unexpected.push(raw.to_string()),
            }
            Ok(())
        })?;
    }
    for (target, t) in via_alias {
        if !filled.contains(&target) {
            if let Some(var) = vars.get(&target) {
                copy_into(&files[0], &target, var, &t)?;
                filled.insert(target);
            }
        }
    }
    let mut missing: Vec<String> = vars.keys().filter(|k| !filled.contains(*k)).cloned().collect();
    missing.sort();
    unexpected.sort();
    let report = LoadReport { missing, unexpected, loaded: filled.len() };
    let fatal: Vec<&String> = report.missing.iter().filter(|k| !rules.optional.contains(k)).collect();
    if !report.unexpected.is_empty() {
        let keys: Vec<&String> = report.unexpected.iter().collect();
        tracing::warn!("{} checkpoint keys not used by the model: {}", keys.len(), join_some(&keys));
    }
    if !report.missing.is_empty() {
        let keys: Vec<&String> = report.missing.iter().collect();
        tracing::warn!("{} model weights missing from the checkpoint: {}", keys.len(), join_some(&keys));
    }
    if !fatal.is_empty() && !allow_missing {
        let dir = files[0].parent().unwrap_or(Path::new("."));
        return Err(Error::input(
            dir,
            Location::File,
            "weights",
            format!("{} model weights missing from the checkpoint: {}", fatal.len(), join_some(&fatal)),
        ));
    }
    Ok(report)
}

fn join_some(keys: &[&String]) -> String {
    let mut s = keys.iter().take(8).map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    if keys.len() > 8 {
        s.push_str(&format!(", … ({} more)", keys.len() - 8));
    }
    s
}

fn copy_into(file: &Path, key: &str, var: &Tensor, t: &Tensor) -> Result<()> {
    if var.size() != t.size() {
        return Err(Error::input(
            file,
            Location::File,
            key,
            format!("shape {:?} in the checkpoint, {:?} in the model (config.json disagrees?)", t.size(), var.size()),
        ));
    }
    tch::no_grad(|| var.shallow_clone().copy_(t));
    Ok(())
}

/// Builds `M` from `dir/config.json` and loads its weights.
pub fn load<M: HfModel>(dir: &Path, opts: LoadOptions) -> Result<Loaded<M>> {
    let config = read_config(dir)?;
    let files = weight_files(dir)?;
    let mut keys = BTreeSet::new();
    for f in &files {
        keys.extend(super::safetensors::keys(f)?);
    }
    let mut vs = nn::VarStore::new(opts.device);
    // A config.json with impossible sizes (negative, absurd) makes libtorch refuse to create
    // a tensor, which tch reports by panicking: refused input naming the file instead.
    let config_path = dir.join("config.json");
    let model = crate::panic_guard::catch(
        || M::build(&vs.root(), &config, &keys),
        |m| {
            Error::input(
                &config_path,
                Location::File,
                "config.json",
                format!("cannot build the model: {}", first_line(&m)),
            )
        },
    )?;
    if opts.kind != Kind::Float {
        vs.set_kind(opts.kind);
    }
    let report = load_weights(&vs, &files, &model.key_rules(), opts.allow_missing)?;
    Ok(Loaded { vs, model, report, dir: dir.to_path_buf() })
}

/// Writes `config.json`, `model.safetensors` (every variable of `vs` whose name does not start
/// with one of `skip_prefixes`, e.g. `grdr_head.`) and, when given, `tokenizer.json` to
/// `out`, atomically (the directory appears complete or not at all).
pub fn export<M: HfModel>(
    model: &M,
    vs: &nn::VarStore,
    tokenizer_json: Option<&Path>,
    out: &Path,
    skip_prefixes: &[&str],
) -> Result<()> {
    export_impl(model, vs, tokenizer_json.map(TokenizerOut::File), out, skip_prefixes)
}

/// [`export`] with a tokenizer object, e.g. one that gained docid tokens.
pub fn export_with_tokenizer<M: HfModel>(
    model: &M,
    vs: &nn::VarStore,
    tokenizer: &tokenizers::Tokenizer,
    out: &Path,
    skip_prefixes: &[&str],
) -> Result<()> {
    export_impl(model, vs, Some(TokenizerOut::Object(tokenizer)), out, skip_prefixes)
}

enum TokenizerOut<'a> {
    File(&'a Path),
    Object(&'a tokenizers::Tokenizer),
}

fn export_impl<M: HfModel>(
    model: &M,
    vs: &nn::VarStore,
    tokenizer: Option<TokenizerOut>,
    out: &Path,
    skip_prefixes: &[&str],
) -> Result<()> {
    let tmp = crate::atomic::TempDir::new(out, true)?;
    let mut config = model.config_json();
    config["architectures"] = serde_json::json!([M::ARCHITECTURE]);
    crate::atomic::write_json(&tmp.path().join("config.json"), &config)?;
    let tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| !skip_prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(k, t)| (k, t.detach()))
        .collect();
    super::safetensors::write(&tmp.path().join("model.safetensors"), &tensors)?;
    let dest = tmp.path().join("tokenizer.json");
    match tokenizer {
        Some(TokenizerOut::File(src)) => {
            std::fs::copy(src, &dest).map_err(|e| Error::io(src, "cannot copy tokenizer", e))?;
        }
        Some(TokenizerOut::Object(tok)) => {
            tok.save(&dest, false)
                .map_err(|e| Error::Tokenizer { name: dest.display().to_string(), message: e.to_string() })?;
        }
        None => {}
    }
    tmp.commit()?;
    Ok(())
}

fn t5_rules(tied: bool) -> KeyRules {
    let mut aliases = vec![
        ("encoder.embed_tokens.weight".to_string(), "shared.weight".to_string()),
        ("decoder.embed_tokens.weight".to_string(), "shared.weight".to_string()),
    ];
    if tied {
        aliases.push(("lm_head.weight".into(), "shared.weight".into()));
    }
    KeyRules { aliases, ..Default::default() }
}

impl HfModel for T5ForConditionalGeneration {
    const ARCHITECTURE: &'static str = "T5ForConditionalGeneration";
    fn build(p: &nn::Path, config: &serde_json::Value, keys: &BTreeSet<String>) -> Result<Self> {
        let config = T5Config::from_json(config)?;
        // An lm_head of its own only if the config unties it and the checkpoint has one
        // (transformers 5 ties it otherwise, whatever the config says).
        let tied = config.ties_lm_head() || !keys.contains("lm_head.weight");
        T5ForConditionalGeneration::new_with_tying(p, config, tied)
    }
    fn key_rules(&self) -> KeyRules {
        t5_rules(self.lm_head.is_none())
    }
    fn config_json(&self) -> serde_json::Value {
        let mut c = self.config.clone();
        c.scale_decoder_outputs = Some(c.scales_decoder_outputs());
        c.tie_word_embeddings = self.lm_head.is_none();
        serde_json::to_value(&c).expect("T5Config serialises")
    }
}

impl HfModel for T5EncoderModel {
    const ARCHITECTURE: &'static str = "T5EncoderModel";
    fn build(p: &nn::Path, config: &serde_json::Value, _keys: &BTreeSet<String>) -> Result<Self> {
        T5EncoderModel::new(p, T5Config::from_json(config)?)
    }
    fn key_rules(&self) -> KeyRules {
        // A seq2seq checkpoint's decoder and lm_head are reported as unexpected, not fatal.
        t5_rules(false)
    }
    fn config_json(&self) -> serde_json::Value {
        let mut c = self.config.clone();
        c.scale_decoder_outputs = Some(c.scales_decoder_outputs());
        serde_json::to_value(&c).expect("T5Config serialises")
    }
}

impl HfModel for BertModel {
    const ARCHITECTURE: &'static str = "BertModel";
    fn build(p: &nn::Path, config: &serde_json::Value, _keys: &BTreeSet<String>) -> Result<Self> {
        BertModel::new(p, BertConfig::from_json(config)?)
    }
    fn key_rules(&self) -> KeyRules {
        KeyRules {
            ignored: vec!["embeddings.position_ids".into()],
            optional: vec!["pooler.dense.weight".into(), "pooler.dense.bias".into()],
            strip_prefixes: vec!["bert.".into()],
            ..Default::default()
        }
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("BertConfig serialises")
    }
}

/// The first line of a (libtorch) message, without its C++ backtrace (which a panic's
/// debug-formatted error carries with escaped newlines).
fn first_line(message: &str) -> &str {
    let line = message.split("\\n").next().unwrap_or(message);
    line.lines().next().unwrap_or(line)
}
