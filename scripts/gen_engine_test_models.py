#!/usr/bin/env python3
"""Generate the engine's test models (``tests/data/``) with the ``onnx`` package.

    .venv/bin/python scripts/gen_engine_test_models.py

``tiny_encoder.onnx`` is one BERT-style encoder layer, small enough to commit (~20 KB), built
node by node the way PyTorch exports BERT: word + position + token-type embeddings (Gather,
Shape, Slice, ConstantOfShape), LayerNormalization, multi-head self-attention (MatMul, Reshape,
Transpose, Div, Softmax, an additive mask from Equal/Where/Expand), a GELU written with Erf, a
residual FFN, mean pooling (ReduceMean) and L2 normalisation (Pow, Sqrt, Div), plus a Tanh head.
Inputs ``input_ids`` and ``attention_mask`` are int64 ``[batch, sequence]``; outputs are
``last_hidden_state`` ``[batch, sequence, 16]`` and ``embedding`` ``[batch, 16]``.
The weights come from a fixed seed, so the file is reproducible.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H, HEADS, FFN, VOCAB, MAX_POS = 16, 2, 32, 50, 64
DH = H // HEADS
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny_encoder.onnx"


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(20261129)
    inits = []
    nodes = []

    def w(name, *shape, scale=0.2):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def n(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs))
        return output

    # Embeddings.
    w("word_emb", VOCAB, H)
    w("pos_emb", MAX_POS, H)
    w("type_emb", 2, H)
    c("pos_ids", np.arange(MAX_POS).reshape(1, MAX_POS), np.int64)
    c("zero_i", [0], np.int64)
    c("one_axis", [1], np.int64)
    words = n("Gather", ["word_emb", "input_ids"], "words")
    seq_len = n("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos = n("Slice", ["pos_ids", "zero_i", seq_len, "one_axis"], "pos")
    pos_e = n("Gather", ["pos_emb", pos], "pos_e")
    ids_shape = n("Shape", ["input_ids"], "ids_shape")
    nodes.append(
        helper.make_node(
            "ConstantOfShape", [ids_shape], ["token_types"], name="ConstantOfShape_token_types",
            value=helper.make_tensor("v", TensorProto.INT64, [1], [0]),
        )
    )
    type_e = n("Gather", ["type_emb", "token_types"], "type_e")
    emb = n("Add", [n("Add", [words, pos_e], "wp"), type_e], "emb")
    w("ln0_g", H, scale=0.1)
    w("ln0_b", H, scale=0.1)
    c("ones_h", np.ones(H))
    g0 = n("Add", ["ln0_g", "ones_h"], "ln0_gamma")  # folded: constant + constant
    x0 = n("LayerNormalization", [emb, g0, "ln0_b"], "x0", axis=-1, epsilon=1e-12)

    # Attention mask: 0 where attended, -10000 where masked, expanded to the scores' shape.
    c("axes_12", [1, 2], np.int64)
    c("neg_big", -10000.0)
    c("zero_f", 0.0)
    is_pad = n("Equal", ["attention_mask", "zero_i"], "is_pad")
    is_pad4 = n("Unsqueeze", [is_pad, "axes_12"], "is_pad4")
    mask = n("Where", [is_pad4, "neg_big", "zero_f"], "mask")

    # Self-attention.
    c("split_heads", [0, 0, HEADS, DH], np.int64)
    c("merge_heads", [0, 0, H], np.int64)
    c("sqrt_dh", np.sqrt(DH))

    def proj(x, name, n_in, n_out):
        mm = n("MatMul", [x, w(f"{name}_w", n_in, n_out)], f"{name}_mm")
        return n("Add", [mm, w(f"{name}_b", n_out, scale=0.05)], name)

    q = n("Transpose", [n("Reshape", [proj(x0, "q", H, H), "split_heads"], "q4")], "qt", perm=[0, 2, 1, 3])
    k = n("Transpose", [n("Reshape", [proj(x0, "k", H, H), "split_heads"], "k4")], "kt", perm=[0, 2, 3, 1])
    v = n("Transpose", [n("Reshape", [proj(x0, "v", H, H), "split_heads"], "v4")], "vt", perm=[0, 2, 1, 3])
    scores = n("Div", [n("MatMul", [q, k], "qk"), "sqrt_dh"], "scores")
    scores_shape = n("Shape", [scores], "scores_shape")
    mask_full = n("Expand", [mask, scores_shape], "mask_full")
    probs = n("Softmax", [n("Add", [scores, mask_full], "masked")], "probs", axis=-1)
    ctx = n("Transpose", [n("MatMul", [probs, v], "ctx4")], "ctx_t", perm=[0, 2, 1, 3])
    ctx = n("Reshape", [ctx, "merge_heads"], "ctx")
    attn = proj(ctx, "o", H, H)
    w("ln1_g", H, scale=0.1)
    w("ln1_b", H, scale=0.1)
    g1 = n("Add", ["ln1_g", "ones_h"], "ln1_gamma")
    x1 = n("LayerNormalization", [n("Add", [attn, x0], "res1"), g1, "ln1_b"], "x1", axis=-1, epsilon=1e-12)

    # Feed-forward with GELU written out as x * 0.5 * (1 + erf(x / sqrt(2))).
    c("sqrt2", np.sqrt(2.0))
    c("one_f", 1.0)
    c("half", 0.5)
    h = proj(x1, "ffn1", H, FFN)
    erf = n("Erf", [n("Div", [h, "sqrt2"], "h_scaled")], "h_erf")
    gelu = n("Mul", [n("Mul", [h, n("Add", [erf, "one_f"], "h_erf1")], "h_mul"), "half"], "gelu")
    ffn = proj(gelu, "ffn2", FFN, H)
    w("ln2_g", H, scale=0.1)
    w("ln2_b", H, scale=0.1)
    g2 = n("Add", ["ln2_g", "ones_h"], "ln2_gamma")
    x2 = n("LayerNormalization", [n("Add", [ffn, x1], "res2"), g2, "ln2_b"], "last_hidden_state", axis=-1, epsilon=1e-12)

    # Mean pooling, a tanh head, L2 normalisation.
    pooled = n("ReduceMean", [x2], "pooled", axes=[1], keepdims=0)
    head = n("Tanh", [proj(pooled, "head", H, H)], "head_t")
    c("two", 2.0)
    sq = n("ReduceMean", [n("Pow", [head, "two"], "sq")], "msq", axes=[-1], keepdims=1)
    n("Div", [head, n("Sqrt", [sq], "rms")], "embedding")

    seq = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, seq),
        ],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, seq + [H]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", H]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="switchyard")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    model = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT)
    # Check it runs in ONNX Runtime.
    import onnxruntime as ort

    s = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 5, 9, 0], [3, 3, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int64)
    hid, emb = s.run(None, {"input_ids": ids, "attention_mask": mask})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); outputs {hid.shape} {emb.shape}")


if __name__ == "__main__":
    main()
