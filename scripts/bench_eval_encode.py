#!/usr/bin/env python3
"""sentence-transformers encoding of a grdr dataset's documents (title + text), the
reference for `grdr eval`'s docs/s: same model directory, max_seq_length, batch size and
threads (CPU) or device and precision (CUDA).

    python bench_eval_encode.py --data DATASET --model DIR --threads T --batch-size B --out OUT.json
        [--device cuda --bf16] [--search K]

--search K also encodes the dataset's queries and times exact inner-product top-K over the
document embeddings with torch on the same device, in blocks of queries (the reference for
`grdr eval`'s search on a GPU, where faiss-cpu does not apply).
"""
import argparse
import json
import time

import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="model in bfloat16 (CUDA)")
    ap.add_argument("--search", type=int, default=0, metavar="K")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(f"{args.data}/docs.parquet", columns=["title", "text"]).to_pydict()
    texts = [f"{a} {b}" if a else b for a, b in zip(t["title"], t["text"])]
    model = SentenceTransformer(args.model, device=args.device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    # Warm-up (CUDA context, kernels) outside the timed region, as grdr's is not timed either.
    model.encode(texts[: args.batch_size], batch_size=args.batch_size)
    sync(args.device)
    t0 = time.perf_counter()
    docs = model.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
    sync(args.device)
    secs = time.perf_counter() - t0
    out = {"docs": len(texts), "seconds": secs, "docs_per_second": len(texts) / secs, "threads": args.threads,
           "max_seq_length": model.max_seq_length, "device": args.device, "bf16": args.bf16}
    if args.search:
        q = pq.read_table(f"{args.data}/queries.parquet", columns=["text"]).to_pydict()["text"]
        queries = model.encode(q, batch_size=args.batch_size, convert_to_tensor=True)
        sync(args.device)
        t0 = time.perf_counter()
        for lo in range(0, len(q), 1024):
            scores = queries[lo : lo + 1024].float() @ docs.float().T
            scores.topk(args.search, dim=1)
        sync(args.device)
        out.update({"queries": len(q), "search_seconds": time.perf_counter() - t0, "k": args.search})
    json.dump(out, open(args.out, "w"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
