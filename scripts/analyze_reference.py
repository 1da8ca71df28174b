#!/usr/bin/env python3
"""Independent reference computations for `grdr analyze` (called by tests/analyze.rs).

Every subcommand reads what grdr wrote (Parquet via pyarrow, summary.json), recomputes it
from public tools only — HF transformers / sentence-transformers on the exported model
(RUNDIR/model), numpy on the model's weights, the `tokenizers` library on the dataset — and
prints one JSON object of deviations and counts of violations. The Rust test asserts on them;
structural problems (missing or duplicated cells, wrong row counts) are reported as
`problems` (a list of strings, empty when all is well), never silently ignored.

    pairs        OUT DATA --tokenizer TOK --query-max-len L --limit N
                 (--docids F | --doc-max-len L --colbert-query-len Q --augment-token T)
    gr-alignment MODEL OUT                 HF cross-attention + numpy MVDR form
    gr-heatmap   MODEL OUT [--layer L]     one pair's heads and heads' mean against HF
    gr-exact-match MODEL OUT DATA          HF cross-attention → token values → IDF buckets
    colbert      MODEL ALIGN_OUT EXACT_OUT DATA   HF BERT + grdr head → S; exact match
    low-rank     MODEL OUT                 HF attention + numpy ‖A − R‖, SVD, ‖W_Qᵀ W_K‖
    spectrum     MODEL DATA OUT --limit N --docs K --query-max-len L --doc-max-len L
    gr-calibration MODEL DOCIDS DATA OUT --limit N --beam W --query-max-len L
                 HF log-likelihood of every atomic docid → exact and beam Brier
    same         DIR_A DIR_B               two analyze outputs hold the same rows

Floating point: grdr computes in f32, the references here in f64 (HF models are loaded in
f32 and converted to f64 exactly). HF's T5LayerNorm computes its variance in f32 even for
an f64 model, so the HF side carries ~1e-7 relative noise too; the tolerances are in the test.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
def table(path):
    """A Parquet file as {column: list}."""
    return pq.read_table(path).to_pydict()


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def pairs_of(out):
    """pairs.parquet as a list of dicts, in file order."""
    t = table(os.path.join(out, "pairs.parquet"))
    n = len(t["query_id"])
    return [{k: t[k][i] for k in t} for i in range(n)]


def tokenizer(path, max_len=None):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    if max_len is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length=max_len)
    return tok


def special_ids(tokenizer_json):
    """The tokenizer's added tokens marked special (never exact-match terms)."""
    with open(tokenizer_json) as f:
        t = json.load(f)
    return {a["id"] for a in t.get("added_tokens", []) if a.get("special")}


def corpus(data):
    """(doc_ids in doc_idx order, full "title text" per doc)."""
    t = table(os.path.join(data, "docs.parquet"))
    order = np.argsort(np.asarray(t["doc_idx"]), kind="stable")
    ids = [t["doc_id"][i] for i in order]
    texts = [f"{t['title'][i]} {t['text'][i]}" if t["title"][i] else t["text"][i] for i in order]
    return ids, texts


def judged_queries(data, split):
    """[(query_id, text)] of the split's judged queries in queries.parquet order, and
    query_id → relevant doc_ids (relevance > 0)."""
    qr = table(os.path.join(data, "qrels.parquet"))
    judged, relevant = set(), defaultdict(list)
    for q, d, r, s in zip(qr["query_id"], qr["doc_id"], qr["relevance"], qr["split"]):
        if s != split:
            continue
        judged.add(q)
        if r > 0:
            relevant[q].append(d)
    qs = table(os.path.join(data, "queries.parquet"))
    order = np.argsort(np.asarray(qs["query_idx"]), kind="stable")
    queries = [(qs["query_id"][i], qs["text"][i]) for i in order if qs["query_id"][i] in judged]
    return queries, relevant


def cells(t, keys):
    """Row indices of a table grouped by the tuple of `keys` columns."""
    groups = defaultdict(list)
    cols = [t[k] for k in keys]
    for i, key in enumerate(zip(*cols)):
        groups[key].append(i)
    return groups


def emit(obj):
    print(json.dumps(obj, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------
# pairs: the (query, relevant doc) pairs and their exact ids, from the dataset alone
# ---------------------------------------------------------------------------------------
def cmd_pairs(a):
    queries, relevant = judged_queries(a.data, a.split)
    doc_ids, texts = corpus(a.data)
    doc_idx = {d: i for i, d in enumerate(doc_ids)}
    qtok = tokenizer(a.tokenizer, a.query_max_len)
    expected = []
    for qid, qtext in queries[: a.limit]:
        for d in sorted((doc_idx[d] for d in relevant.get(qid, []) if d in doc_idx)):
            ids = qtok.encode(qtext).ids
            if a.docids:
                side = None  # filled below from the docid file
            else:
                ids = (ids[: a.colbert_query_len] + [a.augment_token] * a.colbert_query_len)[: a.colbert_query_len]
                side = tokenizer(a.tokenizer, a.doc_max_len).encode(texts[d]).ids
            expected.append({"query_id": qid, "doc_id": doc_ids[d], "doc_idx": d, "input_ids": ids, "side": side})
    if a.docids:
        # GR: the decoder reads decoder_start (0) + the docid tokens minus the last label;
        # labels = docid tokens + eos (1). A document's first docid row.
        dt = table(a.docids)
        first = {}
        for i, d in enumerate(dt["doc_idx"]):
            first.setdefault(d, i)
        for e in expected:
            labels = list(dt["tokens"][first[e["doc_idx"]]]) + [1]
            e["side"] = [0] + labels[:-1]
    got = pairs_of(a.out)
    side_col = "decoder_input_ids" if a.docids else "doc_input_ids"
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} pairs written, {len(expected)} expected")
    for i, (g, e) in enumerate(zip(got, expected)):
        for k_got, k_exp in [("query_id", "query_id"), ("doc_id", "doc_id"), ("input_ids", "input_ids"), (side_col, "side")]:
            gv = g.get(k_got)
            if gv != e[k_exp]:
                problems.append(f"pair {i} ({e['query_id']}, {e['doc_id']}): {k_got} {gv} != expected {e[k_exp]}")
    emit({"pairs": len(got), "expected": len(expected), "problems": problems[:20]})


# ---------------------------------------------------------------------------------------
# GR: HF transformers forward with the internals the analyses read
# ---------------------------------------------------------------------------------------
def load_t5(model_dir):
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    m, info = T5ForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"transformers did not load {model_dir} cleanly: {bad}")
    return m.to(torch.float64).eval()


