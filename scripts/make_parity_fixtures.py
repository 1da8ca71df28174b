#!/usr/bin/env python3
"""Writes the HF-parity fixtures that tests/model_*.rs check.

For three random-init tiny models (T5 v1.0, T5 v1.1, BERT) it writes, under
tests/fixtures/parity/<name>/: the HF directory (config.json, model.safetensors) and io.safetensors
holding the inputs and transformers' outputs (encoder states, decoder logits, cross-attention
weights, greedy generations; BERT token states and pooler output).

For all-MiniLM-L6-v2 (the `minilm` artefact) it writes minilm/embeddings.safetensors: the
sentence-transformers embeddings of 32 SciFact queries and 32 documents (16 first + 16 longest,
so truncation at 256 word pieces is exercised), and minilm/ids.json naming them. The texts are
not copied: the test reads them from the dataset.

Deterministic (torch.manual_seed). Run with the reference Python:
    ~/.cache/grdr/pyref/bin/python scripts/make_parity_fixtures.py [--scifact DIR] [--minilm DIR]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity"

T5_COMMON = dict(
    vocab_size=96,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    # Few buckets and a short max distance so 24-token inputs hit the log-spaced buckets and
    # the clamp at max_distance, not only the exact ones.
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

T5_CONFIGS = {
    # v1.0: ReLU FFN, lm_head tied to `shared`, decoder states scaled by d_model^-0.5.
    "t5_v10": dict(T5_COMMON, feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=3),
    # v1.1 / flan: gated-GELU FFN, untied lm_head, no scaling.
    "t5_v11": dict(T5_COMMON, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}

BERT_CONFIG = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)


def save_hf(model, out_dir):
    """Writes config.json and model.safetensors as transformers saves them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    # Keep the directory small and free of generation_config etc. that the test does not need.
    for extra in ("generation_config.json",):
        p = out_dir / extra
        if p.exists():
            p.unlink()


def spread_weights(model, std):
    """HF's T5 init makes random tiny models decode one token everywhere; wider weights give
    input-dependent generations, a sharper parity check. Norm weights stay near 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)


def padded_inputs(gen, batch, length, vocab, lengths):
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids * mask  # pad id 0 after each row's length
    return ids, mask


def t5_fixture(name, cfg_dict):
    torch.manual_seed(1234)
    config = T5Config(**cfg_dict)
    model = T5ForConditionalGeneration(config).eval()
    if not cfg_dict["tie_word_embeddings"]:
        # transformers 5 ties lm_head to `shared` in a fresh model whatever the config says
        # and unties only when a checkpoint holds a different lm_head, as real v1.1/flan
        # checkpoints do: give it its own weight, like them.
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    spread_weights(model, 0.15)
    out_dir = OUT / name
    save_hf(model, out_dir)

    gen = torch.Generator().manual_seed(99)
    input_ids, attention_mask = padded_inputs(gen, 3, 24, config.vocab_size, [24, 17, 9])
    labels = torch.randint(2, config.vocab_size, (3, 7), generator=gen)
    labels[2, 5:] = -100  # ragged targets
    decoder_input_ids = model._shift_right(labels)

    eager = T5ForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            output_attentions=True,
            # transformers 5.23 sizes its decoder cache by num_layers, which breaks on the
            # asymmetric v1.0 config (3 decoder blocks); the cache changes nothing here.
            use_cache=False,
        )
        generated = eager.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=8,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
            use_cache=False,
        )
        loss = eager(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "decoder_input_ids": decoder_input_ids,
        "encoder_hidden": out.encoder_last_hidden_state,
        "logits": out.logits,
        "loss": loss.reshape(1),
        "generated": generated,
    }
    for i, a in enumerate(out.cross_attentions):
        tensors[f"cross_attention.{i}"] = a
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "io.safetensors"))
    print(f"{name}: logits {tuple(out.logits.shape)}, generated {generated.tolist()}")


def bert_fixture():
    torch.manual_seed(4321)
    config = BertConfig(**BERT_CONFIG)
    model = BertModel(config).eval()
    spread_weights(model, 0.15)
    out_dir = OUT / "bert"
    save_hf(model, out_dir)
    gen = torch.Generator().manual_seed(7)
    input_ids, attention_mask = padded_inputs(gen, 3, 20, config.vocab_size, [20, 13, 5])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    save_file(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "last_hidden_state": out.last_hidden_state.contiguous(),
            "pooler_output": out.pooler_output.contiguous(),
        },
        str(out_dir / "io.safetensors"),
    )
    print(f"bert: hidden {tuple(out.last_hidden_state.shape)}")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def minilm_fixture(scifact, minilm):
    from sentence_transformers import SentenceTransformer

    queries = read_jsonl(Path(scifact) / "queries.jsonl")[:32]
    corpus = read_jsonl(Path(scifact) / "corpus.jsonl")
    longest = sorted(corpus, key=lambda d: -len(d["title"]) - len(d["text"]))[:16]
    docs = corpus[:16] + longest
    doc_texts = [(d["title"] + " " + d["text"]).strip() for d in docs]
    model = SentenceTransformer(str(minilm), device="cpu")
    model.max_seq_length = 256
    q = model.encode([x["text"] for x in queries], batch_size=16, convert_to_tensor=True, normalize_embeddings=False)
    d = model.encode(doc_texts, batch_size=16, convert_to_tensor=True, normalize_embeddings=False)
    out_dir = OUT / "minilm"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"queries": q.float().contiguous(), "docs": d.float().contiguous()}, str(out_dir / "embeddings.safetensors"))
    ids = {
        "query_ids": [x["_id"] for x in queries],
        "doc_ids": [x["_id"] for x in docs],
        "max_seq_length": 256,
        "doc_text": "title + ' ' + text, stripped",
    }
    (out_dir / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")
    print(f"minilm: {len(queries)} queries, {len(docs)} docs; norms {q.norm(dim=-1).min().item():.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scifact", default=str(ROOT.parent / "shared" / "datasets" / "scifact"))
    ap.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 directory (default: the `minilm` artefact)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, cfg in T5_CONFIGS.items():
        t5_fixture(name, cfg)
    bert_fixture()
    minilm = args.minilm
    if minilm is None:
        cache = Path(os.environ.get("GRDR_CACHE") or Path.home() / ".cache" / "grdr")
        minilm = json.loads((cache / "assets.json").read_text())["minilm"]
    minilm_fixture(args.scifact, minilm)


if __name__ == "__main__":
    sys.exit(main())
