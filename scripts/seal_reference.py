#!/usr/bin/env python3
"""HF transformers' `generate` constrained by a plain suffix array over a corpus: the reference
for SEAL decoding (`src/search/constraint.rs` FmConstraint under `src/search/beam.rs`).

    parity: python seal_reference.py parity --model DIR --spec SPEC.json --out OUT.json
        SPEC: {"docs": [[tok, ...], ...] (no eos), "eos": int, "queries": [[ids], ...],
               "beams": [W, ...], "max_len": L}
        OUT:  {"W": [[{"tokens": [...], "score": s}, ...] per query], ...}
        generate(num_beams=W, num_return_sequences=W, length_penalty=0.0 (score = Σ log p),
        max_new_tokens=L, early_stopping=False, prefix_allowed_tokens_fn=suffix array, eos
        allowed where the prefix ends a document) — one query at a time, no padding. Tokens
        exclude the decoder start token and trailing pads. W = 1 is greedy search, which
        carries no sequence score: it is teacher-forced.
    bench:  python seal_reference.py bench --model DIR --spec SPEC.json --out OUT.json [--threads N] [--device cuda]
        SPEC as above with "threads" and optional "batch" (default 8); OUT: {"W": {"seconds": s,
        "queries": n, "threads": t}}. Batched, padded queries; the same constraint but eos never
        allowed (SEAL decodes fixed-length n-grams), max_new_tokens=L; times the generate calls
        only (after one warm-up call), their suffix-array look-ups included (memoised per
        prefix within one W, cleared between Ws).
    next:   python seal_reference.py next --spec SPEC.json --out OUT.json
        SPEC: {"docs": [...], "eos": int, "prefixes": [[tok, ...], ...]} (tests/seal_bench.rs
        fm_next_token writes it); OUT: {"next_token_us": {"median", "p90", "p99", "mean"}}: the
        constraint alone — one prefix's allowed next tokens with their counts, not memoised —
        timed one call at a time.

The corpus text is each document followed by eos, concatenated; its suffix array is built
once (prefix doubling over numpy arrays). A decoder prefix's allowed next tokens are the
distinct tokens that follow it in the suffixes starting with it (a binary-searched range of
the suffix array): eos where the prefix ends a document; never eos after the empty prefix
(no n-gram is empty). A prefix that ends with eos, or that nothing may follow, gets [eos]
(HF needs a non-empty list; it handles finished beams itself).
"""
import argparse
import json
import time

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from bench_eval_hf_generate import generate_parity, padded  # the trie reference's HF loop


def suffix_array(text):
    """Suffix array of the int array `text` by prefix doubling: O(n log² n)."""
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.unique(text, return_inverse=True)[1].astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        if k < n:
            second[: n - k] = rank[k:]
        sa = np.lexsort((second, rank))  # by rank, then by the rank k positions on
        r, s = rank[sa], second[sa]
        new = np.zeros(n, dtype=np.int64)
        new[1:] = np.cumsum((r[1:] != r[:-1]) | (s[1:] != s[:-1]))
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = new
        if new[-1] == n - 1 or k >= n:
            return sa
        k *= 2


class SuffixArrayConstraint:
    """Which tokens may follow a prefix in the corpus `docs` (each followed by `eos`)."""

    def __init__(self, docs, eos, allow_eos):
        self.text = np.array([t for d in docs for t in list(d) + [eos]], dtype=np.int64)
        self.sa = suffix_array(self.text)
        self.eos = eos
        self.allow_eos = allow_eos
        self.memo = {}

    def range(self, prefix):
        """[lo, hi): the suffix-array rows whose suffixes start with `prefix`."""
        text, sa, m, p = self.text, self.sa, len(prefix), list(prefix)

        def head(i):
            return text[sa[i] : sa[i] + m].tolist()

        lo, hi = 0, len(sa)
        while lo < hi:  # first suffix ≥ prefix
            mid = (lo + hi) // 2
            if head(mid) < p:
                lo = mid + 1
            else:
                hi = mid
        start, hi = lo, len(sa)
        while lo < hi:  # first suffix whose first m tokens are > prefix
            mid = (lo + hi) // 2
            if head(mid) <= p:
                lo = mid + 1
            else:
                hi = mid
        return start, lo

    def allowed(self, prefix):
        prefix = tuple(prefix)
        if prefix in self.memo:
            return self.memo[prefix]
        if prefix and prefix[-1] == self.eos:
            out = [self.eos]
        else:
            lo, hi = self.range(prefix)
            pos = self.sa[lo:hi] + len(prefix)
            nxt = np.unique(self.text[pos[pos < len(self.text)]])
            out = [int(t) for t in nxt if t != self.eos or (self.allow_eos and prefix)]
            if not out:
                out = [self.eos]
        self.memo[prefix] = out
        return out

    def count(self, seq):
        lo, hi = self.range(seq)
        return hi - lo


