"""Model repository handling: failed loads, readiness, exit-on-error, version directories and
policies, auto-complete, instance groups. Every test builds its own repository in tmp."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

import sy_helpers as h

SIMPLE_ONNX = h.model_file("simple", 1)

# name -> (how to build it, substrings of which at least one must appear in the reason, lowercase)
BROKEN = {}


def broken(name, *reason_any):
    def deco(fn):
        BROKEN[name] = (fn, reason_any)
        return fn

    return deco


@broken("broken_config")
def _(repo):
    h.copy_model(repo, "simple", "broken_config",
                 config='name: "broken_config"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ]\n')


@broken("unknown_field_config")
def _(repo):
    h.copy_model(repo, "simple", "unknown_field_config",
                 config=h.simple_config("unknown_field_config", "no_such_field: 3"))


@broken("corrupt_onnx", "model.onnx", "onnx", "protobuf", "load")
def _(repo):
    d = h.copy_model(repo, "simple", "corrupt_onnx")
    (d / "1" / "model.onnx").write_bytes(b"this is not an ONNX model" * 10)


@broken("missing_onnx", "model.onnx", "not found", "no such file")
def _(repo):
    d = h.copy_model(repo, "simple", "missing_onnx")
    (d / "1" / "model.onnx").unlink()


@broken("no_versions", "version")
def _(repo):
    d = h.copy_model(repo, "simple", "no_versions")
    (d / "1" / "model.onnx").unlink()
    (d / "1").rmdir()


@broken("name_mismatch", "something_else", "name")
def _(repo):
    h.copy_model(repo, "simple", "name_mismatch", config=h.simple_config("something_else"))


@broken("gpu_instance", "gpu", "cuda")
def _(repo):
    cfg = h.simple_config("gpu_instance").replace("KIND_CPU", "KIND_GPU")
    assert "KIND_GPU" in cfg
    h.copy_model(repo, "simple", "gpu_instance", config=cfg)


@broken("dims_mismatch", "input0", "shape", "dims")
def _(repo):
    cfg = h.simple_config("dims_mismatch").replace("dims: [ 16 ]", "dims: [ 8 ]", 1)
    h.copy_model(repo, "simple", "dims_mismatch", config=cfg)


@broken("dtype_mismatch", "input1", "type")
def _(repo):
    cfg = h.simple_config("dtype_mismatch")
    i = cfg.index('name: "INPUT1"')
    cfg = cfg[:i] + cfg[i:].replace("TYPE_INT32", "TYPE_FP32", 1)
    h.copy_model(repo, "simple", "dtype_mismatch", config=cfg)


@broken("traversal_filename", "x.onnx", "..")
def _(repo):
    d = h.copy_model(repo, "simple", "traversal_filename",
                     config=h.simple_config("traversal_filename", 'default_model_filename: "../x.onnx"'))
    # the escaped path really exists: only the path check can stop it
    (d / "x.onnx").write_bytes(SIMPLE_ONNX.read_bytes())
    (d / "1" / "model.onnx").unlink()


@broken("absolute_filename", "model.onnx", "default_model_filename", "not found")
def _(repo):
    d = h.copy_model(repo, "simple", "absolute_filename",
                     config=h.simple_config("absolute_filename", f'default_model_filename: "{SIMPLE_ONNX}"'))
    (d / "1" / "model.onnx").unlink()


@broken("unsupported_platform", "platform", "tensorflow", "backend")
def _(repo):
    cfg = h.simple_config("unsupported_platform").replace("onnxruntime_onnx", "tensorflow_graphdef")
    h.copy_model(repo, "simple", "unsupported_platform", config=cfg)


@broken("negative_max_batch", "max_batch_size")
def _(repo):
    cfg = h.simple_config("negative_max_batch").replace("max_batch_size: 8", "max_batch_size: -1")
    h.copy_model(repo, "simple", "negative_max_batch", config=cfg)


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("broken_repo")
    h.copy_model(repo, "simple")
    h.copy_model(repo, "simple_identity")
    for build, _ in BROKEN.values():
        build(repo)
    # versions 1 and 3 load, 2 and 4 are corrupt; `all` policy
    d = h.copy_model(repo, "fraud_mlp", "half_broken", versions={"1": 1, "2": 2, "3": 2, "4": 1})
    for v in ("2", "4"):
        (d / v / "model.onnx").write_bytes(b"\x08garbage")
    return repo


@pytest.fixture(scope="module")
def broken_server(module_switchyard, broken_repo):
    return module_switchyard(broken_repo, "--exit-on-error=false")


def index_rows(stub, ready=False):
    resp = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=h.RPC_TIMEOUT_S)
    return [(m.name, m.version, m.state, m.reason) for m in resp.models]


# -------------------------------------------------------------------- failed models


def test_good_models_serve_next_to_broken_ones(broken_server):
    c = broken_server.client()
    assert c.is_server_live()
    assert c.is_model_ready("simple") and c.is_model_ready("simple_identity")
    inputs = h.simple_inputs(3)
    out = h.decode_response(h.infer(broken_server.stub(), h.infer_request("simple", inputs)))
    ref = h.reference("simple", inputs)
    assert np.array_equal(out["OUTPUT0"], ref["OUTPUT0"]) and np.array_equal(out["OUTPUT1"], ref["OUTPUT1"])
    c.close()


@pytest.mark.parametrize("model", sorted(BROKEN))
def test_broken_model_is_unavailable_with_reason(broken_server, model):
    stub = broken_server.stub()
    rows = [r for r in index_rows(stub) if r[0] == model]
    assert rows, f"{model} missing from the repository index"
    for name, version, state, reason in rows:
        assert state == "UNAVAILABLE", rows
        assert reason.strip(), f"empty reason for {model}: {rows}"
    reason_any = BROKEN[model][1]
    if reason_any:
        text = " ".join(r[3] for r in rows).lower()
        assert any(s in text for s in reason_any), f"reason for {model} mentions none of {reason_any}: {rows}"
    assert model not in [r[0] for r in index_rows(stub, ready=True)]
    c = broken_server.client()
    assert c.is_model_ready(model) is False
    assert c.is_model_ready(model, "1") is False
    c.close()
    # inference on it fails cleanly
    err = h.rpc_error(stub.ModelInfer, h.infer_request(model, h.simple_inputs(1)))
    assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), (err.code(), err.details())
    assert model in err.details()


def test_index_lists_good_versions_ready(broken_server):
    rows = index_rows(broken_server.stub())
    assert ("simple", "1", "READY", "") in rows
    assert ("simple_identity", "1", "READY", "") in rows
    assert sorted({r[0] for r in rows}) == sorted(set(BROKEN) | {"simple", "simple_identity", "half_broken"})


def test_partially_failed_model_serves_its_ready_versions(broken_server):
    stub, c = broken_server.stub(), broken_server.client()
    rows = sorted((r[1], r[2]) for r in index_rows(stub) if r[0] == "half_broken")
    assert rows == [("1", "READY"), ("2", "UNAVAILABLE"), ("3", "READY"), ("4", "UNAVAILABLE")]
    assert all(r[3] for r in index_rows(stub) if r[0] == "half_broken" and r[2] == "UNAVAILABLE")
    assert list(c.get_model_metadata("half_broken").versions) == ["1", "3"]
    assert c.is_model_ready("half_broken") is True
    assert [c.is_model_ready("half_broken", v) for v in "1234"] == [True, False, True, False]
    inputs = h.fraud_inputs(4, seed=8)
    # latest READY version is 3 (a copy of fraud_mlp v2), not the failed 4
    resp = h.infer(stub, h.infer_request("half_broken", inputs))
    assert resp.model_version == "3"
    assert np.array_equal(h.decode_response(resp)["probabilities"],
                          h.reference("fraud_mlp", inputs, 2)["probabilities"])
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("half_broken", inputs, version="4"),
                       grpc.StatusCode.UNAVAILABLE, "half_broken", "4")
    c.close()


def test_strict_readiness_default_is_not_ready(broken_server):
    c = broken_server.client()
    assert c.is_server_live() is True
    assert c.is_server_ready() is False
    c.close()


def test_grpc_health_check_follows_readiness(broken_server):
    assert broken_server.client().is_server_ready() is False
    assert h.health_check(broken_server.url) == 2  # NOT_SERVING


@pytest.mark.parametrize("model", ["corrupt_onnx", "broken_config"])
def test_no_ready_version_latest_is_not_found(broken_server, model):
    stub = broken_server.stub()
    h.assert_rpc_error(stub.ModelInfer, h.infer_request(model, h.simple_inputs(1)), grpc.StatusCode.NOT_FOUND,
                       "Request for unknown model", model)
    h.assert_rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=model), grpc.StatusCode.NOT_FOUND, model)


def test_failed_version_explicit_is_unavailable(broken_server):
    # Triton: "Request for unknown model: 'm' version 1 is not at ready state" (UNAVAILABLE)
    h.assert_rpc_error(broken_server.stub().ModelInfer, h.infer_request("corrupt_onnx", h.simple_inputs(1), version="1"),
                       grpc.StatusCode.UNAVAILABLE, "corrupt_onnx", "1")


@pytest.mark.parametrize("flag,expected", [("--strict-readiness=true", False), ("--strict-readiness=false", True)])
def test_strict_readiness_flag(make_repo, switchyard, flag, expected):
    repo = make_repo(["simple"])
    BROKEN["corrupt_onnx"][0](repo)
    srv = switchyard(repo, "--exit-on-error=false", flag)
    c = srv.client()
    assert c.is_server_live() is True
    assert c.is_server_ready() is expected
    assert c.is_model_ready("simple") is True
    assert c.is_model_ready("corrupt_onnx") is False
    c.close()
    if expected:  # ready, so the gRPC health check must say SERVING
        assert h.health_check(srv.url) == 1


def test_all_good_repo_is_ready_with_strict_readiness(make_repo, switchyard):
    srv = switchyard(make_repo(["simple", "fraud_mlp"]), "--strict-readiness=true")
    c = srv.client()
    assert c.is_server_ready() is True
    c.close()


@pytest.mark.parametrize("model", ["broken_config", "corrupt_onnx", "gpu_instance"])
@pytest.mark.parametrize("flags", [(), ("--exit-on-error=true",)], ids=["default", "explicit"])
def test_exit_on_error(make_repo, switchyard, model, flags):
    repo = make_repo(["simple"])
    BROKEN[model][0](repo)
    srv = switchyard(repo, *flags, wait=False)
    started = time.monotonic()
    rc = srv.wait_exit(timeout=30)
    assert rc != 0, f"exit code {rc}\n{srv.log()}"
    assert time.monotonic() - started < 30
    assert "failed to load all models" in srv.log()


def test_config_with_subset_of_model_inputs_fails_load(make_repo, switchyard):
    repo = make_repo([])
    cfg = h.simple_config("partial_inputs")
    start = cfg.index('  {\n    name: "INPUT1"')
    end = cfg.index("}", start) + 1
    cfg = cfg[:start].rstrip().rstrip(",") + "\n" + cfg[end:].lstrip().lstrip(",")
    assert 'name: "INPUT1"' not in cfg and 'name: "INPUT0"' in cfg
    h.copy_model(repo, "simple", "partial_inputs", config=cfg)
    srv = switchyard(repo, "--exit-on-error=false")
    c = srv.client()
    try:
        assert c.is_model_ready("partial_inputs") is False
        rows = [r for r in index_rows(srv.stub()) if r[0] == "partial_inputs"]
        assert rows and all(r[2] == "UNAVAILABLE" and r[3] for r in rows), rows
    finally:
        c.close()


# ---------------------------------------------------------------- version directories


def test_version_directories(make_repo, switchyard):
    repo = make_repo([])
    d = h.copy_model(
        repo, "fraud_mlp", "versions",
        versions={"1": 1, "01": 2, "abc": 2, "3": 1, "10": 2, "0": 2, "3x": 1},
    )
    (d / "5").write_bytes(b"a file, not a directory")
    srv = switchyard(repo)
    stub, c = srv.stub(), srv.client()
    assert sorted(r[1] for r in index_rows(stub) if r[0] == "versions") == ["1", "10", "3"]
    assert list(c.get_model_metadata("versions").versions) == ["1", "3", "10"]
    inputs = h.fraud_inputs(8, seed=4)
    # the right file behind every version, and 10 (not "3", not "01") is the latest
    for v, src in (("1", 1), ("3", 1), ("10", 2)):
        resp = h.infer(stub, h.infer_request("versions", inputs, version=v))
        assert resp.model_version == v
        assert np.array_equal(h.decode_response(resp)["probabilities"],
                              h.reference("fraud_mlp", inputs, src)["probabilities"])
    assert h.infer(stub, h.infer_request("versions", inputs)).model_version == "10"
    for v in ("2", "5"):  # not loaded ("0" is ignored as a directory; see test_version_zero_*)
        assert c.is_model_ready("versions", v) is False
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("versions", inputs, version="5"), grpc.StatusCode.NOT_FOUND)
    c.close()


POLICIES = {
    "pol_default": ("", ["3"]),
    "pol_latest2": ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
    "pol_latest1": ("version_policy: { latest { num_versions: 1 } }", ["3"]),
    "pol_latest9": ("version_policy: { latest: { num_versions: 9 } }", ["1", "2", "3"]),
    "pol_all": ("version_policy: { all { } }", ["1", "2", "3"]),
    "pol_specific": ("version_policy: { specific: { versions: [ 1, 3 ] } }", ["1", "3"]),
    "pol_specific_missing": ("version_policy: { specific { versions: [ 2, 7 ] } }", ["2"]),
}


@pytest.fixture(scope="module")
def policy_server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("policy_repo")
    for name, (policy, _) in POLICIES.items():
        h.copy_model(repo, "simple", name, config=h.simple_config(name, policy), versions={"1": 1, "2": 1, "3": 1})
    return module_switchyard(repo)


@pytest.mark.parametrize("model", sorted(POLICIES))
def test_version_policy(policy_server, model):
    expected = POLICIES[model][1]
    stub, c = policy_server.stub(), policy_server.client()
    assert c.is_server_ready() is True
    assert sorted(r[1] for r in index_rows(stub) if r[0] == model) == sorted(expected, key=int)
    assert all(r[2] == "READY" for r in index_rows(stub) if r[0] == model)
    assert list(c.get_model_metadata(model).versions) == expected
    for v in ("1", "2", "3"):
        assert c.is_model_ready(model, v) is (v in expected), v
        req = h.infer_request(model, h.simple_inputs(1), version=v)
        if v in expected:
            assert h.infer(stub, req).model_version == v
        else:
            h.assert_rpc_error(stub.ModelInfer, req, grpc.StatusCode.NOT_FOUND, model, v)
    assert h.infer(stub, h.infer_request(model, h.simple_inputs(1))).model_version == expected[-1]
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=h.RPC_TIMEOUT_S).model_stats
    assert [s.version for s in stats] == expected
    c.close()


def test_version_policy_in_config(policy_server):
    c = policy_server.client()
    cfg = c.get_model_config("pol_specific").config
    assert cfg.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(cfg.version_policy.specific.versions) == [1, 3]
    assert c.get_model_config("pol_latest2").config.version_policy.latest.num_versions == 2
    assert c.get_model_config("pol_all").config.version_policy.WhichOneof("policy_choice") == "all"
    d = c.get_model_config("pol_default").config.version_policy
    assert d.WhichOneof("policy_choice") == "latest" and d.latest.num_versions == 1
    c.close()


# ---------------------------------------------------------------------- auto-complete


@pytest.fixture(scope="module")
def auto_server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("auto_repo")
    for name, src, version in (("auto_simple", "simple", 1), ("auto_fraud", "fraud_mlp", 2),
                               ("auto_identity", "simple_identity", 1)):
        d = repo / name / "1"
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(h.model_file(src, version).read_bytes())
    # a config that gives only the platform and max_batch_size: inputs/outputs come from the file
    h.copy_model(repo, "simple", "auto_partial",
                 config='platform: "onnxruntime_onnx"\nmax_batch_size: 2\n')
    return module_switchyard(repo)


def _io(tensors):
    return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_auto_complete_simple(auto_server):
    c = auto_server.client()
    cfg = c.get_model_config("auto_simple").config
    assert cfg.name == "auto_simple"
    assert cfg.max_batch_size == 4
    assert cfg.platform == "onnxruntime_onnx" or cfg.backend == "onnxruntime"
    assert sorted(_io(cfg.input)) == [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    assert sorted(_io(cfg.output)) == [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]
    assert cfg.HasField("dynamic_batching"), "ORT auto-complete turns on dynamic batching when max_batch_size > 1"
    md = c.get_model_metadata("auto_simple")
    assert md.platform == "onnxruntime_onnx"
    assert sorted((t.name, t.datatype, list(t.shape)) for t in md.inputs) == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    c.close()


def test_auto_complete_serves(auto_server):
    stub = auto_server.stub()
    for b in (1, 4):
        inputs = h.simple_inputs(b, seed=b)
        out = h.decode_response(h.infer(stub, h.infer_request("auto_simple", inputs)))
        ref = h.reference("simple", inputs)
        assert np.array_equal(out["OUTPUT0"], ref["OUTPUT0"]) and np.array_equal(out["OUTPUT1"], ref["OUTPUT1"])
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("auto_simple", h.simple_inputs(5)),
                       grpc.StatusCode.INVALID_ARGUMENT, "batch-size must be <= 4")


def test_auto_complete_fraud_and_identity(auto_server):
    c, stub = auto_server.client(), auto_server.stub()
    cfg = c.get_model_config("auto_fraud").config
    assert cfg.max_batch_size == 4
    assert _io(cfg.input) == [("features", "TYPE_FP32", [30])]
    assert sorted(_io(cfg.output)) == [("label", "TYPE_INT64", [1]), ("probabilities", "TYPE_FP32", [2])]
    inputs = h.fraud_inputs(4, seed=2)
    out = h.decode_response(h.infer(stub, h.infer_request("auto_fraud", inputs)))
    ref = h.reference("fraud_mlp", inputs, 2)
    assert np.array_equal(out["probabilities"], ref["probabilities"]) and np.array_equal(out["label"], ref["label"])
    cfg = c.get_model_config("auto_identity").config
    assert _io(cfg.input) == [("INPUT0", "TYPE_STRING", [-1])]
    arr = h.bytes_array(["a", "bc", ""], (1, 3))
    out = h.decode_response(h.infer(stub, h.infer_request("auto_identity", {"INPUT0": arr})))
    assert np.array_equal(out["OUTPUT0"], arr)
    c.close()


def test_auto_complete_partial_config(auto_server):
    c = auto_server.client()
    cfg = c.get_model_config("auto_partial").config
    assert cfg.max_batch_size == 2  # given in the config: kept
    assert sorted(_io(cfg.input)) == [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    h.assert_rpc_error(auto_server.stub().ModelInfer, h.infer_request("auto_partial", h.simple_inputs(3)),
                       grpc.StatusCode.INVALID_ARGUMENT, "batch-size must be <= 2")
    c.close()


def test_disable_auto_complete_config(make_repo, switchyard):
    repo = make_repo(["simple"])
    d = repo / "no_config" / "1"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(SIMPLE_ONNX.read_bytes())
    srv = switchyard(repo, "--disable-auto-complete-config", "--exit-on-error=false")
    c = srv.client()
    assert c.is_model_ready("simple") is True
    assert c.is_model_ready("no_config") is False
    rows = [r for r in index_rows(srv.stub()) if r[0] == "no_config"]
    assert rows and all(r[2] == "UNAVAILABLE" and r[3] for r in rows), rows
    c.close()


# ------------------------------------------------------- no batching, reshape (full configs)


@pytest.fixture(scope="module")
def strict_config_server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("strict_repo")
    nobatch = (h.simple_config("nobatch").replace("max_batch_size: 8", "max_batch_size: 0")
               .replace("dims: [ 16 ]", "dims: [ -1, 16 ]"))
    h.copy_model(repo, "simple", "nobatch", config=nobatch)
    reshaped = """name: "reshaped"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4, 4 ] reshape: { shape: [ 16 ] } },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2, 8 ] reshape: { shape: [ 16 ] } },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""
    h.copy_model(repo, "simple", "reshaped", config=reshaped)
    return module_switchyard(repo, "--disable-auto-complete-config")


