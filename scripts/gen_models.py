#!/usr/bin/env python3
"""Generate Switchyard's example Triton model repository (``model_repository/``).

Run through ``bash scripts/gen_models.sh``, which sets up the pinned private
virtualenv ``.venv-gen`` first.  Running it directly also works when the
pinned packages are importable:

    python scripts/gen_models.py [--repo DIR] [--no-verify]

Models written (every one is rebuilt from scratch, byte-for-byte
reproducibly on a given machine and package set):

* ``simple``          INT32 add/sub, Triton's classic ``simple`` example.
* ``simple_string``   the same arithmetic on decimal-integer strings (BYTES).
* ``simple_identity`` BYTES identity on a ``[batch, n]`` string tensor.
* ``fraud_mlp``       a StandardScaler+MLPClassifier fraud classifier, two
                      versions that disagree on a few percent of inputs.

Importing this module has no side effects.  Tests can regenerate fraud_mlp
inputs from the same distribution the models were trained on with::

    from gen_models import fraud_dataset          # scripts/ on sys.path
    X, y = fraud_dataset(1000, seed=0)            # X: float32 [1000, 30]
                                                  # y: int64   [1000] (0/1)

``fraud_dataset`` only samples from the held-out half of the population, so
its rows were never used to train either version.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import shutil
import sys
import time
import warnings
from pathlib import Path

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

OPSET = 17          # default ONNX domain opset (onnxruntime 1.32 handles >= 21)
ML_OPSET = 3        # ai.onnx.ml opset used by skl2onnx's converters
IR_VERSION = 8      # the IR version that goes with opset 17

SIMPLE_DIM = 16

FRAUD_N_FEATURES = 30
FRAUD_MAX_BATCH = 256
# The synthetic "population": a fixed make_classification draw.  Rows
# [0, _TRAIN_POOL) are the training pool, the rest is the held-out pool that
# fraud_dataset() samples from.
_DIST_SEED = 20240601
_POPULATION = 100_000
_TRAIN_POOL = 60_000

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = REPO_ROOT / "model_repository"


# --------------------------------------------------------------------------
# Synthetic fraud data
# --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _fraud_population():
    """The whole synthetic population (float32 X, int64 y); cached, read-only."""
    import numpy as np
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=_POPULATION,
        n_features=FRAUD_N_FEATURES,
        n_informative=10,
        n_redundant=6,
        n_repeated=0,
        n_classes=2,
        n_clusters_per_class=3,
        weights=[0.975],        # ~2.5% fraud, plus a little label noise
        flip_y=0.005,
        class_sep=0.6,          # hard enough that the two versions differ
        shift=None,             # random per-feature offsets ...
        scale=None,             # ... and scales in [1, 100]: raw features are
                                # badly scaled, so the StandardScaler matters
        shuffle=True,
        random_state=_DIST_SEED,
    )
    X = X.astype(np.float32)
    y = y.astype(np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _fraud_train_pool():
    X, y = _fraud_population()
    return X[:_TRAIN_POOL], y[:_TRAIN_POOL]


def fraud_dataset(n: int, seed: int = 0):
    """Deterministic held-out fraud_mlp inputs: ``(X, y)``.

    ``X`` is float32 ``[n, 30]`` (raw, unscaled features: exactly what the
    model's ``features`` input takes), ``y`` is int64 ``[n]`` with the true
    0/1 label (~2.7% ones).  Rows are drawn from the 40,000-row held-out pool
    that neither model version was trained on: without replacement when
    ``n <= 40000``, with replacement above that.  The same ``(n, seed)``
    always gives the same arrays.  The pool itself is built once per process
    (~0.2 s) and cached.
    """
    import numpy as np

    if n < 0:
        raise ValueError("n must be >= 0")
    X, y = _fraud_population()
    Xh, yh = X[_TRAIN_POOL:], y[_TRAIN_POOL:]
    pool = len(yh)
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=n, replace=n > pool)
    return np.ascontiguousarray(Xh[idx]), np.ascontiguousarray(yh[idx])


# Two versions of fraud_mlp.  v1 is the "baseline"; v2 is a "retrain" on a
# different (disjoint) window of the training pool with the fraud rows
# oversampled, so it flags more transactions (higher recall, lower precision).
FRAUD_VERSIONS = {
    1: dict(hidden=(64, 32), seed=1, rows=(0, 20_000), pos_oversample=1),
    2: dict(hidden=(32, 16), seed=2, rows=(20_000, 60_000), pos_oversample=6),
}
# Held-out set the script reports disagreement on.
FRAUD_EVAL_N = 20_000
FRAUD_EVAL_SEED = 12345


def train_fraud_model(version: int):
    """Fit the sklearn Pipeline for one fraud_mlp version (deterministic)."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    spec = FRAUD_VERSIONS[version]
    Xtr, ytr = _fraud_train_pool()
    lo, hi = spec["rows"]
    idx = np.arange(lo, hi)
    if spec["pos_oversample"] > 1:
        pos = idx[ytr[idx] == 1]
        idx = np.sort(np.concatenate([idx] + [pos] * (spec["pos_oversample"] - 1)))
    model = Pipeline([
        ("scaler", StandardScaler()),
        ("mlp", MLPClassifier(
            hidden_layer_sizes=spec["hidden"],
            random_state=spec["seed"],
            max_iter=60,
            alpha=1e-4,
            batch_size=256,
            learning_rate_init=1e-3,
        )),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr[idx], ytr[idx])
    return model


# --------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------

def _finish_model(graph, producer: str, opsets: dict | None = None):
    from onnx import checker, helper, shape_inference

    opsets = opsets or {"": OPSET}
    model = helper.make_model(
        graph,
        producer_name=producer,
        producer_version="1",
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
    )
    model.ir_version = IR_VERSION
    checker.check_model(model, full_check=True)
    shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def _write_model(model, path: Path) -> str:
    data = model.SerializeToString(deterministic=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build_simple():
    from onnx import TensorProto, helper

    shape = ["batch", SIMPLE_DIM]
    t = TensorProto.INT32
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        "simple",
        [helper.make_tensor_value_info("INPUT0", t, shape),
         helper.make_tensor_value_info("INPUT1", t, shape)],
        [helper.make_tensor_value_info("OUTPUT0", t, shape),
         helper.make_tensor_value_info("OUTPUT1", t, shape)],
    )
    return _finish_model(graph, "switchyard-gen_models")


def build_simple_string():
    from onnx import TensorProto, helper

    shape = ["batch", SIMPLE_DIM]
    s, i = TensorProto.STRING, TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["in0_i32"], to=i, name="parse0"),
        helper.make_node("Cast", ["INPUT1"], ["in1_i32"], to=i, name="parse1"),
        helper.make_node("Add", ["in0_i32", "in1_i32"], ["sum_i32"], name="add"),
        helper.make_node("Sub", ["in0_i32", "in1_i32"], ["diff_i32"], name="sub"),
        helper.make_node("Cast", ["sum_i32"], ["OUTPUT0"], to=s, name="format0"),
        helper.make_node("Cast", ["diff_i32"], ["OUTPUT1"], to=s, name="format1"),
    ]
    graph = helper.make_graph(
        nodes,
        "simple_string",
        [helper.make_tensor_value_info("INPUT0", s, shape),
         helper.make_tensor_value_info("INPUT1", s, shape)],
        [helper.make_tensor_value_info("OUTPUT0", s, shape),
         helper.make_tensor_value_info("OUTPUT1", s, shape)],
    )
    return _finish_model(graph, "switchyard-gen_models")