def next_token(spec, out_path):
    """Times the reference constraint's next-token query over the spec's prefixes."""
    con = SuffixArrayConstraint(spec["docs"], int(spec["eos"]), allow_eos=True)
    times = []
    for p in spec["prefixes"]:
        t = time.perf_counter()
        lo, hi = con.range(p)
        pos = con.sa[lo:hi] + len(p)
        np.unique(con.text[pos[pos < len(con.text)]], return_counts=True)
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    q = lambda f: times[round((len(times) - 1) * f)]
    json.dump({"next_token_us": {"median": q(0.5), "p90": q(0.9), "p99": q(0.99), "mean": sum(times) / len(times)}, "prefixes": len(times)}, open(out_path, "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["parity", "bench", "next"])
    ap.add_argument("--model")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the spec's \"threads\", else 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    if args.mode == "next":
        return next_token(spec, args.out)
    if not args.model:
        ap.error("--model is required for parity and bench")
    torch.set_num_threads(args.threads or int(spec.get("threads", 1)))
    model = T5ForConditionalGeneration.from_pretrained(args.model).eval().to(args.device)
    cfg = model.config
    cuda = args.device.startswith("cuda")
    eos = int(spec["eos"])
    max_len = int(spec["max_len"])
    con = SuffixArrayConstraint(spec["docs"], eos, allow_eos=args.mode == "parity")
    # transformers 5.23 sizes the cache by the encoder's layer count, which breaks models with
    # num_decoder_layers != num_layers (the t5_v10 fixture): no cache for those.
    cache_ok = (cfg.num_decoder_layers or cfg.num_layers) == cfg.num_layers

    def prefix_fn(batch_id, input_ids):
        # input_ids: the decoder prefix, starting with decoder_start_token_id.
        return con.allowed(input_ids[1:].tolist())

    out = {}
    with torch.no_grad():
        for w in spec["beams"]:
            if args.mode == "parity":
                per_query = generate_parity(model, spec["queries"], w, max_len, prefix_fn, args.device)
                out[str(w)] = per_query
            else:
                batch = int(spec.get("batch", 8))
                qs = spec["queries"]

                def run(part):
                    ids, mask = padded(part, cfg.pad_token_id, args.device)
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        num_beams=w,
                        num_return_sequences=w,
                        length_penalty=0.0,
                        do_sample=False,
                        early_stopping=False,
                        max_new_tokens=max_len,
                        prefix_allowed_tokens_fn=prefix_fn,
                        use_cache=cache_ok,
                    )

                if w == spec["beams"][0] or cuda:  # warm-up (thread pools, first allocations; CUDA kernels per W)
                    run(qs[:1])
                con.memo.clear()  # every W looks its prefixes up in the suffix array (once each)
                t0 = time.perf_counter()
                for i in range(0, len(qs), batch):
                    run(qs[i : i + batch])
                if cuda:
                    torch.cuda.synchronize()
                out[str(w)] = {"seconds": time.perf_counter() - t0, "queries": len(qs),
                               "threads": torch.get_num_threads(), "device": args.device}
    json.dump(out, open(args.out, "w"))


if __name__ == "__main__":
    main()
