"""The reference for `grdr train`'s throughput: the same DR fine-tuning step written with
HF transformers + PyTorch in one script — all-MiniLM-L6-v2, mean pooling, L2 norm, in-batch
InfoNCE at temperature 0.05, AdamW (no decay on biases/LayerNorm), linear schedule,
clipping at 1.0 — over the same SciFact training pairs, batch, truncation lengths and
threads. Padding to the longest text of each batch, as grdr does.

Prints one JSON object: median samples/s and tokens/s over steps 2..N (step 1 is warm-up).
"""
import argparse, json, os, statistics, time

import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True, help="a grdr dataset directory")
ap.add_argument("--model", required=True, help="all-MiniLM-L6-v2 directory")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--query-len", type=int, default=64)
ap.add_argument("--doc-len", type=int, default=128)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                help="bf16: the forward under torch.autocast('cpu', bfloat16), as grdr's train.precision")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

docs = pq.read_table(f"{args.data}/docs.parquet", columns=["doc_id", "title", "text"]).to_pylist()
queries = pq.read_table(f"{args.data}/queries.parquet", columns=["query_id", "text"]).to_pylist()
qrels = pq.read_table(f"{args.data}/qrels.parquet").to_pylist()
doc_text = {d["doc_id"]: (f"{d['title']} {d['text']}" if d["title"] else d["text"]) for d in docs}
query_text = {q["query_id"]: q["text"] for q in queries}
pairs = sorted((r["query_id"], r["doc_id"]) for r in qrels if r["split"] == "train" and r["relevance"] > 0)

tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModel.from_pretrained(args.model).train()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=2e-5)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, args.steps)))


def embed(texts, max_len):
    b = tok(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1), int(b["attention_mask"].sum())


times, samples, tokens = [], [], []
for step in range(args.steps):
    chunk = [pairs[(step * args.batch + i) % len(pairs)] for i in range(args.batch)]
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        q, nq = embed([query_text[a] for a, _ in chunk], args.query_len)
        d, nd = embed([doc_text[b] for _, b in chunk], args.doc_len)
        loss = torch.nn.functional.cross_entropy(q @ d.T / 0.05, torch.arange(len(chunk)))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=False)
    float(loss)
    times.append(time.perf_counter() - t0)
    samples.append(len(chunk))
    tokens.append(nq + nd)
rates = [(s / t, n / t) for s, n, t in list(zip(samples, tokens, times))[1:]]
print(json.dumps({
    "samples_per_s": statistics.median(r[0] for r in rates),
    "tokens_per_s": statistics.median(r[1] for r in rates),
    "torch": torch.__version__, "threads": args.threads, "batch": args.batch, "steps": args.steps,
    "precision": args.precision,
}))
