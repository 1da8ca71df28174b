"""bm25s on a BEIR directory with the same analysis as grdr's BM25 (lower-case, English
stop words, Snowball English stemmer, k1=1.2, b=0.75, document = title + text); writes a
TREC run (top 1000) and timing.json. Used by scripts/bench-bm25."""
import argparse, json, os, time

import bm25s
import Stemmer

p = argparse.ArgumentParser()
p.add_argument("--beir", required=True)
p.add_argument("--out", required=True)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--k", type=int, default=1000)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)

docs = [json.loads(l) for l in open(f"{a.beir}/corpus.jsonl")]
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{a.beir}/queries.jsonl"))}
judged = []
for line in list(open(f"{a.beir}/qrels/test.tsv"))[1:]:
    qid = line.split("\t")[0]
    if qid not in judged:
        judged.append(qid)
texts = [(d.get("title") or "") + " " + d["text"] for d in docs]
stemmer = Stemmer.Stemmer("english")
threads = os.cpu_count() or 1

index_s, search_s = [], []
for _ in range(a.repeat):
    t0 = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=1.2, b=0.75)
    retriever.index(tokens, show_progress=False)
    index_s.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    q_tokens = bm25s.tokenize([queries[q] for q in judged], stopwords="en", stemmer=stemmer, show_progress=False)
    results, scores = retriever.retrieve(q_tokens, k=a.k, n_threads=threads, show_progress=False)
    search_s.append(time.perf_counter() - t1)

with open(f"{a.out}/run.trec", "w") as f:
    for qi, qid in enumerate(judged):
        for rank, (di, s) in enumerate(zip(results[qi], scores[qi]), 1):
            f.write(f"{qid} Q0 {docs[di]['_id']} {rank} {float(s)!r} bm25s\n")
json.dump({"index_seconds": index_s, "search_seconds": search_s, "version": bm25s.__version__, "threads": threads},
          open(f"{a.out}/timing.json", "w"))
