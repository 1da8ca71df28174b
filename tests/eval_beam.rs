//! Constrained decoding is exact on the tiny parity-fixture T5 models:
//! - beam ≥ number of docids returns every docid ranked exactly as brute-force teacher-forced
//!   scoring of all docids ranks them;
//! - smaller beams return only valid docids, with their true scores;
//! - the result equals HF transformers' `generate(num_beams=W, prefix_allowed_tokens_fn=…)`.
mod common;
mod require;

use std::path::PathBuf;

use grdr::data::synth::Rng;
use grdr::model::hf::{self, LoadOptions};
use grdr::model::pawa::Pawa;
use grdr::model::{GrModel, T5ForConditionalGeneration};
use grdr::search::beam::{score_all, to_hits, BeamProfile, BeamSearch, Generated};
use grdr::search::trie::DocidTrie;
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn load(name: &str) -> GrModel {
    GrModel::standard(hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap().model)
}

/// `n` distinct random docids over tokens 2..vocab (0 = pad/start, 1 = eos), 1–4 tokens + eos.
fn random_docids(rng: &mut Rng, n: usize, vocab: usize, fanout: usize) -> Vec<(i64, Vec<u32>)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    // A small alphabet per position makes shared prefixes (a real trie), not a flat list.
    let alphabet: Vec<u32> = (0..fanout).map(|_| rng.range(2, vocab - 1) as u32).collect();
    while out.len() < n {
        let len = rng.range(1, 4);
        let mut s: Vec<u32> = (0..len).map(|_| alphabet[rng.range(0, fanout - 1)]).collect();
        s.push(1);
        if seen.insert(s.clone()) {
            out.push((out.len() as i64, s));
        }
    }
    out
}

#[test]
fn exhaustive_beam_equals_brute_force_ranking() {
    tch::set_num_threads(1);
    for name in ["t5_v10", "t5_v11"] {
        let model = load(name);
        let vocab = model.config.vocab_size as usize;
        let mut rng = Rng::new(7);
        for trial in 0..4 {
            let docids = random_docids(&mut rng, 5 + 7 * trial, vocab, 3 + trial);
            let trie = DocidTrie::build(&docids, 1).unwrap();
            let queries = common::random_queries(&mut rng, 3, 6, vocab);
            let (ids, mask) = common::query_batch(&queries);
            let seqs: Vec<Vec<u32>> = docids.iter().map(|d| d.1.clone()).collect();
            let brute = score_all(&model, &ids, &mask, &seqs); // (B, N)
            let w = docids.len() + trial; // ≥ number of docids
            let got = BeamSearch::new(&model, &trie, w).search(&ids, &mask);
            for (q, (gens, scores)) in got.iter().zip(&brute).enumerate() {
                assert_eq!(gens.len(), docids.len(), "{name} trial {trial} query {q}: every docid is returned");
                // Scores equal the teacher-forced ones (f32 sums in another order: 1e-4).
                for g in gens {
                    let d = docids.iter().position(|d| d.1 == g.tokens).expect("a real docid");
                    assert!((g.score - scores[d]).abs() < 1e-4, "{name}: {} vs {}", g.score, scores[d]);
                }
                // Ranking: the brute-force order, wherever scores differ by more than 1e-4.
                let mut order: Vec<usize> = (0..docids.len()).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                for (rank, g) in gens.iter().enumerate() {
                    let expect = &docids[order[rank]];
                    if expect.1 != g.tokens {
                        let d = docids.iter().position(|d| d.1 == g.tokens).unwrap();
                        assert!(
                            (scores[d] - scores[order[rank]]).abs() < 1e-4,
                            "{name} trial {trial} q {q} rank {rank}"
                        );
                    }
                }
                // As hits: every document, best first.
                let hits = to_hits(&trie, gens, docids.len());
                assert_eq!(hits.len(), docids.len());
            }
        }
    }
}

