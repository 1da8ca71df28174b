#!/usr/bin/env python3
"""Issue 3 benchmark: our T5/BERT against HF transformers, and `grdr encode` against
sentence-transformers, in one run, same config/batch/length/threads. Prints a markdown table.

    ~/.cache/grdr/pyref/bin/python scripts/bench-models.py [--threads 2] [--rounds 2] [--docs N]

Forward+backward: random-init models in training mode (dropout on), random ids, full-length
rows; T5 loss = teacher-forced token NLL, BERT loss = mean(hidden²); tokens/s counts encoder +
decoder tokens per step. Each round runs, per case, HF then ours (interleaved, so load changes on
a shared machine hit both); the median round of each is reported, with the load average.
Encode: SciFact documents (title + " " + text), max length 256, batch 64, all-MiniLM-L6-v2;
the time to tokenize and embed (model loading and file writing excluded on both sides).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRDR_CACHE") or Path.home() / ".cache" / "grdr")

T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0)
MINILM = json.loads((Path(json.loads((CACHE / "assets.json").read_text())["minilm"]) / "config.json").read_text())

CASES = [
    dict(name="T5-small fwd+bwd (B=8, L=128, T=16)", model="t5", config=T5_SMALL, batch=8, seq_len=128, target_len=16),
    dict(name="MiniLM-L6 fwd+bwd (B=32, L=128)", model="bert", config=MINILM, batch=32, seq_len=128),
]


def hf_bench(case, warmup, steps):
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    b, l = case["batch"], case["seq_len"]
    if case["model"] == "t5":
        model = T5ForConditionalGeneration(T5Config(**case["config"])).train()
        t = case["target_len"]
        ids = torch.randint(2, case["config"]["vocab_size"], (b, l))
        labels = torch.randint(2, case["config"]["vocab_size"], (b, t))
        mask = torch.ones_like(ids)
        step = lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        tokens = b * (l + t)
    else:
        model = BertModel(BertConfig(**case["config"])).train()
        ids = torch.randint(1000, case["config"]["vocab_size"], (b, l))
        mask = torch.ones_like(ids)
        step = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
        tokens = b * l
    for _ in range(warmup):
        model.zero_grad(set_to_none=False)
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=False)
        step()
    sec = (time.perf_counter() - t0) / steps
    return dict(name=case["name"], impl="hf", sec_per_step=sec, tokens_per_sec=tokens / sec,
                attn=model.config._attn_implementation)


def grdr_bench(cases, threads, warmup, steps):
    spec = dict(threads=threads, warmup=warmup, steps=steps, cases=cases)
    env = dict(os.environ, GRDR_BENCH=json.dumps(spec))
    out = subprocess.run(["cargo", "test", "-q", "--bench", "models", "--", "--ignored", "--nocapture"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cargo bench failed:\n{out.stderr[-3000:]}")
    return [json.loads(line[6:]) for line in out.stdout.splitlines() if line.startswith("BENCH ")]


def grdr_bin():
    subprocess.run(["cargo", "build", "-q", "--bin", "grdr"], cwd=ROOT, check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout)
    return Path(meta["target_directory"]) / "debug" / "grdr"


def encode_bench(threads, scifact, limit, rounds):
    from sentence_transformers import SentenceTransformer
    rows = [json.loads(x) for x in open(Path(scifact) / "corpus.jsonl") if x.strip()]
    if limit:
        rows = rows[:limit]
    texts = [(d["title"] + " " + d["text"]) if d["title"] else d["text"] for d in rows]
    grdr = grdr_bin()
    with tempfile.TemporaryDirectory() as tmp:
        beir = Path(tmp) / "beir"
        (beir / "qrels").mkdir(parents=True)
        (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
        src = Path(scifact)
        (beir / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
        ids = {d["_id"] for d in rows}
        qrels = [l for l in (src / "qrels" / "test.tsv").read_text().splitlines()[1:] if l.split("\t")[1] in ids]
        (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
        ds = Path(tmp) / "ds"
        subprocess.run([grdr, "-q", "prepare", "beir", "--input", beir, "--output", ds], check=True)
        model = SentenceTransformer(str(Path(json.loads((CACHE / "assets.json").read_text())["minilm"])), device="cpu")
        model.max_seq_length = 256
        st_secs, our_secs = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model.encode(texts, batch_size=64, normalize_embeddings=True)
            st_secs.append(time.perf_counter() - t0)
            out = subprocess.run([grdr, "encode", "--model", "minilm", "--data", ds, "--what", "docs", "--output",
                                  Path(tmp) / "d.parquet", "--threads", str(threads), "--batch-size", "64",
                                  "--max-len", "256", "--overwrite"], capture_output=True, text=True, check=True)
            our_secs.append(float(re.search(r"\d+ docs in ([\d.]+)s", out.stderr).group(1)))
            print(json.dumps(dict(st_sec=st_secs[-1], grdr_sec=our_secs[-1])), flush=True)
    name = f"encode SciFact docs ({len(texts)}), MiniLM, L≤256, B=64, median of {rounds}"
    st = dict(name=name, impl="sentence-transformers", docs_per_sec=len(texts) / statistics.median(st_secs))
    ours = dict(name=name, impl="grdr", docs_per_sec=len(texts) / statistics.median(our_secs))
    return st, ours


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--docs", type=int, default=0, help="encode only the first N documents (0: all)")
    ap.add_argument("--scifact", default=str(ROOT.parent / "shared" / "datasets" / "scifact"))
    ap.add_argument("--skip-encode", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for case in CASES:
            for res in [hf_bench(case, args.warmup, args.steps)] + grdr_bench([case], args.threads, args.warmup, args.steps):
                print(json.dumps(res), flush=True)
                runs.setdefault((res["name"], res["impl"]), []).append(res["tokens_per_sec"])
        load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\nload average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in load)}")
    print(f"\n| case (threads={args.threads}, median of {args.rounds}) | HF transformers tokens/s | grdr tokens/s | grdr / HF |")
    print("|---|---:|---:|---:|")
    for case in CASES:
        hf, ours = med[(case["name"], "hf")], med[(case["name"], "grdr")]
        print(f"| {case['name']} | {hf:.0f} | {ours:.0f} | {ours / hf:.2f} |")
    if not args.skip_encode:
        st, ours = encode_bench(args.threads, args.scifact, args.docs, args.rounds)
        print(json.dumps(st), json.dumps(ours), sep="\n")
        print(f"load average (1 min) after encoding: {os.getloadavg()[0]:.1f}")
        print(f"\n| case (threads={args.threads}) | sentence-transformers docs/s | grdr encode docs/s | grdr / ST |")
        print("|---|---:|---:|---:|")
        print(f"| {st['name']} | {st['docs_per_sec']:.1f} | {ours['docs_per_sec']:.1f} | {ours['docs_per_sec'] / st['docs_per_sec']:.2f} |")


if __name__ == "__main__":
    main()