def test_non_batching_model(strict_config_server):
    c, stub = strict_config_server.client(), strict_config_server.stub()
    assert c.get_model_config("nobatch").config.max_batch_size == 0
    md = c.get_model_metadata("nobatch")
    assert [list(t.shape) for t in md.inputs] == [[-1, 16], [-1, 16]]  # no batch dim prepended
    (before,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="nobatch"), timeout=30).model_stats
    inputs = h.simple_inputs(3, seed=12)
    out = h.decode_response(h.infer(stub, h.infer_request("nobatch", inputs)))
    ref = h.reference("simple", inputs)
    assert np.array_equal(out["OUTPUT0"], ref["OUTPUT0"]) and np.array_equal(out["OUTPUT1"], ref["OUTPUT1"])
    (after,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="nobatch"), timeout=30).model_stats
    assert after.inference_count - before.inference_count == 1  # no batching: one inference per request
    # shape must match dims exactly (rank 2 here); 9 rows is fine (no max_batch_size bound)
    big = h.simple_inputs(9, seed=13)
    assert h.decode_response(h.infer(stub, h.infer_request("nobatch", big)))["OUTPUT0"].shape == (9, 16)
    bad = {k: v.reshape(-1) for k, v in h.simple_inputs(1).items()}
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("nobatch", bad), grpc.StatusCode.INVALID_ARGUMENT,
                       "INPUT0", "[-1,16]")
    c.close()


