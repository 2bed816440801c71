"""The HTTP endpoint through `curl`, the way users poke a server by hand: health, metadata,
JSON inference, a gzip-compressed request body, a compressed response, and errors."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import pytest

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is installed by scripts/deps.sh test")

SIMPLE_BODY = {
    "id": "curl-1",
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [list(range(16))]},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ],
}


def curl(server, path: str, *args: str) -> tuple[int, bytes]:
    """Runs curl against the server; returns (HTTP status, body)."""
    out = subprocess.run(
        [CURL, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args,
         f"http://{server.http_url}{path}"],
        capture_output=True, check=True, timeout=20,
    ).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def test_health_and_metadata(server):
    assert curl(server, "/v2/health/live") == (200, b"")
    assert curl(server, "/v2/health/ready") == (200, b"")
    code, body = curl(server, "/v2")
    assert code == 200 and json.loads(body)["name"] == "triton"
    code, body = curl(server, "/v2/models/simple/config")
    assert code == 200 and json.loads(body)["max_batch_size"] == 8


def test_json_inference(server):
    code, body = curl(server, "/v2/models/simple/infer", "-X", "POST",
                      "-H", "Content-Type: application/json", "-d", json.dumps(SIMPLE_BODY))
    assert code == 200, body
    r = json.loads(body)
    assert r["id"] == "curl-1" and r["model_name"] == "simple"
    out = {o["name"]: o["data"] for o in r["outputs"]}
    assert out["OUTPUT0"] == [i + 1 for i in range(16)]
    assert out["OUTPUT1"] == [i - 1 for i in range(16)]


def test_gzip_request_and_compressed_response(server, tmp_path):
    f = tmp_path / "body.json.gz"
    f.write_bytes(gzip.compress(json.dumps(SIMPLE_BODY).encode()))
    code, body = curl(server, "/v2/models/simple/infer", "-X", "POST", "--compressed",
                      "-H", "Content-Encoding: gzip", "--data-binary", f"@{f}")
    assert code == 200, body
    assert json.loads(body)["outputs"][0]["data"][:3] == [1, 2, 3]


def test_errors_are_json(server):
    code, body = curl(server, "/v2/models/nope/infer", "-X", "POST", "-d", "{}")
    assert code == 404 and "Request for unknown model" in json.loads(body)["error"]
    code, body = curl(server, "/v2/models/simple/infer")  # GET
    assert (code, json.loads(body)) == (405, {"error": "Method Not Allowed"})
    code, body = curl(server, "/v2/models/simple/infer", "-X", "POST", "-d", "{not json")
    assert code == 400 and "error" in json.loads(body)
