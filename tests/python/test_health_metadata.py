"""Health, metadata, config, readiness, repository index, statistics, unimplemented RPCs."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

import sy_helpers as h

EXAMPLE_MODELS = {
    # name: (versions, platform, max_batch_size, inputs, outputs)
    "simple": (["1"], 8, [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])],
               [("OUTPUT0", "INT32", [-1, 16]), ("OUTPUT1", "INT32", [-1, 16])]),
    "simple_string": (["1"], 8, [("INPUT0", "BYTES", [-1, 16]), ("INPUT1", "BYTES", [-1, 16])],
                      [("OUTPUT0", "BYTES", [-1, 16]), ("OUTPUT1", "BYTES", [-1, 16])]),
    "simple_identity": (["1"], 8, [("INPUT0", "BYTES", [-1, -1])], [("OUTPUT0", "BYTES", [-1, -1])]),
    "fraud_mlp": (["1", "2"], 256, [("features", "FP32", [-1, 30])],
                  [("probabilities", "FP32", [-1, 2]), ("label", "INT64", [-1, 1])]),
}


# ------------------------------------------------------------------------------- health


def test_server_live_and_ready(client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService"])
def test_grpc_health_check_serving(server, service):
    assert h.health_check(server.url, service) == 1  # SERVING


# ----------------------------------------------------------------------------- metadata


def test_server_metadata(client):
    md = client.get_server_metadata()
    assert md.name == "triton"
    assert md.version != ""
    assert "statistics" in md.extensions
    assert len(set(md.extensions)) == len(md.extensions), f"duplicate extensions {md.extensions}"


def test_server_metadata_custom_id(make_repo, switchyard):
    srv = switchyard(make_repo(["simple"]), "--id", "switchyard-under-test")
    c = srv.client()
    assert c.get_server_metadata().name == "switchyard-under-test"
    c.close()


@pytest.mark.parametrize("model", sorted(EXAMPLE_MODELS))
def test_model_metadata(client, model):
    versions, _mbs, inputs, outputs = EXAMPLE_MODELS[model]
    md = client.get_model_metadata(model)
    assert md.name == model
    assert list(md.versions) == versions
    assert all(isinstance(v, str) for v in md.versions)
    assert md.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == outputs


def test_model_metadata_explicit_version(client):
    md = client.get_model_metadata("fraud_mlp", "1")
    assert md.name == "fraud_mlp"
    assert list(md.versions) == ["1", "2"]
    assert [t.name for t in md.inputs] == ["features"]


def test_model_metadata_as_json(client):
    md = client.get_model_metadata("simple", as_json=True)
    assert md["inputs"][0]["shape"] in (["-1", "16"], [-1, 16])  # int64 in proto3 JSON


@pytest.mark.parametrize("model", sorted(EXAMPLE_MODELS))
def test_model_config(client, model):
    _versions, mbs, inputs, outputs = EXAMPLE_MODELS[model]
    cfg = client.get_model_config(model).config
    assert cfg.name == model
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == mbs
    type_names = {"INT32": "TYPE_INT32", "BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}
    from tritonclient.grpc import model_config_pb2 as mc

    got_in = [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input]
    got_out = [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output]
    assert got_in == [(n, type_names[t], s[1:]) for n, t, s in inputs]
    assert got_out == [(n, type_names[t], s[1:]) for n, t, s in outputs]
    # KIND_CPU instance groups as written in config.pbtxt
    assert len(cfg.instance_group) >= 1
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in cfg.instance_group)
    assert all(g.count >= 1 for g in cfg.instance_group)
    policy = cfg.version_policy.WhichOneof("policy_choice")
    if model == "fraud_mlp":
        assert policy == "all"
    else:
        # normalised default: latest { num_versions: 1 }
        assert policy == "latest" and cfg.version_policy.latest.num_versions == 1


def test_model_config_for_each_version(client):
    for v in ("1", "2"):
        assert client.get_model_config("fraud_mlp", v).config.name == "fraud_mlp"


# ---------------------------------------------------------------------------- readiness


@pytest.mark.parametrize(
    "model,version,expected",
    [
        ("simple", "", True),
        ("simple", "1", True),
        ("simple_string", "", True),
        ("simple_identity", "1", True),
        ("fraud_mlp", "", True),
        ("fraud_mlp", "1", True),
        ("fraud_mlp", "2", True),
        ("simple", "2", False),
        ("fraud_mlp", "3", False),
        ("no_such_model", "", False),
        ("no_such_model", "1", False),
    ],
)
def test_model_ready(client, stub, model, version, expected):
    assert client.is_model_ready(model, version) is expected
    # Raw RPC: an unknown model/version is ready=false with an OK status, not an error.
    resp = stub.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=h.RPC_TIMEOUT_S)
    assert resp.ready is expected


def test_model_ready_non_numeric_version_is_invalid_argument(stub):
    h.assert_rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="simple", version="abc"),
                       grpc.StatusCode.INVALID_ARGUMENT, "abc")


# ----------------------------------------------------------------------- repository index


def test_repository_index(client):
    idx = client.get_model_repository_index()
    rows = sorted((m.name, m.version, m.state, m.reason) for m in idx.models)
    assert rows == [
        ("fraud_mlp", "1", "READY", ""),
        ("fraud_mlp", "2", "READY", ""),
        ("simple", "1", "READY", ""),
        ("simple_identity", "1", "READY", ""),
        ("simple_string", "1", "READY", ""),
    ]


def test_repository_index_named_repository_unsupported(stub):
    # Triton: UNSUPPORTED "'repository_name' specification is not supported"
    err = h.rpc_error(stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (err.code(), err.details())


def test_repository_index_ready_only(stub):
    resp = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=h.RPC_TIMEOUT_S)
    assert sorted((m.name, m.version) for m in resp.models) == [
        ("fraud_mlp", "1"), ("fraud_mlp", "2"), ("simple", "1"), ("simple_identity", "1"), ("simple_string", "1"),
    ]
    assert all(m.state == "READY" for m in resp.models)


# ------------------------------------------------------------------------ unknown models


@pytest.mark.parametrize("call", ["metadata", "config", "statistics"])
def test_unknown_model_is_not_found(client, stub, call):
    with pytest.raises(InferenceServerException) as ei:
        {
            "metadata": client.get_model_metadata,
            "config": client.get_model_config,
            "statistics": client.get_inference_statistics,
        }[call]("no_such_model")
    assert "Request for unknown model" in ei.value.message()
    assert ei.value.status() == "StatusCode.NOT_FOUND"
    rpc = {
        "metadata": (stub.ModelMetadata, pb.ModelMetadataRequest(name="no_such_model")),
        "config": (stub.ModelConfig, pb.ModelConfigRequest(name="no_such_model")),
        "statistics": (stub.ModelStatistics, pb.ModelStatisticsRequest(name="no_such_model")),
    }[call]
    h.assert_rpc_error(rpc[0], rpc[1], grpc.StatusCode.NOT_FOUND, "Request for unknown model", "no_such_model")


def test_unknown_version_is_not_found(stub):
    h.assert_rpc_error(
        stub.ModelMetadata, pb.ModelMetadataRequest(name="fraud_mlp", version="9"), grpc.StatusCode.NOT_FOUND, "9"
    )
    h.assert_rpc_error(
        stub.ModelConfig, pb.ModelConfigRequest(name="simple", version="2"), grpc.StatusCode.NOT_FOUND, "2"
    )
    h.assert_rpc_error(
        stub.ModelStatistics, pb.ModelStatisticsRequest(name="simple", version="2"), grpc.StatusCode.NOT_FOUND, "2"
    )


# ----------------------------------------------------------------------------- statistics


def _stats(stub, model, version=""):
    resp = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model, version=version), timeout=h.RPC_TIMEOUT_S)
    return resp.model_stats


def test_statistics_count_requests_and_batches(stub):
    (before,) = _stats(stub, "simple")
    assert before.name == "simple" and before.version == "1"
    batch_sizes = [1, 3, 8]
    for i, b in enumerate(batch_sizes):
        h.infer(stub, h.infer_request("simple", h.simple_inputs(b, seed=i)))
    (after,) = _stats(stub, "simple")
    s0, s1 = before.inference_stats, after.inference_stats
    assert after.inference_count - before.inference_count == sum(batch_sizes)
    assert after.execution_count - before.execution_count == len(batch_sizes)  # default scheduler
    assert s1.success.count - s0.success.count == len(batch_sizes)
    assert s1.queue.count - s0.queue.count == len(batch_sizes)  # perf_analyzer relies on this
    assert s1.compute_infer.count - s0.compute_infer.count == len(batch_sizes)
    assert s1.success.ns > s0.success.ns
    assert after.last_inference > 0 and after.last_inference >= before.last_inference
    per_batch = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    per_batch0 = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    for b in batch_sizes:
        assert per_batch.get(b, 0) - per_batch0.get(b, 0) == 1, (b, per_batch, per_batch0)


def test_statistics_all_models_and_versions(stub):
    rows = _stats(stub, "")
    assert sorted((s.name, s.version) for s in rows) == [
        ("fraud_mlp", "1"), ("fraud_mlp", "2"), ("simple", "1"), ("simple_identity", "1"), ("simple_string", "1"),
    ]
    assert [s.version for s in _stats(stub, "fraud_mlp")] == ["1", "2"]
    assert [s.version for s in _stats(stub, "fraud_mlp", "2")] == ["2"]


def test_statistics_are_per_version(stub):
    (v1_before,) = _stats(stub, "fraud_mlp", "1")
    (v2_before,) = _stats(stub, "fraud_mlp", "2")
    h.infer(stub, h.infer_request("fraud_mlp", h.fraud_inputs(5), version="1"))
    (v1,) = _stats(stub, "fraud_mlp", "1")
    (v2,) = _stats(stub, "fraud_mlp", "2")
    assert v1.inference_count - v1_before.inference_count == 5
    assert v2.inference_count == v2_before.inference_count


# ------------------------------------------------------------------- unimplemented RPCs


UNIMPLEMENTED = {
    "SystemSharedMemoryStatus": lambda s, t: s.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=t),
    "SystemSharedMemoryRegister": lambda s, t: s.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="r", key="/k", offset=0, byte_size=64), timeout=t),
    "SystemSharedMemoryUnregister": lambda s, t: s.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=t),
    "CudaSharedMemoryStatus": lambda s, t: s.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=t),
    "CudaSharedMemoryUnregister": lambda s, t: s.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(), timeout=t),
    "TraceSetting": lambda s, t: s.TraceSetting(pb.TraceSettingRequest(), timeout=t),
    "LogSettings": lambda s, t: s.LogSettings(pb.LogSettingsRequest(), timeout=t),
}


@pytest.mark.parametrize("rpc", sorted(UNIMPLEMENTED))
def test_unimplemented_rpcs(stub, client, rpc):
    with pytest.raises(grpc.RpcError) as ei:
        UNIMPLEMENTED[rpc](stub, h.RPC_TIMEOUT_S)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED, (ei.value.code(), ei.value.details())
    # ...and the server keeps serving.
    assert client.is_server_live()
    out = h.decode_response(h.infer(stub, h.infer_request("simple", h.simple_inputs(1))))
    assert out["OUTPUT0"].shape == (1, 16)


def test_log_file_cannot_be_set_remotely(stub, tmp_path):
    """CVE-2024-0087: LogSettings must never let a client point the log at a file."""
    target = tmp_path / "pwned.log"
    req = pb.LogSettingsRequest()
    req.settings["log_file"].string_param = str(target)
    with pytest.raises(grpc.RpcError) as ei:
        stub.LogSettings(req, timeout=h.RPC_TIMEOUT_S)
    assert ei.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert not target.exists()


def test_load_unload_refused_without_model_control(client):
    """--model-control-mode=none (the session server): UNAVAILABLE, as Triton answers."""
    for call in (lambda: client.load_model("simple"), lambda: client.unload_model("simple")):
        with pytest.raises(InferenceServerException) as ei:
            call()
        assert ei.value.status() == "StatusCode.UNAVAILABLE", str(ei.value)
        assert "--model-control-mode=none" in ei.value.message()
    assert client.is_model_ready("simple")


def test_tritonclient_unimplemented_calls(client):
    for call in (
        lambda: client.get_system_shared_memory_status(),
        lambda: client.get_log_settings(),
        lambda: client.get_trace_settings(),
    ):
        with pytest.raises(InferenceServerException) as ei:
            call()
        assert ei.value.status() == "StatusCode.UNIMPLEMENTED", str(ei.value)
    assert client.is_model_ready("simple")
