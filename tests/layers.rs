//! The library's dependencies run one way: a module may import modules of lower layers only
//! (the list at the top of docs/ARCHITECTURE.md), and only the command line (`cmd/`,
//! `cli.rs`, `main.rs`) knows clap or prints to stdout. Read from the sources, so a new
//! import that points up — or a cycle, which always has one edge pointing up — fails here.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers from the bottom. A module imports only modules of strictly lower layers; the
/// modules sharing a layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["rng", "atomic", "progress", "assets", "device", "parallel", "panic_guard", "cpu"],
    &["config"],
    &["dist"],
    &["data"],
    &["model"],
    &["search"],
    &["eval"],
    &["analysis"],
    &["train"],
    &["sweep"],
    &["report"],
    &["paper"],
    &["cmd"],
    &["cli"],
];

/// Items of the crate root (`lib.rs`) and the module they belong to.
const ROOT_ITEMS: &[(&str, &str)] = &[("Error", "error"), ("Result", "error"), ("VERSION", "error")];

/// Where clap and stdout printing are allowed (paths under src/).
const COMMAND_LINE: &[&str] = &["cmd/", "cli.rs", "main.rs"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (`//` to the end of the line; string contents are kept,
/// which is harmless: a string holding `crate::x` would only make the check stricter).
fn code(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every top-level module or root item named after `crate::`, including each entry of a
/// `crate::{a::x, b}` group.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let after = rest.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let (mut depth, mut start) = (1, 0);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        out.push(ident_at(group[start..j].trim()).to_string());
                        start = j + 1;
                    }
                    _ => {}
                }
                if depth == 0 {
                    out.push(ident_at(group[start..j].trim()).to_string());
                    break;
                }
            }
        } else {
            out.push(ident_at(after).to_string());
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

/// (file, importing module, imported module) for every import that breaks the layering.
fn violations(src: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let Some(mine) = layer_of(&module) else {
            unknown.push(format!("src/{rel}: module `{module}` is in no layer of tests/layers.rs"));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let mut seen = BTreeMap::new();
        for target in crate_refs(&code(&text)) {
            let target =
                ROOT_ITEMS.iter().find(|(item, _)| *item == target).map_or(target.clone(), |(_, m)| m.to_string());
            if target == module {
                continue;
            }
            match layer_of(&target) {
                None => unknown.push(format!("src/{rel}: imports `crate::{target}`, which is in no layer")),
                Some(theirs) if theirs >= mine => {
                    seen.entry(target.clone()).or_insert_with(|| {
                        format!("src/{rel}: `{module}` (layer {mine}) imports `{target}` (layer {theirs})")
                    });
                }
                Some(_) => {}
            }
        }
        bad.extend(seen.into_values());
    }
    (bad, unknown)
}

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_import_only_lower_layers() {
    let (bad, unknown) = violations(&src_dir());
    assert!(unknown.is_empty(), "modules outside the layer list:\n{}", unknown.join("\n"));
    assert!(bad.is_empty(), "imports that point up the layer list:\n{}", bad.join("\n"));
}

#[test]
fn only_the_command_line_knows_clap_or_prints_to_stdout() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src_dir()).unwrap().to_string_lossy().replace('\\', "/");
        if COMMAND_LINE.iter().any(|p| rel.starts_with(p)) {
            continue;
        }
        let code = code(&std::fs::read_to_string(&file).unwrap());
        for (n, line) in code.lines().enumerate() {
            if prints_to_stdout(line) || line.contains("clap::") || line.contains("use clap") {
                bad.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "clap or stdout outside cmd/, cli.rs, main.rs:\n{}", bad.join("\n"));
}

/// `println!(` or `print!(` (not `eprintln!(`/`eprint!(`, which write to stderr).
fn prints_to_stdout(line: &str) -> bool {
    ["println!(", "print!("].iter().any(|mac| {
        line.match_indices(mac).any(|(i, _)| !line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
    })
}

/// The checker itself: an upward import and a grouped one are caught, comments are not.
#[test]
fn the_checker_sees_grouped_imports_and_ignores_comments() {
    let refs =
        crate_refs(&code("use crate::{data::Dataset, train::task::Net};\n// crate::cmd\nlet x = crate::eval::f();"));
    assert_eq!(crate_refs(&code("// crate::cmd::x\n")), Vec::<String>::new());
    assert_eq!(refs, ["data", "train", "eval"]);
    assert!(layer_of("train").unwrap() > layer_of("eval").unwrap());
    assert!(prints_to_stdout("println!(\"x\")") && prints_to_stdout("print!(\"x\")"));
    assert!(!prints_to_stdout("eprintln!(\"x\")") && !prints_to_stdout("eprint!(\"x\")"));
}