def t5_forward(m, input_ids, decoder_input_ids):
    """One unpadded pair through HF in f64: everything as float64 numpy arrays."""
    import torch

    n_layers = len(m.decoder.block)
    seen = {"cross_in": [None] * n_layers, "cross_out": [None] * n_layers}
    hooks = [
        m.decoder.final_layer_norm.register_forward_pre_hook(
            lambda mod, args: seen.__setitem__("pre_norm", args[0].detach())
        )
    ]
    for l, blk in enumerate(m.decoder.block):
        cross = blk.layer[1]
        hooks.append(
            cross.layer_norm.register_forward_hook(lambda mod, args, out, l=l: seen["cross_in"].__setitem__(l, out.detach()))
        )
        hooks.append(
            cross.EncDecAttention.register_forward_hook(
                lambda mod, args, out, l=l: seen["cross_out"].__setitem__(l, out[0].detach())
            )
        )
    ids = torch.tensor([input_ids], dtype=torch.long)
    dec = torch.tensor([decoder_input_ids], dtype=torch.long)
    try:
        with torch.no_grad():
            o = m(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                decoder_input_ids=dec,
                output_attentions=True,
                return_dict=True,
            )
    finally:
        for h in hooks:
            h.remove()
    f = lambda t: t[0].double().numpy()  # noqa: E731
    return {
        "A": [f(a) for a in o.cross_attentions],  # L × (H, M, N)
        "enc": f(o.encoder_last_hidden_state),  # (N, D)
        "logits": f(o.logits),  # (M, V)
        "pre_norm": f(seen["pre_norm"]),  # (M, D)
        "cross_in": [f(x) for x in seen["cross_in"]],  # L × (M, D)
        "cross_out": [f(x) for x in seen["cross_out"]],  # L × (M, D)
    }


def t5_weights(m):
    """numpy f64 weights the analyses are defined with."""
    cfg = m.config
    npy = lambda t: t.detach().double().numpy()  # noqa: E731
    scale = getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings)
    if scale:
        out_rows = npy(m.shared.weight) * cfg.d_model**-0.5
    else:
        out_rows = npy(m.lm_head.weight)
    layers = []
    for blk in m.decoder.block:
        att = blk.layer[1].EncDecAttention
        layers.append({k: npy(getattr(att, k).weight) for k in "qkvo"})
    return {
        "H": cfg.num_heads,
        "K": cfg.d_kv,
        "out_rows": out_rows,
        "g": npy(m.decoder.final_layer_norm.weight),
        "eps": cfg.layer_norm_epsilon,
        "layers": layers,
    }


def mvdr_scores(w, fw, labels):
    """Ẽ_dᵀQ per layer: (H, M, N) with score[h,i,j] = u_iᵀ W_O^h W_V^h q_j, and u_i."""
    x = fw["pre_norm"]
    rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + w["eps"])
    u = w["out_rows"][labels] * w["g"] / rms  # (M, D)
    H, K = w["H"], w["K"]
    scores = []
    for lw in w["layers"]:
        s = []
        for h in range(H):
            wv = lw["v"][h * K : (h + 1) * K, :]  # (K, D)
            wo = lw["o"][:, h * K : (h + 1) * K]  # (D, K)
            s.append(u @ wo @ wv @ fw["enc"].T)  # (M, N)
        scores.append(np.stack(s))
    return u, scores


def matrix_from_rows(t, idx, shape, value, problems, what):
    """Fills a (H, M, N)-shaped array from alignment rows `idx` (head, row, col columns)."""
    out = np.full(shape, np.nan)
    hits = np.zeros(shape, dtype=np.int64)
    for i in idx:
        key = (t["head"][i], t["row"][i], t["col"][i])
        if not all(0 <= k < s for k, s in zip(key, shape)):
            problems.append(f"{what}: cell {key} outside {shape}")
            continue
        out[key] = t[value][i]
        hits[key] += 1
    if hits.min() != 1 or hits.max() != 1:
        problems.append(f"{what}: {int((hits == 0).sum())} cells missing, {int((hits > 1).sum())} duplicated")
    return out


def labels_of(p):
    return list(p["decoder_input_ids"][1:]) + [1]


def cmd_gr_alignment(a):
    m = load_t5(a.model)
    w = t5_weights(m)
    al = table(os.path.join(a.out, "alignment.parquet"))
    form = table(os.path.join(a.out, "mvdr_form.parquet"))
    al_groups = cells(al, ["query_id", "doc_id", "layer"])
    form_groups = cells(form, ["query_id", "doc_id", "layer"])
    problems = []
    dev = defaultdict(float)
    n_cells = 0
    pairs = pairs_of(a.out)
    L = len(w["layers"])
    for p in pairs:
        key = (p["query_id"], p["doc_id"])
        labels = labels_of(p)
        fw = t5_forward(m, list(p["input_ids"]), list(p["decoder_input_ids"]))
        M, N = len(labels), len(p["input_ids"])
        u, scores = mvdr_scores(w, fw, labels)
        # Self-checks of the reference itself: u_i · x_i is the HF logit of label i (the
        # final norm and tied output projection are what u says), and each layer's
        # Σ_h Σ_j A·score is u_i · (that cross-attention's output): the MVDR form is its
        # direct contribution to the logit.
        hf_logit = fw["logits"][np.arange(M), labels]
        dev["self_logit_rel"] = max(dev["self_logit_rel"], np.abs((u * fw["pre_norm"]).sum(-1) - hf_logit).max() / np.abs(hf_logit).max())
        ref_mvdr = []
        for l in range(L):
            A = fw["A"][l]
            form_l = (A * scores[l]).sum(axis=(0, 2))  # (M,)
            direct = (u * fw["cross_out"][l]).sum(-1)
            dev["self_mvdr_rel"] = max(dev["self_mvdr_rel"], np.abs(form_l - direct).max() / max(np.abs(direct).max(), 1e-30))
            ref_mvdr.append(form_l)
            rows = al_groups.get(key + (l,), [])
            if any(al["alignment"][i] != "cross-attention" for i in rows):
                problems.append(f"{key} layer {l}: alignment is not 'cross-attention'")
            shape = (w["H"], M, N)
            got_w = matrix_from_rows(al, rows, shape, "weight", problems, f"{key} layer {l} weight")
            got_s = matrix_from_rows(al, rows, shape, "score", problems, f"{key} layer {l} score")
            n_cells += len(rows)
            dev["weight_abs"] = max(dev["weight_abs"], float(np.nanmax(np.abs(got_w - A))))
            dev["weight_row_sum"] = max(dev["weight_row_sum"], float(np.nanmax(np.abs(got_w.sum(-1) - 1))))
            for h in range(w["H"]):
                d = np.abs(got_s[h] - scores[l][h])
                dev["score_abs"] = max(dev["score_abs"], float(np.nanmax(d)))
                dev["score_rel"] = max(dev["score_rel"], float(np.nanmax(d) / max(np.abs(scores[l][h]).max(), 1e-30)))
        ref_mvdr.append(np.sum(ref_mvdr, axis=0))  # layer −1
        for l, ref in zip(list(range(L)) + [-1], ref_mvdr):
            rows = form_groups.get(key + (l,), [])
            got_m = np.full(M, np.nan)
            got_z = np.full(M, np.nan)
            for i in rows:
                got_m[form["position"][i]] = form["mvdr"][i]
                got_z[form["position"][i]] = form["logit"][i]
            if len(rows) != M or np.isnan(got_m).any():
                problems.append(f"{key} mvdr_form layer {l}: {len(rows)} rows for {M} positions")
                continue
            dev["mvdr_rel"] = max(dev["mvdr_rel"], float(np.abs(got_m - ref).max() / max(np.abs(ref).max(), 1e-30)))
            dev["mvdr_abs"] = max(dev["mvdr_abs"], float(np.abs(got_m - ref).max()))
            dev["logit_rel"] = max(dev["logit_rel"], float(np.abs(got_z - hf_logit).max() / np.abs(hf_logit).max()))
            dev["logit_abs"] = max(dev["logit_abs"], float(np.abs(got_z - hf_logit).max()))
    if n_cells != len(al["query_id"]):
        problems.append(f"alignment.parquet has {len(al['query_id'])} rows, the pairs account for {n_cells}")
    n_form = sum(len(labels_of(p)) for p in pairs) * (L + 1)
    if n_form != len(form["query_id"]):
        problems.append(f"mvdr_form.parquet has {len(form['query_id'])} rows, expected {n_form}")
    dev["summary_rel"] = mvdr_summary_deviation(a.out, form, problems)
    emit({"pairs": len(pairs), "cells": n_cells, "layers": L, "heads": w["H"], "problems": problems[:20], **dev})


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def mvdr_summary_deviation(out, form, problems):
    """summary.json's `mvdr_form` per layer, recomputed from mvdr_form.parquet: the largest
    relative deviation of its statistics."""
    groups = cells(form, ["layer", "query_id", "doc_id"])
    layers = sorted({k[0] for k in groups})
    got = {("sum" if r["layer"] == "sum" else r["layer"]): r for r in summary(out).get("mvdr_form", [])}
    worst = 0.0
    for l in layers:
        pm, pz, cm, cz = [], [], [], []
        for key, idx in groups.items():
            if key[0] != l:
                continue
            m = [float(form["mvdr"][i]) for i in idx]
            z = [float(form["logit"][i]) for i in idx]
            pm.append(sum(m))
            pz.append(sum(z))
            cm += m
            cz += z
        cm, cz = np.asarray(cm), np.asarray(cz)
        rel = np.abs(np.asarray(pm) - pz) / np.maximum(np.abs(pz), 1e-12)
        ref = {
            "pairs": len(pm),
            "cells": len(cm),
            "corr_pairs": pearson(pm, pz),
            "corr_cells": pearson(cm, cz),
            "median_relative_error": float(np.median(rel)),
            "r2_identity": float(1 - ((cz - cm) ** 2).sum() / max(((cz - cz.mean()) ** 2).sum(), 1e-300)),
            "mean_mvdr": float(cm.mean()),
            "mean_logit": float(cz.mean()),
        }
        r = got.get("sum" if l == -1 else l)
        if r is None:
            problems.append(f"summary.json mvdr_form lacks layer {l}")
            continue
        for k, v in ref.items():
            if r.get(k) is None:
                problems.append(f"summary.json mvdr_form layer {l}: no {k}")
                continue
            worst = max(worst, abs(r[k] - v) / max(abs(v), 1e-12))
    if len(got) != len(layers):
        problems.append(f"summary.json mvdr_form has {len(got)} layers, mvdr_form.parquet {len(layers)}")
    return worst


