#!/usr/bin/env python3
"""Generate ``tests/data/tiny_bert_torch.onnx``: a BERT of MiniLM's architecture, shrunk
(hidden 32, 2 layers, 4 heads, vocabulary 100) and randomly initialised from a fixed seed,
exported by PyTorch exactly as benches/minilm/export.py exports all-MiniLM-L6-v2 (the same
SentenceEmbedder wrapper, eager attention, opset 17, dynamo=False, constant folding, dynamic
batch and sequence axes). It carries the real export's operator patterns (embeddings, the
extended attention mask, attention, GELU, LayerNormalization, masked mean pooling) in a file
small enough to commit, so CI tests the engine on what torch emits for BERT.

    bash benches/minilm/export.sh          # once: creates .venv-minilm (torch, transformers)
    .venv-minilm/bin/python scripts/gen_tiny_bert.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches" / "minilm"))
from export import SentenceEmbedder  # noqa: E402  (the wrapper the real export uses)

OUT = ROOT / "tests" / "data" / "tiny_bert_torch.onnx"


def main() -> None:
    torch.manual_seed(20261206)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
        attn_implementation="eager",
    )
    model = SentenceEmbedder(transformers.BertModel(cfg, add_pooling_layer=False)).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    types = torch.zeros(2, 8, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask, types), str(OUT),
            input_names=names, output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "embedding": {0: "batch"}},
            opset_version=17, do_constant_folding=True, dynamo=False,
        )
    m = onnx.load(str(OUT))
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(m.graph.node)} nodes): {ops}")


if __name__ == "__main__":
    main()