def build_simple_identity():
    from onnx import TensorProto, helper

    shape = ["batch", "n"]
    s = TensorProto.STRING
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", s, shape)],
        [helper.make_tensor_value_info("OUTPUT0", s, shape)],
    )
    return _finish_model(graph, "switchyard-gen_models")


def build_fraud_onnx(pipeline, version: int):
    """Convert the Pipeline with skl2onnx and normalise its I/O.

    skl2onnx gives ``label`` int64 [N] and ``probabilities`` float [N, 2]
    (zipmap off).  We unsqueeze the label to [N, 1], name the input
    ``features`` and give every graph I/O the symbolic batch dim ``batch``.
    """
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        pipeline,
        initial_types=[("features", FloatTensorType([None, FRAUD_N_FEATURES]))],
        options={"zipmap": False},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        naming=f"fraud_v{version}_",
    )
    g = onx.graph
    outs = {o.name: o for o in g.output}
    if set(outs) != {"label", "probabilities"}:
        raise RuntimeError(f"unexpected skl2onnx outputs: {sorted(outs)}")

    # Re-route the 1-D label through Unsqueeze(axes=[1]).
    for node in g.node:
        node.output[:] = ["label_1d" if o == "label" else o for o in node.output]
        node.input[:] = ["label_1d" if x == "label" else x for x in node.input]
    g.initializer.append(
        helper.make_tensor("label_unsqueeze_axes", TensorProto.INT64, [1], [1]))
    g.node.append(helper.make_node(
        "Unsqueeze", ["label_1d", "label_unsqueeze_axes"], ["label"],
        name="label_unsqueeze"))

    nodes = list(g.node)
    inits = list(g.initializer)
    graph = helper.make_graph(
        nodes,
        "fraud_mlp",
        [helper.make_tensor_value_info(
            "features", TensorProto.FLOAT, ["batch", FRAUD_N_FEATURES])],
        [helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1])],
        initializer=inits,
        doc_string=(f"fraud_mlp v{version}: StandardScaler + MLPClassifier"
                    f"{FRAUD_VERSIONS[version]['hidden']}, synthetic data"),
    )
    opsets = {op.domain: op.version for op in onx.opset_import}
    opsets[""] = OPSET
    return _finish_model(graph, "switchyard-gen_models+skl2onnx", opsets)