def cmd_gr_heatmap(a):
    """heatmap.parquet of a GR pair: every layer's heads and their mean (head −1) against HF,
    the drawn flag on exactly the heads' mean of --layer, token labels from the tokenizer."""
    m = load_t5(a.model)
    tok = tokenizer(os.path.join(a.model, "tokenizer.json"))
    hm = table(os.path.join(a.out, "heatmap.parquet"))
    (p,) = pairs_of(a.out)
    labels = labels_of(p)
    fw = t5_forward(m, list(p["input_ids"]), list(p["decoder_input_ids"]))
    L, H = len(fw["A"]), fw["A"][0].shape[0]
    drawn_layer = L - 1 if a.layer is None else a.layer
    problems = []
    dev = defaultdict(float)
    groups = cells(hm, ["layer", "head"])
    if set(groups) != {(l, h) for l in range(L) for h in list(range(H)) + [-1]}:
        problems.append(f"heatmap.parquet holds (layer, head) {sorted(groups)}")
    for (l, h), rows in groups.items():
        if not (0 <= l < L and -1 <= h < H):
            continue
        ref = fw["A"][l].mean(axis=0) if h == -1 else fw["A"][l][h]
        sub = {"head": [0] * len(rows), "row": [hm["row"][i] for i in rows], "col": [hm["col"][i] for i in rows],
               "weight": [hm["weight"][i] for i in rows]}
        got = matrix_from_rows(sub, range(len(rows)), (1,) + ref.shape, "weight", problems, f"heatmap ({l}, {h})")[0]
        dev["weight_abs"] = max(dev["weight_abs"], float(np.nanmax(np.abs(got - ref))))
        want_drawn = int(l == drawn_layer and h == -1)
        if any(hm["drawn"][i] != want_drawn for i in rows):
            problems.append(f"heatmap ({l}, {h}): drawn should be {want_drawn}")
        for i in rows:
            if hm["model"][i] != "gr" or hm["alignment"][i] != "cross-attention":
                problems.append(f"heatmap row {i}: model/alignment {hm['model'][i]}/{hm['alignment'][i]}")
                break
        for i in rows:
            want = (tok.id_to_token(labels[hm["row"][i]]), tok.id_to_token(p["input_ids"][hm["col"][i]]))
            if (hm["row_token"][i], hm["col_token"][i]) != want:
                problems.append(f"heatmap row {i}: tokens {(hm['row_token'][i], hm['col_token'][i])} != {want}")
                break
    emit({"rows": len(labels), "cols": len(p["input_ids"]), "drawn": int(sum(hm["drawn"])), "problems": problems[:20], **dev})


# ---------------------------------------------------------------------------------------
# Exact match: token values, IDF, buckets
# ---------------------------------------------------------------------------------------
def idf_of(data, tokenizer_json):
    """token → df over every document's "title text" (no special tokens added, no truncation)."""
    _, texts = corpus(data)
    tok = tokenizer(tokenizer_json)
    df = defaultdict(int)
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        for t in set(enc.ids):
            df[t] += 1
    return df, len(texts)


def bucketize(values, idf, buckets):
    """values: {(model, direction, mode, layer): [(token, value)] in pair/position order}."""
    out = {}
    overall = {}
    for g, v in values.items():
        x = np.array([idf(t) for t, _ in v])
        y = np.array([val for _, val in v], dtype=np.float64)
        order = np.argsort(x, kind="stable")  # ties keep pair/position order
        x, y = x[order], y[order]
        n = len(v)
        k = max(1, min(buckets, n))
        for b in range(k):
            lo, hi = b * n // k, (b + 1) * n // k
            if hi > lo:
                out[g + (b,)] = (x[lo], x[hi - 1], y[lo:hi].mean(), hi - lo)
        overall[g] = (y.mean(), n)
    return out, overall


