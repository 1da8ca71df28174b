#!/usr/bin/env python3
"""sentence-transformers encoding of a grdr dataset's documents (title + text), the
reference for `grdr eval`'s docs/s: same model directory, max_seq_length, batch size and
threads.

    python bench_eval_encode.py --data DATASET --model DIR --threads T --batch-size B --out OUT.json
"""
import argparse
import json
import time

import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(f"{args.data}/docs.parquet", columns=["title", "text"]).to_pydict()
    texts = [f"{a} {b}" if a else b for a, b in zip(t["title"], t["text"])]
    model = SentenceTransformer(args.model, device="cpu")
    t0 = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    secs = time.perf_counter() - t0
    out = {"docs": len(texts), "seconds": secs, "docs_per_second": len(texts) / secs, "threads": args.threads,
           "max_seq_length": model.max_seq_length}
    json.dump(out, open(args.out, "w"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