# --------------------------------------------------------------------------
# config.pbtxt
# --------------------------------------------------------------------------

def _io_block(kind: str, tensors) -> str:
    entries = []
    for name, dtype, dims in tensors:
        d = ", ".join(str(x) for x in dims)
        entries.append(
            "  {\n"
            f"    name: \"{name}\"\n"
            f"    data_type: {dtype}\n"
            f"    dims: [ {d} ]\n"
            "  }")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def make_config(name, max_batch_size, inputs, outputs, extra="") -> str:
    return (
        f"name: \"{name}\"\n"
        "platform: \"onnxruntime_onnx\"\n"
        f"max_batch_size: {max_batch_size}\n"
        + extra
        + _io_block("input", inputs)
        + _io_block("output", outputs)
        + "instance_group [\n"
          "  {\n"
          "    count: 1\n"
          "    kind: KIND_CPU\n"
          "  }\n"
          "]\n"
    )


# --------------------------------------------------------------------------
# Verification with onnxruntime
# --------------------------------------------------------------------------

def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _check_io(sess, inputs, outputs):
    got_in = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    got_out = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    if got_in != inputs or got_out != outputs:
        raise AssertionError(f"I/O mismatch:\n  {got_in}\n  {got_out}")


def verify_simple(path: Path):
    import numpy as np

    sess = _session(path)
    spec = ["batch", SIMPLE_DIM]
    _check_io(sess,
              [("INPUT0", "tensor(int32)", spec), ("INPUT1", "tensor(int32)", spec)],
              [("OUTPUT0", "tensor(int32)", spec), ("OUTPUT1", "tensor(int32)", spec)])
    for batch in (1, 3, 8):
        a = np.arange(batch * SIMPLE_DIM, dtype=np.int32).reshape(batch, SIMPLE_DIM)
        b = np.full_like(a, 1) - 2 * a
        o0, o1 = sess.run(None, {"INPUT0": a, "INPUT1": b})
        assert o0.dtype == np.int32 and o0.shape == a.shape
        np.testing.assert_array_equal(o0, a + b)
        np.testing.assert_array_equal(o1, a - b)
    return "add/sub ok for batch 1,3,8"