def compare_exact_match(out, ref_tokens, data, tokenizer_json, buckets, ambiguous):
    """ref_tokens: {(query_id, doc_id, model, direction, mode, layer, position): (token, value)}
    in generation order. Returns deviations and problems against grdr's three tables."""
    problems = []
    dev = defaultdict(float)
    # IDF
    df, n_docs = idf_of(data, tokenizer_json)
    idf = lambda t: math.log(n_docs / max(df.get(t, 0), 1))  # noqa: E731
    it = table(os.path.join(out, "idf.parquet"))
    got_df = dict(zip(it["token"], it["df"]))
    if got_df != {t: c for t, c in df.items() if c > 0}:
        diff = set(got_df.items()) ^ set(df.items())
        problems.append(f"idf.parquet df differs on {len(diff)} (token, df) entries, e.g. {sorted(diff)[:5]}")
    for t, v in zip(it["token"], it["idf"]):
        dev["idf_abs"] = max(dev["idf_abs"], abs(v - idf(t)))
    s = summary(out)
    if s["idf"]["n_docs"] != n_docs:
        problems.append(f"summary idf.n_docs {s['idf']['n_docs']} != {n_docs}")
    # Token values
    tt = table(os.path.join(out, "exact_match_tokens.parquet"))
    keys = ["query_id", "doc_id", "model", "direction", "mode", "layer", "position"]
    got = {}
    for i, key in enumerate(zip(*[tt[k] for k in keys])):
        if key in got:
            problems.append(f"exact_match_tokens: duplicated row {key}")
        got[key] = (tt["token"][i], tt["value"][i])
    missing = [k for k in ref_tokens if k not in got]
    extra = [k for k in got if k not in ref_tokens]
    if missing or extra:
        problems.append(f"exact_match_tokens: {len(missing)} rows missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")
    hard_flips = 0
    for k, (tok, val) in ref_tokens.items():
        if k not in got:
            continue
        if got[k][0] != tok:
            problems.append(f"exact_match_tokens {k}: token {got[k][0]} != {tok}")
        d = abs(got[k][1] - val)
        if k[4] == "hard":
            if d != 0 and k not in ambiguous:
                hard_flips += 1
        else:
            dev["token_soft_abs"] = max(dev["token_soft_abs"], d)
    # Chance: the value of a uniform alignment, the share of same-id tokens on the other side
    sides = {}
    for p in pairs_of(out):
        doc = labels_of(p) if "decoder_input_ids" in p else list(p["doc_input_ids"])
        sides[(p["query_id"], p["doc_id"])] = (list(p["input_ids"]), doc)
    ref_chance = {}
    for i, key in enumerate(zip(*[tt[k] for k in keys])):
        q, d = sides[(key[0], key[1])]
        other = q if key[3] == "d2q" else d
        c = sum(1 for t in other if t == tt["token"][i]) / len(other)
        ref_chance[key] = c
        dev["chance_abs"] = max(dev["chance_abs"], abs(tt["chance"][i] - c))
    # Buckets from the reference values
    groups = defaultdict(list)
    for k, (tok, val) in ref_tokens.items():
        groups[(k[2], k[3], k[4], k[5])].append((tok, val))
    ref_b, ref_all = bucketize(groups, idf, buckets)
    # The chance of each bucket: the same stable IDF order, the chance values instead.
    chance_groups = defaultdict(list)
    for k in ref_tokens:
        chance_groups[(k[2], k[3], k[4], k[5])].append((ref_tokens[k][0], ref_chance.get(k, float("nan"))))
    ref_b_chance = {g: v[2] for g, v in bucketize(chance_groups, idf, buckets)[0].items()}
    bt = table(os.path.join(out, "exact_match.parquet"))
    bkeys = ["model", "direction", "mode", "layer", "bucket"]
    seen = set()
    for i, key in enumerate(zip(*[bt[k] for k in bkeys])):
        seen.add(key)
        if key not in ref_b:
            problems.append(f"exact_match.parquet: unexpected bucket {key}")
            continue
        lo, hi, rate, n = ref_b[key]
        if bt["tokens"][i] != n:
            problems.append(f"exact_match.parquet {key}: {bt['tokens'][i]} tokens, expected {n}")
        dev["idf_edge_abs"] = max(dev["idf_edge_abs"], abs(bt["idf_lo"][i] - lo), abs(bt["idf_hi"][i] - hi))
        dev["rate_abs"] = max(dev["rate_abs"], abs(bt["rate"][i] - rate))
        chunk = ref_b_chance.get(key)
        if chunk is not None:
            dev["chance_bucket_abs"] = max(dev["chance_bucket_abs"], abs(bt["chance"][i] - chunk))
    if set(ref_b) - seen:
        problems.append(f"exact_match.parquet lacks buckets {sorted(set(ref_b) - seen)[:5]}")
    for r in s["rates"]:
        g = (r["model"], r["direction"], r["mode"], r["layer"])
        if g not in ref_all or ref_all[g][1] != r["tokens"]:
            problems.append(f"summary rates {g}: tokens {r['tokens']} vs {ref_all.get(g)}")
            continue
        dev["summary_rate_abs"] = max(dev["summary_rate_abs"], abs(r["rate"] - ref_all[g][0]))
    if len(s["rates"]) != len(ref_all):
        problems.append(f"summary has {len(s['rates'])} rate groups, expected {len(ref_all)}")
    return {
        "tokens": len(ref_tokens),
        "groups": len(ref_all),
        "buckets": len(ref_b),
        "hard_flips": hard_flips,
        "ambiguous_hard": len(ambiguous),
        "problems": problems[:20],
        **dev,
    }


def d2q_values(ref, p, model, layer, A, doc_tokens, query_tokens, special, ambiguous, hard_from=None):
    """soft = Σ_j A[i,j]·[q_j = d_i], hard = [q_{argmax_j A[i,j]} = d_i] per doc term i."""
    q = np.asarray(query_tokens)
    for i, d in enumerate(doc_tokens):
        if d in special:
            continue
        key = (p["query_id"], p["doc_id"], model, "d2q", "soft", layer, i)
        ref[key] = (d, float(A[i][q == d].sum()))
        row = A[i] if hard_from is None else hard_from[i]
        j = int(np.argmax(row))
        hkey = key[:4] + ("hard",) + key[5:]
        ref[hkey] = (d, float(q[j] == d))
        top2 = np.sort(row)[-2:] if len(row) > 1 else np.array([-np.inf, row[0]])
        if top2[1] - top2[0] < 1e-6 and len({int(t) for t in q[row >= top2[1] - 1e-6]}) > 1:
            ambiguous.add(hkey)


def cmd_gr_exact_match(a):
    m = load_t5(a.model)
    tok_json = os.path.join(a.model, "tokenizer.json")
    special = special_ids(tok_json)
    ref, ambiguous = {}, set()
    pairs = pairs_of(a.out)
    for p in pairs:
        labels = labels_of(p)
        fw = t5_forward(m, list(p["input_ids"]), list(p["decoder_input_ids"]))
        means = [A.mean(axis=0) for A in fw["A"]]
        for l, A in enumerate(means):
            d2q_values(ref, p, "gr", l, A, labels, p["input_ids"], special, ambiguous)
        d2q_values(ref, p, "gr", -1, np.mean(means, axis=0), labels, p["input_ids"], special, ambiguous)
    # Generation order of grdr: per pair, layers 0.., then −1; within a group the order is
    # pair then position either way, which is all bucketing ties depend on.
    res = compare_exact_match(a.out, ref, a.data, tok_json, summary(a.out)["buckets"], ambiguous)
    emit({"pairs": len(pairs), **res})


