"""`--grpc-restricted-protocol`: restricted categories need the metadata key/value on every RPC
of the category; other categories and the standard health service stay open."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

import sy_helpers as h

KEY, SECRET = "admin-key", "s3cret"


@pytest.fixture(scope="module")
def restricted(module_switchyard, tmp_path_factory):
    secret_file = tmp_path_factory.mktemp("secret") / "inference.secret"
    secret_file.write_text("infer-token\n")
    return module_switchyard(
        h.MODEL_REPOSITORY,
        f"--grpc-restricted-protocol=model-repository,statistics:{KEY}={SECRET}",
        f"--grpc-restricted-protocol=model-config:cfg-key=@{secret_file}",
        "--model-control-mode=explicit",
        "--load-model=*",
    )


def test_restricted_categories_need_the_exact_header(restricted):
    c = restricted.client()
    for call in (
        lambda hd: c.get_inference_statistics("simple", headers=hd),
        lambda hd: c.get_inference_statistics("", headers=hd),
        lambda hd: c.get_model_repository_index(headers=hd),
        lambda hd: c.unload_model("simple_identity", headers=hd),
        lambda hd: c.load_model("simple_identity", headers=hd),
    ):
        for headers in (None, {KEY: "s3cre"}, {KEY: SECRET + " "}, {"other": SECRET}):
            with pytest.raises(InferenceServerException) as e:
                call(headers)
            assert "StatusCode.PERMISSION_DENIED" in str(e.value.status()), e.value
            assert f"expecting header '{KEY}'" in e.value.message()
        call({KEY: SECRET})  # the right header passes


def test_secret_from_file_and_open_categories(restricted):
    c = restricted.client()
    with pytest.raises(InferenceServerException) as e:
        c.get_model_config("simple")
    assert "cfg-key" in e.value.message()
    assert c.get_model_config("simple", headers={"cfg-key": "infer-token"}).config.name == "simple"
    # Unrestricted categories: health, metadata, inference.
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("simple")
    assert c.get_model_metadata("simple").name == "simple"
    r = c.infer("simple", h.arange_simple_inputs())
    assert (r.as_numpy("OUTPUT0") == 2 * np.arange(16).reshape(1, 16)).all()


def test_statistics_alias_via_raw_stub(restricted):
    stub = restricted.stub()
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="simple", version="1"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = stub.ModelStatistics(
        service_pb2.ModelStatisticsRequest(name="simple", version="1"), metadata=[(KEY, SECRET)]
    )
    assert ok.model_stats[0].name == "simple"
