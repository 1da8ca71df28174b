//! SEAL decoding — the beam engine under [`FmConstraint`], the FM-index of a corpus — is exact
//! on the tiny parity-fixture T5 models (random corpora of 3–8-token documents over a small
//! alphabet, so that n-grams repeat):
//! - with history and a beam nothing is pruned by, the output is every distinct n-gram of the
//!   corpus (1..=max_len tokens) exactly once, each with its teacher-forced Σ log p
//!   ([`score_all`]) and an FM-index state counting its occurrences as brute force over the
//!   documents does — on one shard and on two;
//! - with small beams, every output is a corpus n-gram with its true score, and each step
//!   outputs at most 2W of them: the best 2W (by teacher-forced score) of all corpus
//!   extensions of the W best of the step before;
//! - without history, eos allowed where an n-gram ends a document, the result equals HF
//!   transformers' `generate(num_beams=W, prefix_allowed_tokens_fn=…)` constrained by a plain
//!   suffix array over the same corpus (`scripts/seal_reference.py parity`).
mod common;
mod require;

use std::collections::BTreeMap;
use std::path::PathBuf;

use grdr::data::synth::Rng;
use grdr::model::hf::{self, LoadOptions};
use grdr::model::{GrModel, T5ForConditionalGeneration};
use grdr::search::beam::{score_all, BeamSearch, Generated};
use grdr::search::constraint::{FmConstraint, FmState};
use grdr::search::fm_index::FmIndex;
use tch::Tensor;

/// The fixtures' eos (0 = pad and decoder start).
const EOS: u32 = 1;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn load(name: &str) -> GrModel {
    GrModel::standard(hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap().model)
}

/// `n` documents of 3–8 tokens (eos excluded) drawn from `alphabet` random token ids in
/// 2..vocab: a small alphabet makes n-grams repeat within and across documents.
fn random_docs(rng: &mut Rng, n: usize, vocab: usize, alphabet: usize) -> Vec<Vec<u32>> {
    let alpha: Vec<u32> = (0..alphabet).map(|_| rng.range(2, vocab - 1) as u32).collect();
    (0..n).map(|_| (0..rng.range(3, 8)).map(|_| alpha[rng.range(0, alphabet - 1)]).collect()).collect()
}

/// The FM-index of `docs` cut into `shards` shards of consecutive documents.
fn index(docs: &[Vec<u32>], shards: usize) -> Vec<FmIndex> {
    let per = docs.len().div_ceil(shards);
    docs.chunks(per)
        .enumerate()
        .map(|(s, part)| FmIndex::build(part, EOS, "test", s, (s * per) as u64).unwrap())
        .collect()
}