def test_reshape_inputs_and_outputs(strict_config_server):
    c, stub = strict_config_server.client(), strict_config_server.stub()
    md = c.get_model_metadata("reshaped")
    assert [(t.name, list(t.shape)) for t in md.inputs] == [("INPUT0", [-1, 4, 4]), ("INPUT1", [-1, 16])]
    assert [(t.name, list(t.shape)) for t in md.outputs] == [("OUTPUT0", [-1, 2, 8]), ("OUTPUT1", [-1, 16])]
    x = h.simple_inputs(3, seed=14)
    resp = h.infer(stub, h.infer_request("reshaped", {"INPUT0": x["INPUT0"].reshape(3, 4, 4), "INPUT1": x["INPUT1"]}))
    assert [list(o.shape) for o in resp.outputs] == [[3, 2, 8], [3, 16]]
    out = h.decode_response(resp)
    ref = h.reference("simple", x)
    assert np.array_equal(out["OUTPUT0"].reshape(3, 16), ref["OUTPUT0"])
    assert np.array_equal(out["OUTPUT1"], ref["OUTPUT1"])
    # the API shape is dims, not reshape
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("reshaped", x), grpc.StatusCode.INVALID_ARGUMENT,
                       "INPUT0", "[-1,4,4]")
    c.close()


