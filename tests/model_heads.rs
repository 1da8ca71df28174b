//! Retrieval heads against brute force: pooling, dual-encoder projection and scores, ColBERT
//! query augmentation and both alignment directions, GR docid vocabularies, vocabulary
//! resizing and sequence log-likelihood scoring.
mod require;
use std::path::PathBuf;

use grdr::model::colbert::{
    late_interaction, late_interaction_pairs, Alignment, ColbertConfig, ColbertHead, LateInteraction,
};
use grdr::model::dual::{DualConfig, DualHead};
use grdr::model::encoder::{pool, Pooling};
use grdr::model::generative::{resize_token_embeddings, score_docids, token_nll, DocidVocab};
use grdr::model::hf::{self, LoadOptions};
use grdr::model::T5ForConditionalGeneration;
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]) <= tol
}

fn v(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn pooling_respects_the_mask() {
    let h = Tensor::arange(2 * 3 * 2, CPU).view([2, 3, 2]);
    let mask = Tensor::from_slice(&[1i64, 1, 0, 1, 0, 0]).view([2, 3]);
    assert_eq!(v(&pool(&h, &mask, Pooling::Mean)), vec![1.0, 2.0, 6.0, 7.0]);
    assert_eq!(v(&pool(&h, &mask, Pooling::First)), vec![0.0, 1.0, 6.0, 7.0]);
}

#[test]
fn dual_head_projects_normalises_and_scales() {
    let vs = nn::VarStore::new(Device::Cpu);
    let head = DualHead::new(&vs.root(), 8, DualConfig { dim: Some(4), temperature: 0.5, ..Default::default() });
    assert!(vs.variables().contains_key("projection.weight"));
    let h = Tensor::randn([3, 5, 8], CPU);
    let e = tch::no_grad(|| head.embed(&h, &Tensor::ones([3, 5], (Kind::Int64, Device::Cpu))));
    assert_eq!(e.size(), vec![3, 4]);
    assert!(close(&e.norm_scalaropt_dim(2, [-1i64].as_slice(), false), &Tensor::ones([3], CPU), 1e-6));
    let s = head.scores(&e, &e);
    assert!(close(&s.diagonal(0, 0, 1), &Tensor::full([3], 2.0, CPU), 1e-5));
    assert!(close(&head.pair_scores(&e, &e), &s.diagonal(0, 0, 1), 1e-6));
}

#[test]
fn colbert_query_augmentation_pads_with_attended_tokens() {
    let vs = nn::VarStore::new(Device::Cpu);
    let head =
        ColbertHead::new(&vs.root(), 8, ColbertConfig { query_len: 5, query_augment_token: 103, ..Default::default() });
    let ids = Tensor::from_slice(&[7i64, 8, 9, 7, 0, 0]).view([2, 3]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0]).view([2, 3]);
    let (a, m) = head.augment_query(&ids, &mask);
    assert_eq!(Vec::<i64>::try_from(a.flatten(0, -1)).unwrap(), vec![7, 8, 9, 103, 103, 7, 103, 103, 103, 103]);
    assert_eq!(m.sum(Kind::Int64).int64_value(&[]), 10);
    let h = Tensor::randn([2, 4, 8], CPU);
    let tv = tch::no_grad(|| head.token_vectors(&h, &Tensor::from_slice(&[1i64, 1, 1, 0, 1, 1, 0, 0]).view([2, 4])));
    assert_eq!(tv.size(), vec![2, 4, 128]);
    assert_eq!(tv.get(1).get(3).abs().sum(Kind::Float).double_value(&[]), 0.0);
}

/// Brute-force scores of one (query, document) pair from explicit loops.
fn brute(q: &[Vec<f64>], d: &[Vec<f64>], align: Alignment) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    match align {
        Alignment::QueryToDoc => q.iter().map(|qj| d.iter().map(|di| dot(qj, di)).fold(f64::MIN, f64::max)).sum(),
        Alignment::DocToQueryMax => d.iter().map(|di| q.iter().map(|qj| dot(qj, di)).fold(f64::MIN, f64::max)).sum(),
        Alignment::DocToQuerySoft => d
            .iter()
            .map(|di| {
                let s: Vec<f64> = q.iter().map(|qj| dot(qj, di)).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                s.iter().map(|x| x * (x - m).exp() / z).sum::<f64>()
            })
            .sum(),
    }
}

