"""The reference for `grdr train`'s throughput at T5 shapes (issue 20): the DSI step (T5
generating atomic docids: half SciFact training queries, half the first 64 tokens of
documents, each → [docid token, eos]) or the DR step (the T5 encoder as a dual encoder, mean
pooling, L2 norm, in-batch InfoNCE at temperature 0.05) written with HF transformers +
PyTorch — random initialisation, dropout 0.1, AdamW (no decay on biases and norms),
linear schedule, clipping at 1.0, padding to the longest text of each batch — on the same
data, batch, input lengths and precision as `scripts/bench-train-t5` gives `grdr train`.

It also counts the model FLOPs of the samples it trains on (forward + backward = 3 ×
forward = 6 × parameters × tokens for every product, attention's two products included,
real tokens only), which the driver applies to both sides for MFU.

Prints one JSON object: median samples/s and tokens/s over steps 2..N, FLOPs per sample.
"""
import argparse
import json
import os
import statistics
import time

import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, T5Config, T5EncoderModel, T5ForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument("--task", choices=["dsi", "dr"], required=True)
ap.add_argument("--data", required=True, help="a grdr dataset directory")
ap.add_argument("--tokenizer", required=True, help="the t5-tokenizer directory")
ap.add_argument("--d-model", type=int, default=768)
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--d-ff", type=int, default=3072)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--query-len", type=int, default=32)
ap.add_argument("--doc-len", type=int, default=64)
ap.add_argument("--device", default="cpu")
ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
ap.add_argument("--compile", action="store_true", help="torch.compile the model")
ap.add_argument("--threads", type=int, default=os.cpu_count())
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
dev = torch.device(args.device)

docs = pq.read_table(f"{args.data}/docs.parquet", columns=["doc_id", "title", "text"]).to_pylist()
queries = pq.read_table(f"{args.data}/queries.parquet", columns=["query_id", "text"]).to_pylist()
qrels = pq.read_table(f"{args.data}/qrels.parquet").to_pylist()
doc_idx = {d["doc_id"]: i for i, d in enumerate(docs)}
doc_text = [f"{d['title']} {d['text']}" if d["title"] else d["text"] for d in docs]
query_text = {q["query_id"]: q["text"] for q in queries}
pairs = sorted((r["query_id"], r["doc_id"]) for r in qrels if r["split"] == "train" and r["relevance"] > 0)

tok = AutoTokenizer.from_pretrained(args.tokenizer)
base_vocab = 32128  # T5's embedding rows; atomic docid tokens follow them (as in grdr)
vocab = base_vocab + len(docs) if args.task == "dsi" else base_vocab
cfg = T5Config(vocab_size=vocab, d_model=args.d_model, d_kv=args.d_model // args.heads, d_ff=args.d_ff,
               num_layers=args.layers, num_decoder_layers=args.layers, num_heads=args.heads,
               dropout_rate=0.1, feed_forward_proj="relu", tie_word_embeddings=True,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
model = (T5ForConditionalGeneration(cfg) if args.task == "dsi" else T5EncoderModel(cfg)).to(dev).train()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, fused=dev.type == "cuda")
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, args.steps)))
forward = torch.compile(model) if args.compile else model

d, ff, L = args.d_model, args.d_ff, args.layers


def encoder_flops(n):
    """Forward FLOPs of the encoder over one sequence of n real tokens."""
    return 2 * L * (n * (4 * d * d + 2 * d * ff) + 2 * n * n * d)


def decoder_flops(n_out, n_in):
    """Forward FLOPs of the decoder (self- and cross-attention, FFN) and the output layer."""
    per_layer = n_out * (6 * d * d + 2 * d * ff) + 2 * n_in * d * d + 2 * n_out * n_out * d + 2 * n_out * n_in * d
    return 2 * L * per_layer + 2 * n_out * d * vocab


def batch_of(step):
    """The step's examples: DSI half queries → docid, half documents → docid; DR pairs."""
    b = args.batch
    if args.task == "dr":
        return [pairs[(step * b + i) % len(pairs)] for i in range(b)]
    half = b // 2
    retrieval = [(query_text[q], doc_idx[p]) for q, p in (pairs[(step * half + i) % len(pairs)] for i in range(half))]
    indexing = [(doc_text[(step * (b - half) + i) % len(docs)], (step * (b - half) + i) % len(docs))
                for i in range(b - half)]
    return retrieval + indexing


def tokens(texts, max_len):
    t = tok(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return t["input_ids"].to(dev), t["attention_mask"].to(dev)


def dsi_step(batch):
    # Queries cut at query_len, documents at doc_len, one padded batch (as HF would).
    texts = [t for t, _ in batch]
    half = len(batch) // 2
    q_ids, q_mask = tokens(texts[:half], args.query_len)
    d_ids, d_mask = tokens(texts[half:], args.doc_len)
    width = max(q_ids.shape[1], d_ids.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))
    ids, mask = torch.cat([pad(q_ids), pad(d_ids)]), torch.cat([pad(q_mask), pad(d_mask)])
    labels = torch.tensor([[base_vocab + di, 1] for _, di in batch], device=dev)
    loss = forward(input_ids=ids, attention_mask=mask, labels=labels).loss
    lens = mask.sum(1).tolist()
    flops = sum(3 * (encoder_flops(n) + decoder_flops(2, n)) for n in lens)
    return loss, int(mask.sum()) + 2 * len(batch), flops


def dr_step(batch):
    def embed(texts, max_len):
        ids, mask = tokens(texts, max_len)
        h = forward(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e.float(), dim=-1), mask.sum(1).tolist()

    q, ql = embed([query_text[a] for a, _ in batch], args.query_len)
    p, pl = embed([doc_text[doc_idx[b]] for _, b in batch], args.doc_len)
    loss = torch.nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(len(batch), device=dev))
    flops = sum(3 * encoder_flops(n) for n in ql + pl)
    return loss, sum(ql) + sum(pl), flops


times, samples, toks, flops = [], [], [], []
for step in range(args.steps):
    batch = batch_of(step)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        loss, n_tokens, f = dsi_step(batch) if args.task == "dsi" else dr_step(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    float(loss.detach())  # one host sync per step, as grdr's loss read-back
    times.append(time.perf_counter() - t0)
    samples.append(len(batch))
    toks.append(n_tokens)
    flops.append(f)
rates = [(s / t, n / t) for s, n, t in list(zip(samples, toks, times))[1:]]
print(json.dumps({
    "task": args.task,
    "samples_per_s": statistics.median(r[0] for r in rates),
    "tokens_per_s": statistics.median(r[1] for r in rates),
    "flops_per_sample": sum(flops) / sum(samples),
    "parameters": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__, "device": args.device, "precision": args.precision, "compile": args.compile,
    "batch": args.batch, "steps": args.steps, "threads": args.threads,
}))