# ------------------------------------------------------------------- model files, groups


def test_default_model_filename_inside_version_dir_works(make_repo, switchyard):
    repo = make_repo([])
    d = h.copy_model(repo, "simple", "renamed",
                     config=h.simple_config("renamed", 'default_model_filename: "my_model.onnx"'))
    (d / "1" / "model.onnx").rename(d / "1" / "my_model.onnx")
    srv = switchyard(repo)
    assert srv.client().get_model_config("renamed").config.default_model_filename == "my_model.onnx"
    out = h.decode_response(h.infer(srv.stub(), h.infer_request("renamed", h.simple_inputs(1))))
    assert out["OUTPUT0"].shape == (1, 16)


def test_model_directory_holding_model_onnx(make_repo, switchyard):
    """ORT backend: model.onnx may be a directory that contains model.onnx."""
    repo = make_repo([])
    d = h.copy_model(repo, "simple", "dir_model")
    (d / "1" / "model.onnx").rename(d / "1" / "tmp.onnx")
    (d / "1" / "model.onnx").mkdir()
    (d / "1" / "tmp.onnx").rename(d / "1" / "model.onnx" / "model.onnx")
    srv = switchyard(repo)
    assert srv.client().is_model_ready("dir_model")


def test_instance_group_count_two(make_repo, switchyard):
    repo = make_repo([])
    h.copy_model(repo, "simple", "two_instances",
                 config=h.simple_config("two_instances").replace("count: 1", "count: 2"))
    srv = switchyard(repo)
    cfg = srv.client().get_model_config("two_instances").config
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]

    stub = srv.stub()

    def one(i):
        inputs = h.simple_inputs(1 + i % 8, seed=i)
        out = h.decode_response(h.infer(stub, h.infer_request("two_instances", inputs)))
        with np.errstate(over="ignore"):
            return (np.array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
                    and np.array_equal(out["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"]))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200), timeout=100))
    assert all(results)
    (st,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="two_instances"), timeout=30).model_stats
    assert st.inference_stats.success.count == 200