# ---------------------------------------------------------------------------------------
# ColBERT
# ---------------------------------------------------------------------------------------
def colbert_vectors(model_dir):
    import torch
    from safetensors.numpy import load_file
    from transformers import BertModel

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with open(os.path.join(model_dir, "grdr.json")) as f:
        info = json.load(f)["model"]
    m, lo = BertModel.from_pretrained(model_dir, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in lo.items() if v}
    if bad:
        raise SystemExit(f"transformers did not load {model_dir} cleanly: {bad}")
    m = m.to(torch.float64).eval()
    head = load_file(os.path.join(model_dir, "grdr_head.safetensors"))
    w = head["grdr_head.linear.weight"].astype(np.float64)
    b = head.get("grdr_head.linear.bias")

    def embed(ids):
        t = torch.tensor([list(ids)], dtype=torch.long)
        with torch.no_grad():
            h = m(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state[0].double().numpy()
        v = h @ w.T + (0 if b is None else b.astype(np.float64))
        if info.get("normalize", True):
            v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        return v

    return embed


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def cmd_colbert(a):
    embed = colbert_vectors(a.model)
    al = table(os.path.join(a.align_out, "alignment.parquet"))
    groups = cells(al, ["query_id", "doc_id", "alignment"])
    problems = []
    dev = defaultdict(float)
    bad = defaultdict(int)
    pairs = pairs_of(a.align_out)
    mats = {}
    n_cells = 0
    for p in pairs:
        key = (p["query_id"], p["doc_id"])
        q, d = list(p["input_ids"]), list(p["doc_input_ids"])
        M, N = len(d), len(q)
        ref_s = embed(d) @ embed(q).T  # (M, N)
        got = {}
        for name in ["q2d-max", "q2d-soft", "d2q-soft", "d2q-max"]:
            rows = groups.get(key + (name,), [])
            n_cells += len(rows)
            if any(al["layer"][i] != 0 or al["head"][i] != 0 for i in rows):
                problems.append(f"{key} {name}: layer/head not 0")
            sub = {"head": [0] * len(rows), "row": [al["row"][i] for i in rows], "col": [al["col"][i] for i in rows],
                   "weight": [al["weight"][i] for i in rows], "score": [al["score"][i] for i in rows]}
            idx = range(len(rows))
            w = matrix_from_rows(sub, idx, (1, M, N), "weight", problems, f"{key} {name} weight")[0]
            s = matrix_from_rows(sub, idx, (1, M, N), "score", problems, f"{key} {name} score")[0]
            got[name] = (w, s)
        s = got["q2d-max"][1]
        for name, (_, s2) in got.items():
            if not np.array_equal(s2, s, equal_nan=True):
                problems.append(f"{key}: the score column differs between q2d-max and {name}")
        dev["score_abs"] = max(dev["score_abs"], float(np.nanmax(np.abs(s - ref_s))))
        # Softmaxes of grdr's own S (f32 → f64): column-wise (over i) and row-wise (over j).
        for name, axis in [("q2d-soft", 0), ("d2q-soft", 1)]:
            w = got[name][0]
            dev[f"{name}_abs"] = max(dev[f"{name}_abs"], float(np.nanmax(np.abs(w - softmax(s, axis)))))
            dev[f"{name}_sum"] = max(dev[f"{name}_sum"], float(np.nanmax(np.abs(w.sum(axis=axis) - 1))))
        # One-hots at the argmax of S: per column (MaxSim's pick) and per row.
        for name, axis in [("q2d-max", 0), ("d2q-max", 1)]:
            w = got[name][0]
            bad[f"{name}_not_binary"] += int((~((w == 0) | (w == 1))).sum())
            bad[f"{name}_not_one_hot"] += int((w.sum(axis=axis) != 1).sum())
            picked = np.where(w == 1, s, -np.inf).max(axis=axis)
            bad[f"{name}_not_argmax"] += int((picked != s.max(axis=axis)).sum())
            # and the argmax agrees with the f64 reference S unless it is a near tie
            ref_arg = np.argmax(ref_s, axis=axis)
            got_arg = np.argmax(w, axis=axis)
            srt = np.sort(ref_s, axis=axis)
            gap = (srt[-1] - srt[-2]) if axis == 0 else (srt[:, -1] - srt[:, -2])
            bad[f"{name}_vs_reference"] += int(((ref_arg != got_arg) & (gap > 1e-5)).sum())
        mats[key] = got
    if n_cells != len(al["query_id"]):
        problems.append(f"alignment.parquet has {len(al['query_id'])} rows, the pairs account for {n_cells}")
    result = {"pairs": len(pairs), "cells": n_cells, "violations": dict(bad), **dev}
    if a.exact_out:
        # Exact match recomputed from alignment.parquet + pairs.parquet + the dataset's IDF.
        tok_json = os.path.join(a.model, "tokenizer.json")
        special = special_ids(tok_json)
        ex_pairs = pairs_of(a.exact_out)
        if [(p["query_id"], p["doc_id"], p["input_ids"], p["doc_input_ids"]) for p in ex_pairs] != [
            (p["query_id"], p["doc_id"], p["input_ids"], p["doc_input_ids"]) for p in pairs
        ]:
            problems.append("exact-match and alignment outputs hold different pairs")
        ref, ambiguous = {}, set()
        for p in pairs:
            got = mats[(p["query_id"], p["doc_id"])]
            q, d = np.asarray(p["input_ids"]), np.asarray(p["doc_input_ids"])
            for j, t in enumerate(q):
                if int(t) in special:
                    continue
                match = d == t
                k = (p["query_id"], p["doc_id"], "colbert", "q2d")
                ref[k + ("soft", 0, j)] = (int(t), float(got["q2d-soft"][0][match, j].sum()))
                ref[k + ("hard", 0, j)] = (int(t), float(got["q2d-max"][0][match, j].sum()))
            d2q_values(ref, p, "colbert", 0, got["d2q-soft"][0], list(d), list(q), special, ambiguous,
                       hard_from=got["d2q-max"][0])
        # grdr's row order within a group is pair then position, as generated here.
        result["exact_match"] = compare_exact_match(a.exact_out, ref, a.data, tok_json, summary(a.exact_out)["buckets"], ambiguous)
    result["problems"] = problems[:20]
    emit(result)


# ---------------------------------------------------------------------------------------
# Low rank
# ---------------------------------------------------------------------------------------
def cmd_low_rank(a):
    m = load_t5(a.model)
    w = t5_weights(m)
    H, K = w["H"], w["K"]
    lr = table(os.path.join(a.out, "low_rank.parquet"))
    groups = cells(lr, ["query_id", "doc_id", "layer", "head"])
    problems = []
    dev = defaultdict(float)
    pairs = pairs_of(a.out)
    norms = {}
    for l, lw in enumerate(w["layers"]):
        for h in range(H):
            wq, wk = lw["q"][h * K : (h + 1) * K], lw["k"][h * K : (h + 1) * K]  # (K, D)
            W = wq.T @ wk  # (D, D)
            norms[(l, h)] = (np.linalg.norm(W), np.linalg.svd(W, compute_uv=False)[0], wq, wk)
    n = 0
    for p in pairs:
        fw = t5_forward(m, list(p["input_ids"]), list(p["decoder_input_ids"]))
        for l in range(len(w["layers"])):
            for h in range(H):
                rows = groups.get((p["query_id"], p["doc_id"], l, h), [])
                if len(rows) != 1:
                    problems.append(f"{(p['query_id'], p['doc_id'], l, h)}: {len(rows)} rows")
                    continue
                i = rows[0]
                n += 1
                A = fw["A"][l][h]
                norm_w, spectral, wq, wk = norms[(l, h)]
                q = fw["cross_in"][l] @ wq.T  # (M, K): the head's projected queries
                k = fw["enc"] @ wk.T  # (N, K)
                # Self-check: T5's unscaled softmax(q kᵀ) is HF's attention.
                dev["self_rebuild"] = max(dev["self_rebuild"], np.abs(softmax(q @ k.T, 1) - A).max())
                r = softmax(q.mean(axis=0, keepdims=True) @ k.T, 1)  # (1, N)
                R = np.repeat(r, A.shape[0], axis=0)
                sv = np.linalg.svd(A, compute_uv=False)
                ref = {
                    "norm_w": norm_w,
                    "norm_w_spectral": spectral,
                    "norm_a": np.linalg.norm(A),
                    "err_r": np.linalg.norm(A - R),
                    "err_svd1": math.sqrt(float((sv[1:] ** 2).sum())),
                }
                ref["rel_err_r"] = ref["err_r"] / ref["norm_a"]
                ref["rel_err_svd1"] = ref["err_svd1"] / ref["norm_a"]
                if (lr["rows"][i], lr["cols"][i]) != A.shape:
                    problems.append(f"{(p['query_id'], p['doc_id'], l, h)}: rows×cols {lr['rows'][i]}×{lr['cols'][i]} != {A.shape}")
                for c in ["norm_w", "norm_w_spectral"]:
                    dev[f"{c}_rel"] = max(dev[f"{c}_rel"], abs(lr[c][i] - ref[c]) / ref[c])
                for c in ["norm_a", "err_r", "err_svd1", "rel_err_r", "rel_err_svd1"]:
                    dev[f"{c}_abs"] = max(dev[f"{c}_abs"], abs(lr[c][i] - ref[c]))
                dev["max_rebuild_error"] = max(dev["max_rebuild_error"], lr["max_rebuild_error"][i])
                dev["mean_rel_err_r"] += ref["rel_err_r"]
    if n != len(lr["query_id"]):
        problems.append(f"low_rank.parquet has {len(lr['query_id'])} rows, expected {n}")
    # summary.json's per-layer means follow from low_rank.parquet.
    layers = {r["layer"]: r for r in summary(a.out)["layers"]}
    cols = {"mean_norm_w": "norm_w", "mean_err_r": "err_r", "mean_err_svd1": "err_svd1",
            "mean_rel_err_r": "rel_err_r", "mean_rel_err_svd1": "rel_err_svd1"}
    for l in sorted(set(lr["layer"])):
        idx = [i for i, x in enumerate(lr["layer"]) if x == l]
        r = layers.get(l)
        if r is None or r["matrices"] != len(idx):
            problems.append(f"summary.json layers: layer {l} {r} (expected {len(idx)} matrices)")
            continue
        for k, c in cols.items():
            v = float(np.mean([lr[c][i] for i in idx]))
            dev["summary_rel"] = max(dev["summary_rel"], abs(r[k] - v) / max(abs(v), 1e-12))
    dev["mean_rel_err_r"] /= max(n, 1)
    emit({"pairs": len(pairs), "matrices": n, "problems": problems[:20], **dev})


# ---------------------------------------------------------------------------------------
# Spectrum (DR)
# ---------------------------------------------------------------------------------------
def ranks(sv):
    sv = np.asarray(sv, dtype=np.float64)
    top = sv[0]
    p = sv / sv.sum()
    p = p[p > 0]
    return {
        "numerical_rank": int((sv > top * 1e-6).sum()),
        "effective_rank": float(math.exp(-(p * np.log(p)).sum())),
        "stable_rank": float((sv**2).sum() / top**2),
    }


def cmd_spectrum(a):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    st = SentenceTransformer(a.model, device="cpu")
    st = st.to(torch.float64)
    queries, _ = judged_queries(a.data, a.split)
    queries = [t for _, t in queries[: a.limit]]
    _, texts = corpus(a.data)
    n = len(texts)
    k = min(a.docs, n)
    docs = [texts[i * n // k] for i in range(k)]

    def enc(texts, max_len):
        st.max_seq_length = max_len
        e = st.encode(texts, batch_size=32, convert_to_numpy=False, convert_to_tensor=True)
        return e.double().numpy()

    Q, D = enc(queries, a.query_max_len), enc(docs, a.doc_max_len)
    sv = np.linalg.svd(Q @ D.T, compute_uv=False)
    t = table(os.path.join(a.out, "spectrum.parquet"))
    s = summary(a.out)
    got = np.asarray(t["singular_value"])
    problems = []
    if list(t["index"]) != list(range(1, len(sv) + 1)) or len(got) != len(sv):
        problems.append(f"spectrum.parquet: {len(got)} values (indices {t['index'][:3]}…), expected {len(sv)}")
        got = np.resize(got, len(sv))
    ref = ranks(sv)
    own = ranks(got)  # grdr's summary must follow from its own table
    # σ_k well above f32 noise (σ₁·1e-4) also relative to themselves: the small singular
    # values are what the effective rank is about.
    big = sv > sv[0] * 1e-4
    dev = {
        "sv_rel_top": float(np.abs(got - sv).max() / sv[0]),
        "sv_rel_each": float((np.abs(got - sv)[big] / sv[big]).max()),
        "sv_above_noise": int(big.sum()),
        "normalized_abs": float(np.abs(np.asarray(t["normalized"]) - got / got[0]).max()),
        "share_abs": float(np.abs(np.asarray(t["share"]) - got / got.sum()).max()),
        "effective_rank_rel": abs(s["effective_rank"] - ref["effective_rank"]) / ref["effective_rank"],
        "stable_rank_rel": abs(s["stable_rank"] - ref["stable_rank"]) / ref["stable_rank"],
        "own_effective_rank_rel": abs(s["effective_rank"] - own["effective_rank"]) / own["effective_rank"],
        "own_stable_rank_rel": abs(s["stable_rank"] - own["stable_rank"]) / own["stable_rank"],
    }
    if s["numerical_rank"] != own["numerical_rank"]:
        problems.append(f"summary numerical_rank {s['numerical_rank']} != {own['numerical_rank']} of spectrum.parquet")
    for key, want in [("dim", Q.shape[1]), ("queries", len(queries)), ("docs", k)]:
        if s[key] != want:
            problems.append(f"summary {key} {s[key]} != {want}")
    emit({"values": len(sv), "dim": Q.shape[1], "reference_numerical_rank": ref["numerical_rank"],
          "numerical_rank": s["numerical_rank"], "problems": problems, **dev})


# ---------------------------------------------------------------------------------------
# GR calibration (atomic docids): every docid's sequence log-likelihood from HF
# ---------------------------------------------------------------------------------------
def logsumexp(x):
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def brier_of(ll, rel_idx, r):
    """(Brier, mean p of the relevant) of p = softmax(ll); `rel_idx` the relevant docids'
    positions in `ll` (those outside the considered set count with p = 0), r = |relevant|."""
    p = np.exp(ll - logsumexp(ll))
    p_rel = np.zeros(r)
    p_rel[: len(rel_idx)] = p[rel_idx]
    return float((p * p).sum() - 2.0 / r * p_rel.sum() + 1.0 / r), float(p_rel.mean())


def atomic_log_likelihoods(m, query_ids, base, n_docs, eos, chunk, check):
    """log p([base + i, eos] | query) for every docid i, teacher forced from
    decoder_start_token_id, log-softmax over the whole vocabulary at each position (f64), and
    the first position's log-softmax (what the beam's first step ranks).

    HF's full forward makes (docids × 2 × vocabulary) logits, mostly the first position's,
    which is the same for every docid: too slow in f64 for every docid. So both positions
    come from HF's decoder and HF's own output head (`scale_decoder_outputs` then `lm_head`,
    as T5ForConditionalGeneration.forward does), position 0 once, and the `check` docids are
    also scored by HF's full forward: `self_fast_path_abs`, `self_first_step_abs`."""
    import torch

    start = m.config.decoder_start_token_id
    ids = torch.tensor([query_ids], dtype=torch.long)
    mask = torch.ones_like(ids)
    scale = m.config.d_model**-0.5 if getattr(m.config, "scale_decoder_outputs", m.config.tie_word_embeddings) else 1.0

    def full(docs):
        """HF's own forward over [start, base + d] for docids `docs`: ll and position 0's log p."""
        n = len(docs)
        dec = torch.tensor([[start, base + d] for d in docs], dtype=torch.long)
        with torch.no_grad():
            o = m(input_ids=ids.expand(n, -1), attention_mask=mask.expand(n, -1), decoder_input_ids=dec)
        lp = torch.log_softmax(o.logits.double(), dim=-1).numpy()  # (n, 2, V)
        return lp[np.arange(n), 0, base + np.asarray(docs)] + lp[:, 1, eos], lp[0, 0]

    with torch.no_grad():
        enc = m.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    ll = np.empty(n_docs)
    first = None
    for lo in range(0, n_docs, chunk):
        hi = min(n_docs, lo + chunk)
        n = hi - lo
        tok = torch.arange(base + lo, base + hi, dtype=torch.long)
        dec = torch.stack([torch.full((n,), start, dtype=torch.long), tok], dim=1)  # (n, 2)
        with torch.no_grad():
            h = m.decoder(
                input_ids=dec,
                encoder_hidden_states=enc.expand(n, -1, -1),
                encoder_attention_mask=mask.expand(n, -1),
            ).last_hidden_state  # (n, 2, D)
            if first is None:
                first = torch.log_softmax(m.lm_head(h[0, 0] * scale).double(), dim=-1).numpy()
            z = m.lm_head(h[:, 1] * scale).double()  # (n, V)
        # log Σ exp z per row, shifted by the chunk's largest logit (in place: torch's
        # logsumexp is 3× slower in f64); a row ~700 below it would underflow to −∞ and
        # make its ll +∞, which the caller refuses (`problems`).
        top = z.max()
        z_eos = z[:, eos].clone()
        lse = z.sub_(top).exp_().sum(dim=-1).log_() + top
        lp_eos = (z_eos - lse).numpy()
        ll[lo:hi] = first[base + lo : base + hi] + lp_eos
    ref_ll, ref_first = full(check)
    dev = {
        "self_fast_path_abs": float(np.abs(ll[check] - ref_ll).max()),
        "self_first_step_abs": float(np.abs(first - ref_first).max()),
    }
    return ll, first, dev


def hf_beam(m, query_ids, base, n_docs, eos, width):
    """HF transformers' own constrained beam search: generate(num_beams=W,
    length_penalty=0) over the atomic docid trie (docid token, then eos). Docid indices, best first."""
    import torch

    start = m.config.decoder_start_token_id
    docid_tokens = list(range(base, base + n_docs))

    def allowed(_batch, prefix):
        n = len(prefix)
        return docid_tokens if n == 1 else [eos] if n == 2 else [m.config.pad_token_id]

    ids = torch.tensor([query_ids], dtype=torch.long)
    with torch.no_grad():
        g = m.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            decoder_start_token_id=start,
            num_beams=width,
            num_return_sequences=width,
            length_penalty=0.0,
            early_stopping=False,
            do_sample=False,
            max_new_tokens=2,
            prefix_allowed_tokens_fn=allowed,
            return_dict_in_generate=True,
            output_scores=True,
        )
    seqs = g.sequences.tolist()
    return [s[1] - base for s in seqs], [float(x) for x in g.sequences_scores]


def cmd_gr_calibration(a):
    m = load_t5(a.model)
    cfg = m.config
    eos = cfg.eos_token_id
    tok_json = os.path.join(a.model, "tokenizer.json")
    problems = []
    # The docid file: one atomic docid per document, document doc_idx i → token base + i,
    # base = the vocabulary before the docid tokens (the exported tokenizer names them <d{i}>).
    dt = table(a.docids)
    doc_ids, _ = corpus(a.data)
    n_docs = len(doc_ids)
    if sorted(dt["doc_idx"]) != list(range(n_docs)) or any(len(t) != 1 for t in dt["tokens"]):
        problems.append("the docid file is not one atomic docid per document")
    base = cfg.vocab_size - n_docs
    tk = tokenizer(tok_json)
    if tk.token_to_id("<d0>") != base or tk.token_to_id(f"<d{n_docs - 1}>") != base + n_docs - 1:
        problems.append(f"tokenizer: <d0> = {tk.token_to_id('<d0>')}, base {base}")
    doc_idx = {d: i for i, d in enumerate(doc_ids)}

    queries, relevant = judged_queries(a.data, a.split)
    queries = queries[: a.limit]
    qtok = tokenizer(tok_json, a.query_max_len)
    got = table(os.path.join(a.out, "calibration.parquet"))
    s = summary(a.out)
    if list(got["query_id"]) != [q for q, _ in queries]:
        problems.append(f"calibration.parquet query_id {got['query_id']} != {[q for q, _ in queries]}")
    dev = defaultdict(float)
    per_query, beams = [], {}
    ref_cols = defaultdict(list)
    for row, (qid, text) in enumerate(queries):
        rel = sorted({doc_idx[d] for d in relevant.get(qid, []) if d in doc_idx})
        check = sorted(set(range(16)) | set(rel) | {n_docs - 1})
        ll, first, self_dev = atomic_log_likelihoods(m, qtok.encode(text).ids, base, n_docs, eos, a.chunk, check)
        for k, v in self_dev.items():
            dev[k] = max(dev[k], v)
        if not np.isfinite(ll).all():
            problems.append(f"query {qid}: {int((~np.isfinite(ll)).sum())} non-finite reference log-likelihoods")
        r = max(len(rel), 1)
        brier_exact, p_exact = brier_of(ll, rel, r)
        # The beam: HF's rule on a depth-2 trie keeps the W best first tokens (log p of the
        # docid token), each finished by its only continuation, eos; then renormalised.
        by_first = np.argsort(-first[base : base + n_docs], kind="stable")[: a.beam]
        by_ll = np.argsort(-ll, kind="stable")[: a.beam]
        beam = by_first
        in_beam = [i for i, d in enumerate(beam) if d in set(rel)]
        brier_beam, p_beam = brier_of(ll[beam], in_beam, r)
        in_top = [i for i, d in enumerate(by_ll) if d in set(rel)]
        brier_top, p_top = brier_of(ll[by_ll], in_top, r)
        hf_docs, hf_scores = hf_beam(m, qtok.encode(text).ids, base, n_docs, eos, a.beam)
        if sorted(hf_docs) != sorted(beam.tolist()):
            problems.append(f"query {qid}: HF generate's beam {hf_docs} != the {a.beam} best first tokens {beam.tolist()}")
        else:
            dev["hf_generate_score_abs"] = max(dev["hf_generate_score_abs"], float(np.abs(np.asarray(hf_scores) - ll[hf_docs]).max()))
        ref = {"brier_exact": brier_exact, "p_relevant_exact": p_exact, "brier_beam": brier_beam, "p_relevant_beam": p_beam}
        for k, v in ref.items():
            ref_cols[k].append(v)
        if row < len(got["query_id"]) and got["query_id"][row] == qid:
            for k, v in ref.items():
                dev[f"{k}_abs"] = max(dev[f"{k}_abs"], abs(got[k][row] - v))
                if k.startswith("p_") and v > 0:
                    dev[f"{k}_rel"] = max(dev[f"{k}_rel"], abs(got[k][row] - v) / v)
            # Σ p² = Brier − 1/r + 2·mean p_relevant: the part every docid contributes to.
            for kind in ["exact", "beam"]:
                want = ref[f"brier_{kind}"] - 1.0 / r + 2 * ref[f"p_relevant_{kind}"]
                have = got[f"brier_{kind}"][row] - 1.0 / r + 2 * got[f"p_relevant_{kind}"][row]
                dev[f"sum_p2_{kind}_rel"] = max(dev[f"sum_p2_{kind}_rel"], abs(have - want) / want)
            dev["brier_beam_vs_top_ll_abs"] = max(dev["brier_beam_vs_top_ll_abs"], abs(got["brier_beam"][row] - brier_top))
        beams[qid] = {
            "relevant": rel,
            "beam": beam.tolist(),
            "top_ll": by_ll.tolist(),
            "hf_generate": hf_docs,
            "beam_is_top_ll": sorted(beam.tolist()) == sorted(by_ll.tolist()),
            "brier_exact": brier_exact,
            "brier_beam": brier_beam,
            "brier_top_ll": brier_top,
            "p_max_exact": float(np.exp(ll.max() - logsumexp(ll))),
        }
    # summary.json: the counts, and the means of the per-query values.
    for key, want in [("docids", n_docs), ("queries", len(queries))]:
        if s.get(key) != want:
            problems.append(f"summary {key} {s.get(key)} != {want}")
    if s.get("beam", {}).get("width") != a.beam:
        problems.append(f"summary beam.width {s.get('beam', {}).get('width')} != {a.beam}")
    col = lambda k: np.asarray(got[k], dtype=np.float64)  # noqa: E731
    for path, v in [
        (("beam", "calibration", "Brier"), col("brier_beam").mean()),
        (("beam", "calibration", "p_relevant"), col("p_relevant_beam").mean()),
        (("exact", "calibration", "Brier"), col("brier_exact").mean()),
        (("exact", "calibration", "p_relevant"), col("p_relevant_exact").mean()),
        (("brier_beam_minus_exact", "mean"), (col("brier_beam") - col("brier_exact")).mean()),
        (("brier_beam_minus_exact", "max_abs"), np.abs(col("brier_beam") - col("brier_exact")).max()),
    ]:
        x = s
        for k in path:
            x = x.get(k, {}) if isinstance(x, dict) else {}
        if not isinstance(x, (int, float)):
            problems.append(f"summary {'.'.join(path)} missing")
            continue
        dev["summary_abs"] = max(dev["summary_abs"], abs(x - float(v)))
    emit({"queries": len(queries), "docids": n_docs, "base": base, "beams": beams,
          "problems": problems[:20], **dev})


# ---------------------------------------------------------------------------------------
# same: two analyze outputs (1 rank, N ranks) hold the same rows
# ---------------------------------------------------------------------------------------
def cmd_same(a):
    problems = []
    worst = 0.0
    files_a = sorted(f for f in os.listdir(a.a) if f.endswith(".parquet"))
    files_b = sorted(f for f in os.listdir(a.b) if f.endswith(".parquet"))
    if files_a != files_b:
        problems.append(f"Parquet files differ: {files_a} vs {files_b}")
    rows = {}
    for f in sorted(set(files_a) & set(files_b)):
        ta, tb = pq.read_table(os.path.join(a.a, f)), pq.read_table(os.path.join(a.b, f))
        rows[f] = ta.num_rows
        if ta.schema != tb.schema:
            problems.append(f"{f}: schemas differ")
            continue
        if ta.num_rows != tb.num_rows:
            problems.append(f"{f}: {ta.num_rows} vs {tb.num_rows} rows")
            continue
        for name in ta.schema.names:
            ca, cb = ta[name].to_pylist(), tb[name].to_pylist()
            if ta.schema.field(name).type in ("float", "double") or str(ta.schema.field(name).type) in ("float", "double"):
                x, y = np.asarray(ca, dtype=np.float64), np.asarray(cb, dtype=np.float64)
                if not np.array_equal(np.isnan(x), np.isnan(y)):
                    problems.append(f"{f}.{name}: NaNs differ")
                ok = ~np.isnan(x)
                if ok.any():
                    worst = max(worst, float(np.abs(x[ok] - y[ok]).max()))
            elif ca != cb:
                bad = next(i for i, (u, v) in enumerate(zip(ca, cb)) if u != v)
                problems.append(f"{f}.{name}: row {bad}: {ca[bad]!r} vs {cb[bad]!r}")
    sa, sb = summary(a.a), summary(a.b)

    def walk(x, y, path):
        nonlocal worst
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if k in ("ranks", "seconds", "subject", "data"):
                    continue
                if k not in x or k not in y:
                    problems.append(f"summary {path}.{k}: only in one")
                else:
                    walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, float) or isinstance(y, float):
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if not (math.isnan(x) and math.isnan(y)):
                    worst = max(worst, abs(x - y) / max(1.0, abs(x)))
            else:
                problems.append(f"summary {path}: {x!r} vs {y!r}")
        elif x != y:
            problems.append(f"summary {path}: {x!r} vs {y!r}")

    walk(sa, sb, "")
    emit({"files": rows, "ranks": [sa.get("ranks"), sb.get("ranks")], "max_float_diff": worst, "problems": problems[:20]})


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("out")
    p.add_argument("data")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--query-max-len", type=int, required=True)
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--docids")
    p.add_argument("--doc-max-len", type=int)
    p.add_argument("--colbert-query-len", type=int)
    p.add_argument("--augment-token", type=int)
    p.set_defaults(fn=cmd_pairs)
    p = sub.add_parser("gr-alignment")
    p.add_argument("model")
    p.add_argument("out")
    p.set_defaults(fn=cmd_gr_alignment)
    p = sub.add_parser("gr-heatmap")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--layer", type=int)
    p.set_defaults(fn=cmd_gr_heatmap)
    p = sub.add_parser("gr-exact-match")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("data")
    p.set_defaults(fn=cmd_gr_exact_match)
    p = sub.add_parser("colbert")
    p.add_argument("model")
    p.add_argument("align_out")
    p.add_argument("exact_out", nargs="?")
    p.add_argument("data", nargs="?")
    p.set_defaults(fn=cmd_colbert)
    p = sub.add_parser("low-rank")
    p.add_argument("model")
    p.add_argument("out")
    p.set_defaults(fn=cmd_low_rank)
    p = sub.add_parser("spectrum")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--docs", type=int, required=True)
    p.add_argument("--query-max-len", type=int, required=True)
    p.add_argument("--doc-max-len", type=int, required=True)
    p.add_argument("--split", default="test")
    p.set_defaults(fn=cmd_spectrum)
    p = sub.add_parser("gr-calibration")
    p.add_argument("model")
    p.add_argument("docids")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--beam", type=int, required=True)
    p.add_argument("--query-max-len", type=int, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--chunk", type=int, default=512)
    p.set_defaults(fn=cmd_gr_calibration)
    p = sub.add_parser("same")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(fn=cmd_same)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main(sys.argv[1:])