fn rows(t: &Tensor, n: i64) -> Vec<Vec<f64>> {
    (0..n).map(|i| v(&t.get(i))).collect()
}

#[test]
fn late_interaction_equals_brute_force_in_both_directions() {
    tch::manual_seed(3);
    let q = Tensor::randn([3, 4, 6], CPU);
    let d = Tensor::randn([5, 7, 6], CPU);
    let q_len = [4i64, 2, 3];
    let d_len = [7i64, 1, 5, 3, 6];
    let mk = |lens: &[i64], l: i64| {
        let m: Vec<i64> = lens.iter().flat_map(|&n| (0..l).map(move |i| (i < n) as i64)).collect();
        Tensor::from_slice(&m).view([lens.len() as i64, l])
    };
    let (qm, dm) = (mk(&q_len, 4), mk(&d_len, 7));
    for align in [Alignment::QueryToDoc, Alignment::DocToQuerySoft, Alignment::DocToQueryMax] {
        for normalized in [false, true] {
            let score = LateInteraction { alignment: align, normalized };
            let all = late_interaction(&q, &qm, &d, &dm, score);
            assert_eq!(all.size(), vec![3, 5]);
            for b in 0..3 {
                for n in 0..5 {
                    let (lq, ld) = (q_len[b as usize], d_len[n as usize]);
                    // Eq. 1's Z: one unit of alignment weight per aligned token.
                    let z = match (normalized, align) {
                        (false, _) => 1.0,
                        (true, Alignment::QueryToDoc) => lq as f64,
                        (true, _) => ld as f64,
                    };
                    let want = brute(&rows(&q.get(b), lq), &rows(&d.get(n), ld), align) / z;
                    let got = all.double_value(&[b, n]);
                    assert!((got - want).abs() < 1e-4, "{score:?} q{b} d{n}: {got} vs {want}");
                }
            }
            // Aligned pairs equal the diagonal of the all-pairs matrix.
            let idx = Tensor::from_slice(&[0i64, 1, 2]);
            let pairs = late_interaction_pairs(&q, &qm, &d.index_select(0, &idx), &dm.index_select(0, &idx), score);
            assert!(close(&pairs, &all.narrow(1, 0, 3).diagonal(0, 0, 1), 1e-5), "{score:?}");
        }
    }
}