def test_repository_with_no_models(tmp_path, switchyard):
    repo = tmp_path / "empty_repo"
    repo.mkdir()
    srv = switchyard(repo)
    c = srv.client()
    assert c.is_server_live() is True
    assert list(c.get_model_repository_index().models) == []
    c.close()


def test_missing_repository_fails_to_start(tmp_path, switchyard):
    srv = switchyard(tmp_path / "does_not_exist", wait=False)
    assert srv.wait_exit(timeout=30) != 0


# ----------------------------------------------------------------------------- signals


def test_sigint_exits_zero(make_repo, switchyard):
    import signal

    srv = switchyard(make_repo(["simple"]))
    assert srv.client().is_server_live()
    assert srv.stop(signal.SIGINT) == 0


def test_sigterm_with_requests_in_flight(make_repo, switchyard):
    """Requests running when SIGTERM arrives finish; the process exits 0."""
    import signal

    srv = switchyard(make_repo(["simple_identity"]))
    stub = srv.stub()
    big = b"w" * (8 * 1024 * 1024)
    req = h.infer_request("simple_identity", {"INPUT0": h.bytes_array([big] * 4, (1, 4))})
    futures = [stub.ModelInfer.future(req, timeout=60) for _ in range(4)]
    srv.proc.send_signal(signal.SIGTERM)
    ok = 0
    for f in futures:
        try:
            out = h.decode_response(f.result(timeout=60))
            assert out["OUTPUT0"][0, 0] == big
            ok += 1
        except grpc.RpcError as e:
            # refused as the server stops: must be a clean status, not a crash
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (e.code(), e.details())
    assert srv.wait_exit(30) == 0, srv.log()


def test_documented_flags_accepted_together(make_repo, switchyard):
    srv = switchyard(
        make_repo(["simple"]),
        "--id", "flags", "--exit-on-error=true", "--strict-readiness=true", "--log-verbose", "1",
        "--exit-timeout-secs", "5", "--max-pending-requests", "16", "--ort-intra-op-threads", "1",
        "--disable-auto-complete-config",
    )
    c = srv.client()
    assert c.get_server_metadata().name == "flags"
    assert c.is_server_ready() is True
    inputs = h.simple_inputs(2)
    out = h.decode_response(h.infer(srv.stub(), h.infer_request("simple", inputs)))
    assert np.array_equal(out["OUTPUT1"], h.reference("simple", inputs)["OUTPUT1"])
    c.close()


@pytest.mark.parametrize("flag", ["--exit-on-error=maybe", "--strict-readiness=sometimes", "--log-verbose=loud"])
def test_bad_flag_values_refused(make_repo, switchyard, flag):
    srv = switchyard(make_repo(["simple"]), flag, wait=False)
    assert srv.wait_exit(timeout=30) != 0