#[test]
fn small_beams_return_only_valid_docids_with_true_scores() {
    tch::set_num_threads(1);
    let model = load("t5_v11");
    let vocab = model.config.vocab_size as usize;
    let mut rng = Rng::new(11);
    let docids = random_docids(&mut rng, 60, vocab, 6);
    let trie = DocidTrie::build(&docids, 1).unwrap();
    let queries = common::random_queries(&mut rng, 4, 5, vocab);
    let (ids, mask) = common::query_batch(&queries);
    let seqs: Vec<Vec<u32>> = docids.iter().map(|d| d.1.clone()).collect();
    let brute = score_all(&model, &ids, &mask, &seqs);
    for w in [1, 2, 3, 5, 10] {
        let got = BeamSearch::new(&model, &trie, w).search(&ids, &mask);
        for (gens, scores) in got.iter().zip(&brute) {
            assert!(!gens.is_empty() && gens.len() <= w);
            for g in gens {
                assert!(trie.is_valid(&g.tokens), "invalid docid {:?}", g.tokens);
                let d = docids.iter().position(|d| d.1 == g.tokens).unwrap();
                assert!((g.score - scores[d]).abs() < 1e-4);
            }
            for pair in gens.windows(2) {
                assert!(pair[0].score >= pair[1].score);
            }
        }
    }
}

/// The parity fixture `name` trained for a few hundred steps to map each query to a docid
/// (query i → docid i mod n, teacher-forced NLL, AdamW), as DSI's retrieval examples do:
/// like a real GR model its log-probabilities are peaked and its beams' scores spread.
/// With `pawa`, a PAWA decoder over tokens 2.. (every docid token) is trained with it.
fn trained(name: &str, queries: &[Vec<i64>], docids: &[(i64, Vec<u32>)], pawa: bool) -> GrModel {
    let loaded = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
    let t5 = loaded.model;
    let pawa = pawa.then(|| {
        let vocab = t5.config.vocab_size;
        Pawa::new(&(loaded.vs.root() / "grdr_head" / "pawa"), &t5.config, &t5.shared, 2, vocab - 2, 4, 1).unwrap()
    });
    let model = GrModel { t5, pawa, np: None };
    train_to_map(&model, &loaded.vs, queries, docids);
    model
}