#[test]
fn docid_vocabularies_map_docids_to_tokens() {
    let atomic = DocidVocab::Atomic { base: 100, n_docs: 3 };
    assert_eq!(atomic.atomic_tokens(2, 1).unwrap(), vec![102, 1]);
    assert!(atomic.atomic_tokens(3, 1).is_err());
    assert_eq!(atomic.token_names(), vec!["<d0>", "<d1>", "<d2>"]);
    let sem = DocidVocab::Semantic { base: 100, sizes: vec![4, 4, 10] };
    assert_eq!(sem.n_new_tokens(), 18);
    assert_eq!(sem.semantic_tokens(&[3, 0, 9], 1).unwrap(), vec![103, 104, 117, 1]);
    assert!(sem.semantic_tokens(&[4], 1).is_err());
    assert_eq!(sem.token_names()[4], "<s1_0>");
    assert_eq!(DocidVocab::Text.n_new_tokens(), 0);
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

/// Growing the vocabulary keeps every old logit (the new rows only add columns) and the new
/// parameters are trainable; sequence scores equal −NLL of teacher forcing.
#[test]
fn resize_keeps_old_logits_and_scores_equal_teacher_forcing() {
    for name in ["t5_v10", "t5_v11"] {
        let mut l = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
        let io: std::collections::HashMap<String, Tensor> =
            grdr::model::safetensors::read_all(&fixture(name).join("io.safetensors")).unwrap().into_iter().collect();
        let (ids, mask, dec) = (&io["input_ids"], &io["attention_mask"], &io["decoder_input_ids"]);
        let before = tch::no_grad(|| l.model.forward(ids, mask, dec, false, false).logits);
        let v = l.model.config.vocab_size;
        resize_token_embeddings(&mut l.model, v + 7, v).unwrap();
        let after = tch::no_grad(|| l.model.forward(ids, mask, dec, false, false).logits);
        assert_eq!(after.size()[2], v + 7);
        assert!(close(&after.narrow(2, 0, v), &before, 1e-6), "{name}");
        assert_eq!(l.vs.variables()["shared.weight"].size(), vec![v + 7, 32]);
        let trainable: i64 = l.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        let all: i64 = l.vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(trainable, all, "{name}: resized weights must stay trainable");

        // Two candidate docids per query (using a new token), scored by log-likelihood.
        let cands: Vec<Vec<Vec<i64>>> = (0..3).map(|b| vec![vec![v + b, 1], vec![5, 6 + b, 1]]).collect();
        let gr = grdr::model::GrModel::standard(l.model);
        let scores = score_docids(&gr, ids, mask, &cands);
        for (b, cs) in cands.iter().enumerate() {
            for (c, cand) in cs.iter().enumerate() {
                let labels = Tensor::from_slice(cand).unsqueeze(0);
                let idx = Tensor::from_slice(&[b as i64]);
                let (q, m) = (ids.index_select(0, &idx), mask.index_select(0, &idx));
                let logits = tch::no_grad(|| gr.forward(&q, &m, &gr.shift_right(&labels), false, false).logits);
                let (nll, _) = token_nll(&logits, &labels);
                assert!((scores[b][c] as f64 + nll.double_value(&[])).abs() < 1e-4, "{name} q{b} c{c}");
            }
        }
    }
}

/// Atomic docid tokens take the ids after the real T5 tokenizer's 32,100 tokens, in the model
/// and in the tokenizer, which then encodes a docid string to exactly its token.
#[test]
fn docid_tokens_extend_model_and_tokenizer() {
    let Some(dir) = require::artefact("t5-tokenizer") else { return };
    let mut tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let base = tok.get_vocab_size(true) as i64;
    assert_eq!(base, 32100);
    let mut l = hf::load::<T5ForConditionalGeneration>(&fixture("t5_v11"), LoadOptions::default()).unwrap();
    let vocab = DocidVocab::Atomic { base, n_docs: 5 };
    grdr::model::generative::add_docid_tokens(&mut tok, &vocab).unwrap();
    resize_token_embeddings(&mut l.model, base + vocab.n_new_tokens(), base).unwrap();
    assert_eq!(l.model.config.vocab_size, base + 5);
    assert_eq!(tok.token_to_id("<d3>"), Some(32103));
    let enc = tok.encode("<d3>", true).unwrap();
    let want: Vec<u32> = vocab.atomic_tokens(3, 1).unwrap().iter().map(|&i| i as u32).collect();
    assert_eq!(enc.get_ids(), want.as_slice());
    let tmp = tempfile::tempdir().unwrap();
    hf::export_with_tokenizer(&l.model, &l.vs, &tok, &tmp.path().join("gr"), &[]).unwrap();
    let back = tokenizers::Tokenizer::from_file(tmp.path().join("gr/tokenizer.json")).unwrap();
    assert_eq!(back.token_to_id("<d4>"), Some(32104));
    let m = hf::load::<T5ForConditionalGeneration>(&tmp.path().join("gr"), LoadOptions::default()).unwrap();
    assert_eq!(m.model.config.vocab_size, base + 5);
}

/// PAWA's adaptive logits against the paper's formula computed term by term in f64 on small
/// random weights: logit(v at i) = x_iᵀ(e_v + E_v d'_i) with E_v = U_v W for docid tokens,
/// x_iᵀe_v for the others; and the output vectors the analyses read (`output_rows_at`)
/// reproduce the model's logits at the target tokens.
#[test]
fn pawa_logits_equal_the_formula_term_by_term() {
    use grdr::model::pawa::Pawa;
    use grdr::model::GrModel;
    for name in ["t5_v10", "t5_v11"] {
        let l = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
        let (v, d, r, first, nd) = (l.model.config.vocab_size, l.model.config.d_model, 3i64, 5i64, 11i64);
        let pawa = Pawa::new(&(l.vs.root() / "grdr_head" / "pawa"), &l.model.config, &l.model.shared, first, nd, r, 1)
            .unwrap();
        tch::manual_seed(17);
        tch::no_grad(|| pawa.token_factors.shallow_clone().copy_(&(Tensor::randn([nd, d, r], CPU) * 0.3)));
        let (b, t) = (2i64, 4i64);
        let x = Tensor::randn([b, t, d], CPU);
        let z = Tensor::randn([b, t, d], CPU);
        let logits = Tensor::randn([b, t, v], CPU);
        let got = tch::no_grad(|| pawa.add_to(&logits, &x, &z));
        let (u, w) = (&pawa.token_factors, &pawa.shared_factor);
        for bi in 0..b {
            for ti in 0..t {
                for tok in 0..v {
                    let mut want = logits.double_value(&[bi, ti, tok]);
                    if (first..first + nd).contains(&tok) {
                        // xᵀ U_v (W z): Σ_k Σ_j x_k U[v,k,j] Σ_m W[j,m] z_m
                        for k in 0..d {
                            for j in 0..r {
                                let wz: f64 =
                                    (0..d).map(|m| w.double_value(&[j, m]) * z.double_value(&[bi, ti, m])).sum();
                                want += x.double_value(&[bi, ti, k]) * u.double_value(&[tok - first, k, j]) * wz;
                            }
                        }
                    }
                    let have = got.double_value(&[bi, ti, tok]);
                    assert!(
                        (have - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{name} ({bi},{ti},{tok}): {have} vs {want}"
                    );
                }
            }
        }
        // The analyses' output vectors: h · row(label at i) is the model's logit there.
        let gr = GrModel { t5: l.model, pawa: Some(pawa), np: None };
        let io: std::collections::HashMap<String, Tensor> =
            grdr::model::safetensors::read_all(&fixture(name).join("io.safetensors")).unwrap().into_iter().collect();
        let (ids, mask) = (&io["input_ids"], &io["attention_mask"]);
        let labels = Tensor::from_slice(&[first, first + 3, 1, first + 10, 7, 1]).view([2, 3]);
        let labels = labels.narrow(0, 0, ids.size()[0].min(2));
        let (ids, mask) = (ids.narrow(0, 0, labels.size()[0]), mask.narrow(0, 0, labels.size()[0]));
        let dec_in = gr.shift_right(&labels);
        tch::no_grad(|| {
            let out = gr.forward(&ids, &mask, &dec_in, false, false);
            let at_labels = out.logits.gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1);
            let rows = gr.output_rows_at(&labels, &dec_in);
            let dot = (&out.decoder_hidden * rows).sum_dim_intlist(-1, false, Kind::Float);
            assert!(close(&dot, &at_labels, 1e-4), "{name}: output rows reproduce the logits");
        });
    }
}

/// NP decoding against Eq. 20 term by term in f64 on a fixture T5: each entry's row of D is
/// the mean of the encoder's output vectors at the occurrences assigned to it (every
/// occurrence of a token type with one cluster; eos its own entry), each occurrence at its
/// nearest centroid; the logit of entry e after decoder state h is x·D_e (x the state as the
/// lm_head takes it); decoder inputs embed an entry as its token (the decoder states equal
/// the standard model's on the token sequence); `output_rows_at` reproduces the logits.
#[test]
fn np_logits_equal_the_formula_term_by_term() {
    use grdr::model::np::Np;
    use grdr::model::GrModel;
    for (name, clusters) in [("t5_v10", 1usize), ("t5_v11", 2)] {
        let l = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
        let (d, eos) = (l.model.config.d_model, l.model.config.eos_token_id);
        let rows: Vec<Vec<i64>> = vec![vec![5, 7, 9], vec![7, 5], vec![9, 9, 7, 11], vec![5]];
        let np = Np::new(&(l.vs.root() / "grdr_head" / "np"), &rows, d, eos, clusters).unwrap();
        np.refresh(&l.model, &rows);
        let targets = np.row_targets();
        // Every occurrence's encoder vector, encoded one docid at a time (no padding).
        let mut occ: Vec<(i64, i64, Vec<f64>)> = Vec::new(); // (token, entry, vector)
        for (r, row) in rows.iter().enumerate() {
            let ids: Vec<i64> = row.iter().copied().chain([eos]).collect();
            let ids_t = Tensor::from_slice(&ids).view([1, -1]);
            let enc = tch::no_grad(|| l.model.encode(&ids_t, &ids_t.ones_like(), false));
            for (j, &t) in ids.iter().enumerate() {
                let v: Vec<f64> = (0..d).map(|k| enc.double_value(&[0, j as i64, k])).collect();
                occ.push((t, targets[r][j], v));
            }
        }
        let table = &np.table;
        let row_of = |e: i64| -> Vec<f64> { (0..d).map(|k| table.double_value(&[e, k])).collect() };
        let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        for &(t, e, ref v) in &occ {
            assert_eq!(model_token(&np, e), t, "{name}: entry {e} stands for token {t}");
            // Its centroid is the mean of the occurrences assigned to it…
            let mine: Vec<&Vec<f64>> = occ.iter().filter(|o| o.1 == e).map(|o| &o.2).collect();
            let mean: Vec<f64> =
                (0..d as usize).map(|k| mine.iter().map(|m| m[k]).sum::<f64>() / mine.len() as f64).collect();
            assert!(
                dist(&mean, &row_of(e)) < 1e-8 * dist(&mean, &vec![0.0; d as usize]).max(1.0),
                "{name}: centroid {e}"
            );
            // …and no other centroid of its token is nearer.
            for other in (0..np.n_entries()).filter(|&o| model_token(&np, o) == t && o != e) {
                assert!(
                    dist(v, &row_of(e)) <= dist(v, &row_of(other)) + 1e-9,
                    "{name}: occurrence at nearest centroid"
                );
            }
        }
        let gr = GrModel { t5: l.model, pawa: None, np: Some(np) };
        let io: std::collections::HashMap<String, Tensor> =
            grdr::model::safetensors::read_all(&fixture(name).join("io.safetensors")).unwrap().into_iter().collect();
        let (ids, mask) = (io["input_ids"].narrow(0, 0, 1), io["attention_mask"].narrow(0, 0, 1));
        let labels = Tensor::from_slice(&targets[2]).view([1, -1]);
        let dec_in = gr.shift_right(&labels);
        tch::no_grad(|| {
            let out = gr.forward(&ids, &mask, &dec_in, false, false);
            let x = gr.t5.logit_states(&out.decoder_hidden);
            for ti in 0..labels.size()[1] {
                for e in 0..gr.lm_head_rows() {
                    let want: f64 = (0..d).map(|k| x.double_value(&[0, ti, k]) * table_value(&gr, e, k)).sum();
                    let have = out.logits.double_value(&[0, ti, e]);
                    assert!((have - want).abs() < 1e-4 * want.abs().max(1.0), "{name} ({ti},{e}): {have} vs {want}");
                }
            }
            // Decoder inputs are the entries' tokens.
            let tokens = Tensor::from_slice(&gr.tokens_of(&targets[2])).view([1, -1]);
            let standard = gr.t5.forward(&ids, &mask, &gr.t5.shift_right(&tokens), false, false);
            assert!(
                close(&out.decoder_hidden, &standard.decoder_hidden, 1e-5),
                "{name}: entries embed as their tokens"
            );
            let at_labels = out.logits.gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1);
            let rows = gr.output_rows_at(&labels, &dec_in);
            let dot = (&out.decoder_hidden * rows).sum_dim_intlist(-1, false, Kind::Float);
            assert!(close(&dot, &at_labels, 1e-4), "{name}: output rows reproduce the logits");
        });
    }
}

fn model_token(np: &grdr::model::np::Np, e: i64) -> i64 {
    np.entry_token.int64_value(&[e])
}

fn table_value(gr: &grdr::model::GrModel, e: i64, k: i64) -> f64 {
    gr.np.as_ref().unwrap().table.double_value(&[e, k])
}