def verify_simple_string(path: Path):
    import numpy as np

    sess = _session(path)
    spec = ["batch", SIMPLE_DIM]
    _check_io(sess,
              [("INPUT0", "tensor(string)", spec), ("INPUT1", "tensor(string)", spec)],
              [("OUTPUT0", "tensor(string)", spec), ("OUTPUT1", "tensor(string)", spec)])
    a = np.array([[3, -5, 0, 100, -2147483648 + 1, 2147483647 - 1, 7, -7,
                   42, 1, 12345, -99, 0, 8, 16, -1]], dtype=np.int64)
    b = np.array([[4, 2, 0, -100, -1, 1, -7, 7,
                   0, -1, 54321, -1, 1, 8, 4, -1]], dtype=np.int64)
    a = np.concatenate([a, np.arange(SIMPLE_DIM)[None, :]], axis=0)
    b = np.concatenate([b, np.full((1, SIMPLE_DIM), 1)], axis=0)
    sa = a.astype(str).astype(object)
    sb = b.astype(str).astype(object)
    o0, o1 = sess.run(None, {"INPUT0": sa, "INPUT1": sb})
    assert o0.shape == a.shape and o1.shape == a.shape
    exp0 = (a + b).astype(str).astype(object)
    exp1 = (a - b).astype(str).astype(object)
    assert (o0 == exp0).all(), (o0, exp0)
    assert (o1 == exp1).all(), (o1, exp1)
    assert o0[0, 0] == "7" and o1[0, 0] == "-1"    # "3" + "4", "3" - "4"
    assert o0[0, 1] == "-3" and o1[0, 1] == "-7"   # "-5" + "2", "-5" - "2"
    return 'e.g. "3"+"4"="7", "-5"-"2"="-7", int32 extremes ok'


def verify_simple_identity(path: Path):
    import numpy as np

    sess = _session(path)
    spec = ["batch", "n"]
    _check_io(sess, [("INPUT0", "tensor(string)", spec)],
              [("OUTPUT0", "tensor(string)", spec)])
    cases = [
        np.array([["hello"]], dtype=object),
        np.array([["a", "", "ünïcödé ✓", "x" * 1000]] * 3, dtype=object),
        np.array([[str(i * j) for j in range(7)] for i in range(8)], dtype=object),
    ]
    for x in cases:
        (y,) = sess.run(None, {"INPUT0": x})
        assert y.shape == x.shape and (y == x).all()
    return "identity ok for shapes [1,1], [3,4], [8,7]"


def verify_fraud(paths: dict, pipelines: dict):
    import numpy as np

    X, y = fraud_dataset(FRAUD_EVAL_N, FRAUD_EVAL_SEED)
    decisions = {}
    lines = []
    for v, path in sorted(paths.items()):
        sess = _session(path)
        _check_io(sess,
                  [("features", "tensor(float)", ["batch", FRAUD_N_FEATURES])],
                  [("probabilities", "tensor(float)", ["batch", 2]),
                   ("label", "tensor(int64)", ["batch", 1])])
        probs, label = sess.run(None, {"features": X})
        assert probs.dtype == np.float32 and probs.shape == (len(X), 2)
        assert label.dtype == np.int64 and label.shape == (len(X), 1)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        ref = pipelines[v].predict_proba(X)
        np.testing.assert_allclose(probs, ref, atol=1e-4)
        np.testing.assert_array_equal(label[:, 0], probs.argmax(axis=1))
        # a small batch, as the server would send it
        p1, l1 = sess.run(None, {"features": X[:1]})
        np.testing.assert_allclose(p1, probs[:1], atol=1e-6)
        dec = probs[:, 1] > 0.5
        decisions[v] = dec
        tp = int((dec & (y == 1)).sum())
        lines.append(
            f"v{v}: predicted-positive {dec.mean():.2%}, accuracy "
            f"{(dec == y).mean():.2%}, recall {tp / max(1, (y == 1).sum()):.2%}, "
            f"precision {tp / max(1, dec.sum()):.2%}, "
            f"label==argmax ok, max|onnx-sklearn| "
            f"{np.abs(probs - ref).max():.1e}")
    dis = float((decisions[1] != decisions[2]).mean())
    lines.insert(0, f"held-out set: fraud_dataset({FRAUD_EVAL_N}, seed="
                    f"{FRAUD_EVAL_SEED}), true positive rate {y.mean():.2%}")
    lines.append(f"v1/v2 disagreement on probabilities[:,1] > 0.5: {dis:.2%}")
    if not 0.02 <= dis <= 0.06:
        raise AssertionError(f"fraud_mlp v1/v2 disagreement {dis:.2%} not in 2-6%")
    return lines, dis


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

