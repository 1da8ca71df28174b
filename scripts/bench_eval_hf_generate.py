#!/usr/bin/env python3
"""HF transformers' constrained beam search, the reference for `src/search/beam.rs`.

    parity: python bench_eval_hf_generate.py parity --model DIR --spec SPEC.json --out OUT.json
        SPEC: {"docids": [[tok, ..., eos], ...], "queries": [[ids], ...], "beams": [W, ...]}
        OUT:  {"W": [[{"tokens": [...], "score": s}, ...] per query], ...}
        generate(num_beams=W, num_return_sequences=W, length_penalty=0.0 (score = Σ log p),
        prefix_allowed_tokens_fn=trie) — one query at a time, no padding.
    bench:  python bench_eval_hf_generate.py bench --model DIR --spec SPEC.json --out OUT.json [--threads N] [--profile FILE] [--device cuda]
        SPEC as above with "threads"; OUT: {"W": {"seconds": s, "queries": n, "threads": t}} (batched queries,
        same generate call), timing the generate calls only. --profile: after timing, one more
        batch per W under torch.profiler, its op table (self CPU time) written to FILE.
        --device cuda: model and inputs on the GPU, timed up to a synchronize.

Both build the prefix → allowed-tokens map once (a dict over all docid prefixes), the usual
way GR code (DSI/NCI/SEAL-style repos) feeds `prefix_allowed_tokens_fn`.
"""
import argparse
import json
import time

import torch
from transformers import T5ForConditionalGeneration


def build_allowed(docids):
    allowed = {}
    for d in docids:
        for i in range(len(d)):
            allowed.setdefault(tuple(d[:i]), set()).add(d[i])
    return {k: sorted(v) for k, v in allowed.items()}


def generate_parity(model, queries, w, max_new_tokens, prefix_fn, device="cpu"):
    """HF's constrained beam search one query at a time, unpadded: per query the W sequences
    `generate(num_beams=W, num_return_sequences=W, length_penalty=0)` returns, as
    {"tokens": the decoded tokens (no start token; up to eos, or without trailing pads),
    "score": Σ log p}. Greedy output (W = 1) carries no sequence score: it is teacher-forced."""
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    per_query = []
    for q in queries:
        ids = torch.tensor([q], device=device)
        g = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=w,
            num_return_sequences=w,
            length_penalty=0.0,
            do_sample=False,
            early_stopping=False,
            max_new_tokens=max_new_tokens,
            prefix_allowed_tokens_fn=prefix_fn,
            output_scores=True,
            return_dict_in_generate=True,
            # transformers 5.23 sizes the cache by the encoder's layer count, which breaks
            # models with num_decoder_layers != num_layers (t5_v10).
            use_cache=False,
        )
        hyps = []
        scores = g.sequences_scores.tolist() if w > 1 else [None] * len(g.sequences)
        for seq, score in zip(g.sequences.tolist(), scores):
            toks = seq[1:]
            if eos in toks:
                toks = toks[: toks.index(eos) + 1]
            while toks and toks[-1] == pad:
                toks.pop()
            if score is None:
                labels = torch.tensor([toks], device=device)
                logits = model(input_ids=ids, labels=labels).logits
                score = logits.log_softmax(-1)[0, torch.arange(len(toks)), labels[0]].sum().item()
            hyps.append({"tokens": toks, "score": score})
        per_query.append(hyps)
    return per_query


def padded(part, pad, device="cpu"):
    """Right-padded input ids and attention mask of a batch of token-id lists."""
    L = max(len(q) for q in part)
    ids = torch.tensor([q + [pad] * (L - len(q)) for q in part], device=device)
    mask = torch.tensor([[1] * len(q) + [0] * (L - len(q)) for q in part], device=device)
    return ids, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["parity", "bench"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", help="bench: write a torch.profiler op table of one batch per W here")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the spec's \"threads\", else 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    torch.set_num_threads(args.threads or int(spec.get("threads", 1)))
    model = T5ForConditionalGeneration.from_pretrained(args.model).eval().to(args.device)
    cuda = args.device.startswith("cuda")
    eos = model.config.eos_token_id
    allowed = build_allowed(spec["docids"])
    depth = max(len(d) for d in spec["docids"])

    def prefix_fn(batch_id, input_ids):
        # input_ids: the decoder prefix, starting with decoder_start_token_id.
        return allowed.get(tuple(input_ids[1:].tolist()), [eos])

    out = {}
    with torch.no_grad():
        for w in spec["beams"]:
            if args.mode == "parity":
                per_query = generate_parity(model, spec["queries"], w, depth, prefix_fn)
                out[str(w)] = per_query
            else:
                batch = int(spec.get("batch", 8))
                qs = spec["queries"]
                if w == spec["beams"][0] or cuda:  # warm-up (thread pools, first allocations; CUDA kernels per W)
                    ids = torch.tensor(qs[:1], device=args.device)
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=w, max_new_tokens=depth,
                                   length_penalty=0.0, prefix_allowed_tokens_fn=prefix_fn)

                def run(part):
                    ids, mask = padded(part, 0, args.device)
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        num_beams=w,
                        num_return_sequences=min(w, int(spec.get("k", w))),
                        length_penalty=0.0,
                        do_sample=False,
                        max_new_tokens=depth,
                        prefix_allowed_tokens_fn=prefix_fn,
                    )

                t0 = time.perf_counter()
                for i in range(0, len(qs), batch):
                    run(qs[i : i + batch])
                if cuda:
                    torch.cuda.synchronize()
                out[str(w)] = {"seconds": time.perf_counter() - t0, "queries": len(qs), "threads": torch.get_num_threads(),
                               "device": args.device}
                if args.profile:
                    from torch.profiler import ProfilerActivity, profile

                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        t1 = time.perf_counter()
                        run(qs[:batch])
                        t1 = time.perf_counter() - t1
                    with open(args.profile, "a") as f:
                        f.write(f"## W={w}, one batch of {min(batch, len(qs))} queries, {t1 * 1e3:.0f} ms under the profiler\n")
                        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20) + "\n")
    json.dump(out, open(args.out, "w"))


if __name__ == "__main__":
    main()
