#!/usr/bin/env python3
"""Reference metrics for grdr's evaluator, computed by pytrec_eval (i.e. trec_eval).

Run with the reference venv (`launcher/setup --reference`):

    ~/.cache/grdr/pyref/bin/python scripts/pytrec_reference.py --qrels QRELS --run RUN

Prints one JSON object: {"mean": {<grdr measure>: value, ..., "queries": N},
"per_query": {qid: {<grdr measure>: value}}}, with the key names of
grdr::eval::metrics::MEASURES. tests/metrics_parity.rs compares it with grdr to 1e-6.

Files are read with plain Python (no BEIR, no pandas) so this script shares no parsing
code with grdr: qrels as BEIR TSV (header `query-id<TAB>corpus-id<TAB>score`) or
4-column TREC `qid iter docno rel`; runs as 6-column TREC `qid Q0 docno rank score tag`.

Query set, as grdr's (trec_eval -c): every judged query; a judged query missing from
the run scores 0 on every measure; run queries without judgements are ignored.
MRR@10 is trec_eval's recip_rank on each query's top 10 in trec_eval's own order
(score descending as float32, then doc id descending).
"""
import argparse
import json
import sys

import numpy as np
import pytrec_eval

# grdr name -> pytrec_eval key, in grdr's report order.
MEASURES = {
    "nDCG@10": "ndcg_cut_10",
    "R@1": "recall_1",
    "R@10": "recall_10",
    "R@100": "recall_100",
    "R@1000": "recall_1000",
    "MRR@10": "recip_rank",
    "MAP": "map",
    "success@1": "success_1",
    "success@5": "success_5",
    "success@10": "success_10",
}
FULL_RUN_MEASURES = {"ndcg_cut.10", "recall.1,10,100,1000", "map", "success.1,5,10"}


def read_qrels(path):
    qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\n").rstrip("\r") for line in f]
    if lines and lines[0] == "query-id\tcorpus-id\tscore":
        rows = [line.split("\t") for line in lines[1:]]
    else:
        rows = [line.split() for line in lines]
        rows = [[r[0], r[2], r[3]] if len(r) == 4 else r for r in rows]
    for n, row in enumerate(rows):
        if len(row) != 3:
            sys.exit(f"{path}: malformed qrels row {n}: {row!r}")
        qid, docno, rel = row
        if docno in qrels.setdefault(qid, {}):
            sys.exit(f"{path}: duplicate judgement {qid} {docno}")
        qrels[qid][docno] = int(rel)
    return qrels


def read_run(path):
    run = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) != 6:
                sys.exit(f"{path}: malformed run line: {line!r}")
            qid, _, docno, _, score, _ = fields
            docs = run.setdefault(qid, {})
            if docno in docs:
                sys.exit(f"{path}: duplicate doc {qid} {docno}")
            docs[docno] = float(score)
    return run


def top_k_trec_order(docs, k):
    # trec_eval comp_sim_docno: score descending, ties by docno descending (strcmp;
    # Python's str order is code-point order, which is UTF-8 byte order). The trec_eval
    # inside pytrec_eval keeps scores as C floats, so scores equal in float32 tie.
    def key(item):
        with np.errstate(over="ignore"):
            return (float(np.float32(item[1])), item[0])

    ranked = sorted(docs.items(), key=key, reverse=True)
    return dict(ranked[:k])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qrels", required=True)
    ap.add_argument("--run", required=True)
    args = ap.parse_args()

    qrels = read_qrels(args.qrels)
    run = read_run(args.run)
    judged_run = {q: docs for q, docs in run.items() if q in qrels}

    full = pytrec_eval.RelevanceEvaluator(qrels, FULL_RUN_MEASURES).evaluate(judged_run)
    top10 = {q: top_k_trec_order(docs, 10) for q, docs in judged_run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    per_query = {}
    for qid in sorted(qrels):
        values = {}
        for name, key in MEASURES.items():
            source = rr if key == "recip_rank" else full
            values[name] = float(source[qid][key]) if qid in source else 0.0
        per_query[qid] = values

    n = len(per_query)
    mean = {
        name: (sum(v[name] for v in per_query.values()) / n if n else 0.0)
        for name in MEASURES
    }
    mean["queries"] = n
    json.dump({"mean": mean, "per_query": per_query}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