/// Every distinct n-gram of 1..=`max_len` tokens within a document, with its occurrences.
fn ngrams(docs: &[Vec<u32>], max_len: usize) -> BTreeMap<Vec<u32>, u64> {
    let mut out = BTreeMap::new();
    for d in docs {
        for i in 0..d.len() {
            for n in 1..=max_len.min(d.len() - i) {
                *out.entry(d[i..i + n].to_vec()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Per query, the teacher-forced Σ log p of every n-gram of `grams`.
fn true_scores(
    model: &GrModel,
    ids: &Tensor,
    mask: &Tensor,
    grams: &BTreeMap<Vec<u32>, u64>,
) -> Vec<BTreeMap<Vec<u32>, f32>> {
    let seqs: Vec<Vec<u32>> = grams.keys().cloned().collect();
    score_all(model, ids, mask, &seqs).into_iter().map(|row| seqs.iter().cloned().zip(row).collect()).collect()
}

/// A history's outputs by decoding step (= token length), in output order.
fn by_step(gens: &[Generated<FmState>]) -> BTreeMap<usize, Vec<&Generated<FmState>>> {
    let mut steps: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for g in gens {
        steps.entry(g.tokens.len()).or_default().push(g);
    }
    steps
}

#[test]
fn history_is_every_corpus_ngram_with_its_exact_score() {
    tch::set_num_threads(1);
    let max_len = 3;
    let w = 200; // ≥ the n-grams of any length: nothing is pruned
    for (name, shards) in [("t5_v10", 1), ("t5_v11", 1), ("t5_v11", 2)] {
        let model = load(name);
        let vocab = model.config.vocab_size as usize;
        let mut rng = Rng::new(5);
        let docs = random_docs(&mut rng, 6, vocab, 4);
        let grams = ngrams(&docs, max_len);
        assert!(grams.len() <= w);
        let fm = index(&docs, shards);
        let constraint = FmConstraint::new(&fm, max_len, false);
        let queries = common::random_queries(&mut rng, 3, 6, vocab);
        let (ids, mask) = common::query_batch(&queries);
        let truth = true_scores(&model, &ids, &mask, &grams);
        let got = BeamSearch::new(&model, &constraint, w).with_history().search(&ids, &mask);
        assert_eq!(got.len(), queries.len());
        for (q, (gens, scores)) in got.iter().zip(&truth).enumerate() {
            let mut seen: Vec<Vec<u32>> = gens.iter().map(|g| g.tokens.clone()).collect();
            seen.sort();
            assert_eq!(
                seen,
                grams.keys().cloned().collect::<Vec<_>>(),
                "{name} ({shards} shards) q{q}: every n-gram once"
            );
            for g in gens {
                let want = scores[&g.tokens];
                assert!((g.score - want).abs() < 1e-4, "{name} q{q} {:?}: {} vs {want}", g.tokens, g.score);
                assert_eq!(g.state.count(), grams[&g.tokens], "{name} ({shards} shards) q{q}: count of {:?}", g.tokens);
            }
            for (step, outs) in by_step(gens) {
                assert!(outs.windows(2).all(|p| p[0].score >= p[1].score), "{name} q{q} step {step}: best first");
            }
        }
        eprintln!(
            "{name}, {shards} shard(s): {} n-grams of ≤ {max_len} tokens, each once with its exact score, for {} queries",
            grams.len(),
            queries.len()
        );
    }
}

#[test]
fn small_beams_return_corpus_ngrams_with_true_scores() {
    tch::set_num_threads(1);
    let max_len = 4;
    for name in ["t5_v10", "t5_v11"] {
        let model = load(name);
        let vocab = model.config.vocab_size as usize;
        let mut rng = Rng::new(13);
        let docs = random_docs(&mut rng, 10, vocab, 5);
        let grams = ngrams(&docs, max_len);
        let fm = index(&docs, 1);
        let constraint = FmConstraint::new(&fm, max_len, false);
        let queries = common::random_queries(&mut rng, 3, 6, vocab);
        let (ids, mask) = common::query_batch(&queries);
        let truth = true_scores(&model, &ids, &mask, &grams);
        let mut stopped = 0; // searches whose running n-grams all ended documents before max_len
        for w in [1, 2, 4] {
            let got = BeamSearch::new(&model, &constraint, w).with_history().search(&ids, &mask);
            for (q, (gens, scores)) in got.iter().zip(&truth).enumerate() {
                let ctx = format!("{name} W={w} q{q}");
                for g in gens {
                    let want =
                        *scores.get(&g.tokens).unwrap_or_else(|| panic!("{ctx}: {:?} is no corpus n-gram", g.tokens));
                    assert!((g.score - want).abs() < 1e-4, "{ctx} {:?}: {} vs {want}", g.tokens, g.score);
                    assert_eq!(g.state.count(), grams[&g.tokens], "{ctx}: count of {:?}", g.tokens);
                }
                let steps = by_step(gens);
                // Step t: the best 2W of the corpus extensions of step t−1's W best (the running
                // n-grams), compared as sorted scores so that near-ties may swap; none once the
                // running n-grams have no extension (each ends a document), as with W = 1 here.
                let mut running: Vec<Vec<u32>> = vec![Vec::new()];
                for step in 1..=max_len {
                    let outs = steps.get(&step).map_or(&[][..], Vec::as_slice);
                    assert!(outs.len() <= 2 * w, "{ctx} step {step}: {} outputs", outs.len());
                    for g in outs {
                        assert!(
                            running.iter().any(|r| g.tokens.starts_with(r)),
                            "{ctx}: {:?} extends no running n-gram",
                            g.tokens
                        );
                    }
                    let mut cands: Vec<f32> = scores
                        .iter()
                        .filter(|(s, _)| s.len() == step && running.iter().any(|r| s.starts_with(r)))
                        .map(|(_, &v)| v)
                        .collect();
                    cands.sort_by(|a, b| b.total_cmp(a));
                    cands.truncate(2 * w);
                    let ours: Vec<f32> = outs.iter().map(|g| g.score).collect();
                    assert_eq!(ours.len(), cands.len(), "{ctx} step {step}: {ours:?} vs best {cands:?}");
                    for (a, b) in ours.iter().zip(&cands) {
                        assert!((a - b).abs() < 1e-4, "{ctx} step {step}: {ours:?} vs best {cands:?}");
                    }
                    running = outs.iter().take(w).map(|g| g.tokens.clone()).collect();
                }
                stopped += usize::from(steps.len() < max_len);
            }
        }
        eprintln!(
            "{name}: W in [1, 2, 4], {} queries: each step the best 2W corpus n-grams with true scores \
             ({stopped} searches ran out of extensions before {max_len} tokens)",
            queries.len()
        );
    }
}

#[test]
fn equals_hf_generate_with_a_suffix_array_constraint() {
    let Some(py) = require::reference_python() else { return };
    tch::set_num_threads(1);
    let max_len = 4;
    let beams = [1usize, 2, 4, 8];
    for name in ["t5_v10", "t5_v11"] {
        let model = load(name);
        let vocab = model.config.vocab_size as usize;
        let mut rng = Rng::new(29);
        let docs = random_docs(&mut rng, 8, vocab, 5);
        let fm = index(&docs, 1);
        let constraint = FmConstraint::new(&fm, max_len, true);
        let queries = common::random_queries(&mut rng, 4, 7, vocab);
        let spec =
            serde_json::json!({"docs": docs, "eos": EOS, "queries": queries, "beams": beams, "max_len": max_len});
        let hf = common::hf_parity(&py, "seal_reference.py", &fixture(name), &spec);
        let (ids, mask) = common::query_batch(&queries);
        let mut ended_by_eos = 0;
        for w in beams {
            let got = BeamSearch::new(&model, &constraint, w).search(&ids, &mask);
            for (q, ours) in got.iter().enumerate() {
                let theirs = common::hf_hypotheses(&hf, w, q);
                assert_eq!(ours.len(), theirs.len(), "{name} W={w} q{q}: {ours:?} vs {theirs:?}");
                for (g, (t, s)) in ours.iter().zip(&theirs) {
                    assert_eq!(&g.tokens, t, "{name} W={w} q{q}: {ours:?} vs {theirs:?}");
                    assert!((g.score as f64 - s).abs() < 1e-4, "{name} W={w} q{q}: {} vs {s}", g.score);
                    ended_by_eos += usize::from(g.tokens.last() == Some(&EOS));
                }
            }
        }
        // Both kinds of endings were compared: at a document's end (eos) and at max_len.
        assert!(ended_by_eos > 0, "{name}: no sequence ended with eos");
        eprintln!(
            "{name}: SEAL beam search equals HF generate over a suffix array for W in {beams:?} on {} queries ({ended_by_eos} sequences ended by eos)",
            queries.len()
        );
    }
}

/// `grdr index fm` on a small synthetic dataset: shards of whole row groups that open and
/// hold every document; misuse and damage refused with the README's exit codes.
#[test]
fn index_fm_writes_checked_shards_and_refuses_misuse() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("synth");
    let ds_s = ds.to_str().unwrap();
    common::grdr_ok(&["synth", "--docs", "300", "--queries", "5", "--row-group-rows", "100", "--output", ds_s]);
    let out = tmp.path().join("fm");
    let out_s = out.to_str().unwrap();
    common::grdr_ok(&["index", "fm", "--data", ds_s, "--output", out_s, "--shard-tokens", "1"]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["shards"].as_array().unwrap().len(), 3, "one row group a shard at 1 token: {index}");
    let shards = grdr::search::fm_index::open_dir(&out, 300, "t5-tokenizer").unwrap();
    assert_eq!(shards.iter().map(|s| s.meta.n_docs).sum::<u64>(), 300);
    assert_eq!(shards[2].meta.first_doc, 200);
    // Existing output without --overwrite, zero shard size: usage errors (2), nothing written.
    let again = common::grdr(&["index", "fm", "--data", ds_s, "--output", out_s]);
    assert_eq!(again.status.code(), Some(2), "{}", common::stderr(&again));
    let zero = common::grdr(&[
        "index",
        "fm",
        "--data",
        ds_s,
        "--output",
        tmp.path().join("z").to_str().unwrap(),
        "--shard-tokens",
        "0",
    ]);
    assert_eq!(zero.status.code(), Some(2), "{}", common::stderr(&zero));
    assert!(!tmp.path().join("z").exists());
    // A damaged shard: refused as input (3), naming the file.
    let shard = out.join("shard-00001.fm");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let err = grdr::search::fm_index::open_dir(&out, 300, "t5-tokenizer").err().expect("refused");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("shard-00001.fm") && err.to_string().contains("checksum"), "{err}");
    // The wrong dataset: refused by document count.
    let err = grdr::search::fm_index::open_dir(&tmp.path().join("nowhere"), 300, "t5-tokenizer").err().unwrap();
    assert_eq!(err.exit_code(), 2, "{err}");
}