/// 300 AdamW steps of teacher-forced NLL: query i → docid i mod n (in the model's output
/// vocabulary), every trainable variable of `vs`.
fn train_to_map(model: &GrModel, vs: &tch::nn::VarStore, queries: &[Vec<i64>], docids: &[(i64, Vec<u32>)]) {
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut opt = grdr::train::optim::AdamW::new(
        named,
        grdr::train::optim::AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    );
    let (ids, mask) = common::query_batch(queries);
    let depth = docids.iter().map(|d| d.1.len()).max().unwrap();
    let labels: Vec<i64> = (0..queries.len())
        .flat_map(|i| {
            let d = &docids[i % docids.len()].1;
            (0..depth).map(move |t| d.get(t).map_or(-100, |&x| x as i64))
        })
        .collect();
    let labels = Tensor::from_slice(&labels).view([queries.len() as i64, depth as i64]);
    for _ in 0..300 {
        let logits = model.forward(&ids, &mask, &model.shift_right(&labels), false, false).logits;
        let v = logits.size()[2];
        let loss = logits.view([-1, v]).cross_entropy_loss::<Tensor>(
            &labels.view([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        );
        opt.zero_grad();
        loss.backward();
        opt.step(3e-3);
    }
}

/// Pruning is exact: the same docids and scores as scoring every beam's vocabulary row, on
/// a random fixture, whose log-probabilities are nearly flat (nothing to prune), and on the
/// fixtures trained to map queries to docids (training loss ≈ 0.07), where rows are pruned.
/// (On the shipped dsi-semantic-scifact model a third of all rows are: docs/BENCHMARKS.md.)
#[test]
fn pruning_beams_changes_nothing() {
    tch::set_num_threads(1);
    for (name, train, pawa) in
        [("t5_v11", false, false), ("t5_v10", true, false), ("t5_v11", true, false), ("t5_v11", true, true)]
    {
        let mut rng = Rng::new(31);
        let vocab = load(name).config.vocab_size as usize;
        let docids = random_docids(&mut rng, 120, vocab, 7);
        let trie = DocidTrie::build(&docids, 1).unwrap();
        let queries = common::random_queries(&mut rng, 16, 6, vocab);
        let model = if train { trained(name, &queries, &docids, pawa) } else { load(name) };
        let (ids, mask) = common::query_batch(&queries);
        let (mut made, mut all) = (0, 0);
        tch::no_grad(|| {
            for w in [1, 2, 3, 5, 10, 40] {
                let mut search = BeamSearch::new(&model, &trie, w);
                let mut full = BeamProfile::default();
                search.prune = false;
                let want = search.search_profiled(&ids, &mask, &mut full);
                let mut pruned = BeamProfile::default();
                search.prune = true;
                let got = search.search_profiled(&ids, &mask, &mut pruned);
                assert_eq!(full.vocab_rows, full.rows);
                assert_eq!(pruned.rows, full.rows, "{name} trained {train} W={w}: the same beams ran");
                for (q, (g, e)) in got.iter().zip(&want).enumerate() {
                    let tokens = |v: &[Generated<grdr::search::trie::NodeId>]| {
                        v.iter().map(|x| x.tokens.clone()).collect::<Vec<_>>()
                    };
                    assert_eq!(tokens(g), tokens(e), "{name} trained {train} W={w} q{q}");
                    for (a, b) in g.iter().zip(e) {
                        assert!(
                            (a.score - b.score).abs() <= 1e-5 * b.score.abs().max(1.0),
                            "{} vs {}",
                            a.score,
                            b.score
                        );
                    }
                }
                made += pruned.vocab_rows;
                all += full.rows;
            }
        });
        eprintln!("{name} trained {train}: vocabulary rows {made} of {all}");
        if train {
            assert!(made < all, "{name}: {made} of {all} vocabulary rows made");
        }
    }
}

/// PAWA: beam search over the adaptive logits (the prefix decoder stepped with its own KV
/// cache) returns every docid with its teacher-forced score (the prefix decoder run over the
/// whole target), ranked as brute force ranks them, on a fixture trained with PAWA — whose
/// adaptive part is far from zero, so a search that ignored it would rank differently.
#[test]
fn pawa_beam_equals_brute_force_on_a_trained_fixture() {
    tch::set_num_threads(1);
    let mut rng = Rng::new(5);
    let vocab = load("t5_v11").config.vocab_size as usize;
    let docids = random_docids(&mut rng, 24, vocab, 4);
    let trie = DocidTrie::build(&docids, 1).unwrap();
    let queries = common::random_queries(&mut rng, 6, 6, vocab);
    let model = trained("t5_v11", &queries, &docids, true);
    let u = model.pawa.as_ref().unwrap().token_factors.abs().max().double_value(&[]);
    assert!(u > 1e-2, "training moved the adaptive projection (max |U| {u})");
    let (ids, mask) = common::query_batch(&queries);
    let seqs: Vec<Vec<u32>> = docids.iter().map(|d| d.1.clone()).collect();
    let brute = tch::no_grad(|| score_all(&model, &ids, &mask, &seqs));
    // The same backbone without the adaptive part.
    let GrModel { t5, pawa, .. } = model;
    let standard = GrModel::standard(t5);
    let without = tch::no_grad(|| score_all(&standard, &ids, &mask, &seqs));
    let model = GrModel { t5: standard.t5, pawa, np: None };
    let moved = brute.iter().flatten().zip(without.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-2, "the adaptive part changes the scores (by at most {moved})");
    exhaustive_beam_matches(&model, &trie, &docids, &ids, &mask, &brute);
}

/// A beam as wide as the docids returns every docid with its brute-force score, best first.
fn exhaustive_beam_matches(
    model: &GrModel,
    trie: &DocidTrie,
    docids: &[(i64, Vec<u32>)],
    ids: &Tensor,
    mask: &Tensor,
    brute: &[Vec<f32>],
) -> Vec<Vec<Generated<grdr::search::trie::NodeId>>> {
    let got = tch::no_grad(|| BeamSearch::new(model, trie, docids.len()).search(ids, mask));
    for (q, (gens, scores)) in got.iter().zip(brute).enumerate() {
        assert_eq!(gens.len(), docids.len(), "query {q}: every docid is returned");
        for g in gens {
            let d = docids.iter().position(|d| d.1 == g.tokens).expect("a real docid");
            assert!((g.score - scores[d]).abs() < 1e-4, "q{q}: {} vs {}", g.score, scores[d]);
        }
        for pair in gens.windows(2) {
            assert!(pair[0].score >= pair[1].score);
        }
    }
    got
}

/// NP decoding: D from the fixture's encoder over the docids (2 centroids per token type),
/// the model trained on the docids' entry sequences; beam search over the entries (decoder
/// inputs embedded as their tokens, KV cache) returns every docid with its teacher-forced
/// score, ranked as brute force ranks them — with D re-encoded (ASYNC) after training too.
#[test]
fn np_beam_equals_brute_force_on_a_trained_fixture() {
    tch::set_num_threads(1);
    let mut rng = Rng::new(9);
    let loaded = hf::load::<T5ForConditionalGeneration>(&fixture("t5_v10"), LoadOptions::default()).unwrap();
    let vocab = loaded.model.config.vocab_size as usize;
    let token_docids = random_docids(&mut rng, 24, vocab, 4);
    let rows: Vec<Vec<i64>> =
        token_docids.iter().map(|d| d.1[..d.1.len() - 1].iter().map(|&t| t as i64).collect()).collect();
    let (d, eos) = (loaded.model.config.d_model, loaded.model.config.eos_token_id);
    let np = grdr::model::np::Np::new(&(loaded.vs.root() / "grdr_head" / "np"), &rows, d, eos, 2).unwrap();
    np.refresh(&loaded.model, &rows);
    let model = GrModel { t5: loaded.model, pawa: None, np: Some(np) };
    let queries = common::random_queries(&mut rng, 6, 6, vocab);
    for refresh in [false, true] {
        if refresh {
            model.np.as_ref().unwrap().refresh(&model.t5, &rows);
        }
        let entries = model.np.as_ref().unwrap().row_targets();
        let docids: Vec<(i64, Vec<u32>)> =
            entries.iter().enumerate().map(|(i, e)| (i as i64, e.iter().map(|&x| x as u32).collect())).collect();
        // Entries stand for their tokens; some token type is split into two entries.
        for (e, t) in entries.iter().zip(&token_docids) {
            assert_eq!(model.tokens_of(e), t.1.iter().map(|&x| x as i64).collect::<Vec<_>>());
        }
        assert!(model.lm_head_rows() > 2 + 4, "more entries than token types");
        if !refresh {
            train_to_map(&model, &loaded.vs, &queries, &docids);
        }
        let trie = DocidTrie::build(&docids, 1).unwrap();
        let (ids, mask) = common::query_batch(&queries);
        let seqs: Vec<Vec<u32>> = docids.iter().map(|d| d.1.clone()).collect();
        let brute = tch::no_grad(|| score_all(&model, &ids, &mask, &seqs));
        let got = exhaustive_beam_matches(&model, &trie, &docids, &ids, &mask, &brute);
        if !refresh {
            // Trained: each query's mapped docid comes first.
            for (q, gens) in got.iter().enumerate() {
                assert_eq!(gens[0].tokens, docids[q % docids.len()].1, "query {q}");
            }
        }
    }
}

#[test]
fn equals_hf_generate_with_prefix_allowed_tokens_fn() {
    let Some(py) = require::reference_python() else { return };
    tch::set_num_threads(1);
    for name in ["t5_v10", "t5_v11"] {
        let model = load(name);
        let vocab = model.config.vocab_size as usize;
        let mut rng = Rng::new(23);
        let docids = random_docids(&mut rng, 40, vocab, 5);
        let trie = DocidTrie::build(&docids, 1).unwrap();
        let queries = common::random_queries(&mut rng, 4, 7, vocab);
        let beams = [1usize, 2, 4, 8, 50];
        let spec = serde_json::json!({"docids": docids.iter().map(|d| &d.1).collect::<Vec<_>>(), "queries": queries, "beams": beams});
        let hf = common::hf_parity(&py, "bench_eval_hf_generate.py", &fixture(name), &spec);
        for w in beams {
            for (q, query) in queries.iter().enumerate() {
                let (ids, mask) = common::query_batch(std::slice::from_ref(query));
                let ours = &BeamSearch::new(&model, &trie, w).search(&ids, &mask)[0];
                let theirs = common::hf_hypotheses(&hf, w, q);
                assert_eq!(ours.len(), theirs.len(), "{name} W={w} q{q}: {ours:?} vs {theirs:?}");
                for (g, (t, s)) in ours.iter().zip(&theirs) {
                    assert_eq!(&g.tokens, t, "{name} W={w} q{q}");
                    assert!((g.score as f64 - s).abs() < 1e-4, "{name} W={w} q{q}: {} vs {s}", g.score);
                }
            }
        }
        eprintln!("{name}: beam search equals HF generate for W in {beams:?} on {} queries", queries.len());
    }
}