README = """\
# Switchyard example model repository

Generated by `scripts/gen_models.py`; do not edit by hand. Regenerate with

    bash scripts/gen_models.sh

which creates the private virtualenv `.venv-gen` (pinned onnx, numpy,
scikit-learn, skl2onnx and onnxruntime), rewrites every model below, checks
each one with onnxruntime, and prints their sha256 sums. Re-running it gives
byte-identical files on the same machine and package versions (training
runs single-threaded with fixed seeds; the fraud_mlp weights could differ in
the last bits on a CPU whose BLAS kernels differ, the other three models are
identical everywhere).

All models are ONNX (opset 17, IR version 8, `platform: "onnxruntime_onnx"`),
run on CPU, and have a symbolic batch dimension `batch` as the first axis.
Dims below are as in `config.pbtxt`, i.e. without the batch dimension.

| model | max_batch_size | inputs | outputs | computes |
| --- | --- | --- | --- | --- |
| `simple` | 8 | `INPUT0`, `INPUT1`: INT32 `[16]` | `OUTPUT0`, `OUTPUT1`: INT32 `[16]` | `OUTPUT0 = INPUT0 + INPUT1`, `OUTPUT1 = INPUT0 - INPUT1` (Triton's classic `simple` example) |
| `simple_string` | 8 | `INPUT0`, `INPUT1`: STRING (BYTES) `[16]` | `OUTPUT0`, `OUTPUT1`: STRING (BYTES) `[16]` | the same on decimal integer strings: each element is parsed to int32 (ONNX `Cast`), added/subtracted, and formatted back, e.g. `"3"`,`"4"` gives `"7"`, `"-1"`; `"-5"`,`"2"` gives `"-3"`, `"-7"` |
| `simple_identity` | 8 | `INPUT0`: STRING (BYTES) `[-1]` | `OUTPUT0`: STRING (BYTES) `[-1]` | `OUTPUT0 = INPUT0` (ONNX `Identity` on a `[batch, n]` string tensor) |
| `fraud_mlp` | 256 | `features`: FP32 `[30]` | `probabilities`: FP32 `[2]`, `label`: INT64 `[1]` | fraud classifier: `probabilities[:, 1]` is P(fraud), `label` is the argmax (0 or 1). Versions 1 and 2, both loaded (`version_policy: { all { } }`) |

## fraud_mlp

A scikit-learn `Pipeline(StandardScaler, MLPClassifier)` converted with
skl2onnx (`zipmap=False`; the label is unsqueezed to `[batch, 1]`), trained
on a synthetic, imbalanced fraud-like tabular data set made with
`sklearn.datasets.make_classification` (100,000 rows, 30 features of very
different scales, ~2.7% positives, fixed seed). Rows 0-59,999 are the
training pool, rows 60,000-99,999 are held out.

* version 1: hidden layers (64, 32), trained on training rows 0-19,999.
* version 2: hidden layers (32, 16), trained on training rows 20,000-59,999
  with the fraud rows oversampled 6x: it flags more transactions (higher
  recall, lower precision).

On the held-out rows the two versions' decisions `probabilities[:, 1] > 0.5`
disagree on a few percent of inputs (%DISAGREE% on
`fraud_dataset(%EVAL_N%, seed=%EVAL_SEED%)`, true positive rate %POSRATE%);
the generator fails if this falls outside 2-6%.

Test inputs: `scripts/gen_models.py` has an importable, side-effect-free
`fraud_dataset(n, seed=0) -> (X, y)`: `X` float32 `[n, 30]` raw features
(feed them to `features` as they are; the scaler is inside the model), `y`
int64 `[n]` true labels, drawn deterministically from the held-out rows:

```python
import sys; sys.path.insert(0, "scripts")
from gen_models import fraud_dataset
X, y = fraud_dataset(64, seed=0)
```

It needs numpy and scikit-learn (e.g. `.venv-gen/bin/python`).
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO,
                    help="model repository directory (default: %(default)s)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the onnxruntime checks")
    args = ap.parse_args(argv)

    # One BLAS/OpenMP thread, so training does not depend on the core count.
    # (numpy/scipy must be loaded first: threadpoolctl only limits loaded
    # libraries.  gen_models.sh also exports *_NUM_THREADS=1.)
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)

    t0 = time.time()
    repo: Path = args.repo
    repo.mkdir(parents=True, exist_ok=True)
    written: dict[Path, str] = {}

    def fresh_dir(name: str) -> Path:
        d = repo / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    # simple -------------------------------------------------------------
    d = fresh_dir("simple")
    i32 = [("INPUT0", "TYPE_INT32", [SIMPLE_DIM]), ("INPUT1", "TYPE_INT32", [SIMPLE_DIM])]
    o32 = [("OUTPUT0", "TYPE_INT32", [SIMPLE_DIM]), ("OUTPUT1", "TYPE_INT32", [SIMPLE_DIM])]
    (d / "config.pbtxt").write_text(make_config("simple", 8, i32, o32))
    written[d / "1/model.onnx"] = _write_model(build_simple(), d / "1/model.onnx")

    # simple_string --------------------------------------------------------
    d = fresh_dir("simple_string")
    istr = [("INPUT0", "TYPE_STRING", [SIMPLE_DIM]), ("INPUT1", "TYPE_STRING", [SIMPLE_DIM])]
    ostr = [("OUTPUT0", "TYPE_STRING", [SIMPLE_DIM]), ("OUTPUT1", "TYPE_STRING", [SIMPLE_DIM])]
    (d / "config.pbtxt").write_text(make_config("simple_string", 8, istr, ostr))
    written[d / "1/model.onnx"] = _write_model(build_simple_string(), d / "1/model.onnx")

    # simple_identity ----------------------------------------------------------
    d = fresh_dir("simple_identity")
    (d / "config.pbtxt").write_text(make_config(
        "simple_identity", 8,
        [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]))
    written[d / "1/model.onnx"] = _write_model(build_simple_identity(), d / "1/model.onnx")

    # fraud_mlp ------------------------------------------------------------
    d = fresh_dir("fraud_mlp")
    (d / "config.pbtxt").write_text(make_config(
        "fraud_mlp", FRAUD_MAX_BATCH,
        [("features", "TYPE_FP32", [FRAUD_N_FEATURES])],
        [("probabilities", "TYPE_FP32", [2]), ("label", "TYPE_INT64", [1])],
        extra="version_policy: { all { } }\n"))
    pipelines, fraud_paths = {}, {}
    for v in sorted(FRAUD_VERSIONS):
        tv = time.time()
        pipelines[v] = train_fraud_model(v)
        p = d / str(v) / "model.onnx"
        written[p] = _write_model(build_fraud_onnx(pipelines[v], v), p)
        fraud_paths[v] = p
        print(f"trained fraud_mlp v{v} in {time.time() - tv:.1f}s")

    # verification ------------------------------------------------------------
    dis = pos = None
    if not args.no_verify:
        print("verifying with onnxruntime:")
        print("  simple:          " + verify_simple(repo / "simple/1/model.onnx"))
        print("  simple_string:   " + verify_simple_string(repo / "simple_string/1/model.onnx"))
        print("  simple_identity: " + verify_simple_identity(repo / "simple_identity/1/model.onnx"))
        lines, dis = verify_fraud(fraud_paths, pipelines)
        print("  fraud_mlp:")
        for line in lines:
            print("    " + line)
        _, y = fraud_dataset(FRAUD_EVAL_N, FRAUD_EVAL_SEED)
        pos = float(y.mean())

    readme = (README
              .replace("%DISAGREE%", f"{dis:.2%}" if dis is not None else "about 3%")
              .replace("%POSRATE%", f"{pos:.2%}" if pos is not None else "about 2.7%")
              .replace("%EVAL_N%", str(FRAUD_EVAL_N))
              .replace("%EVAL_SEED%", str(FRAUD_EVAL_SEED)))
    (repo / "README.md").write_text(readme)

    print("files:")
    for p in sorted(repo.rglob("*")):
        if p.is_file():
            rel = p.relative_to(repo)
            sha = written.get(p) or hashlib.sha256(p.read_bytes()).hexdigest()
            print(f"  {sha}  {p.stat().st_size:>7}  {rel}")
            if p.suffix == ".onnx" and p.stat().st_size >= 200_000:
                raise AssertionError(f"{rel} is {p.stat().st_size} bytes (>= 200 KB)")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
