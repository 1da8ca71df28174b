#!/usr/bin/env python3
"""faiss IndexFlatIP on the embeddings `tests/eval_bench.rs flat_search` wrote (same data,
same threads): exact inner-product top-k, search time only, and agreement with grdr's ids.

    python bench_eval_faiss.py --dir BENCH_DIR --threads T
"""
import argparse
import json
import resource
import time

import faiss
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    meta = json.load(open(f"{args.dir}/grdr_flat.json"))
    d, k = meta["dim"], meta["k"]
    docs = np.fromfile(f"{args.dir}/docs.f32", dtype="<f4").reshape(-1, d)
    queries = np.fromfile(f"{args.dir}/queries.f32", dtype="<f4").reshape(-1, d)
    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexFlatIP(d)
    index.add(docs)
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    secs = time.perf_counter() - t0
    ours = json.load(open(f"{args.dir}/grdr_ids.json"))
    same_lists = sum(list(a) == b for a, b in zip(ids.tolist(), ours)) / len(ours)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), ours)) / (len(ours) * k)
    out = {
        "faiss_version": faiss.__version__,
        "threads": args.threads,
        "seconds": secs,
        "queries_per_second": len(queries) / secs,
        "identical_topk_lists": same_lists,
        "topk_overlap": overlap,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    json.dump(out, open(f"{args.dir}/faiss_flat.json", "w"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
