"""ModelStreamInfer (bidirectional streaming) for ordinary, non-decoupled models: one final
response per request, in request order, errors in-band without ending the stream."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2_grpc

import sy_helpers as h
from test_metrics import parse, scrape, value
from test_perf_analyzer import check_report, run_perf, stats

WAIT_S = 60.0
MAX_IN_FLIGHT = 64  # server/api/grpc.rs STREAM_MAX_IN_FLIGHT


def simple_infer_inputs(arrays):
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        arr = arrays[name]
        i = grpcclient.InferInput(name, list(arr.shape), "INT32")
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def fraud_infer_inputs(batch, seed):
    arr = h.fraud_inputs(batch, seed)["features"]
    i = grpcclient.InferInput("features", list(arr.shape), "FP32")
    i.set_data_from_numpy(arr)
    return [i], arr


def response_id(result, error):
    return result.get_response().id if result is not None else f"error: {error}"


def final_flag(result) -> bool:
    params = result.get_response().parameters
    assert "triton_final_response" in params, dict(params)
    p = params["triton_final_response"]
    assert p.WhichOneof("parameter_choice") == "bool_param", p
    return p.bool_param


def run_stream(client, send, n):
    """Starts a stream, calls send(client) (which issues n requests), half-closes (stop_stream
    waits for every response) and returns the n (result, error) pairs in arrival order."""
    items: list = []  # the callback runs on the stream's one reader thread, in arrival order
    client.start_stream(callback=lambda result, error: items.append((result, error)))
    try:
        send(client)
    finally:
        client.stop_stream()
    assert len(items) == n, f"{len(items)} responses for {n} requests"
    return items


def check_simple(result, error, request_id, arrays):
    assert error is None, f"{request_id}: {error}"
    assert result.get_response().id == request_id
    assert result.get_response().model_name == "simple"
    a, b = arrays["INPUT0"], arrays["INPUT1"]
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b), request_id
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b), request_id
    assert final_flag(result) is True


# ------------------------------------------------------------------------------ one stream


def test_many_requests_in_order(client):
    n = 200
    data = [h.simple_inputs(1 + k % 8, seed=k, extremes=False) for k in range(n)]

    def send(c):
        for k, arrays in enumerate(data):
            c.async_stream_infer("simple", simple_infer_inputs(arrays), request_id=f"req-{k}")

    items = run_stream(client, send, n)
    assert [response_id(*it) for it in items] == [f"req-{k}" for k in range(n)]
    for k, (result, error) in enumerate(items):
        check_simple(result, error, f"req-{k}", data[k])


def test_errors_are_in_band_and_the_stream_goes_on(client):
    good = [h.simple_inputs(2, seed=k, extremes=False) for k in range(6)]
    wrong_shape = [grpcclient.InferInput("INPUT0", [1, 8], "INT32"), grpcclient.InferInput("INPUT1", [1, 8], "INT32")]
    for i in wrong_shape:
        i.set_data_from_numpy(np.zeros((1, 8), dtype=np.int32))

    def send(c):
        c.async_stream_infer("simple", simple_infer_inputs(good[0]), request_id="g0")
        c.async_stream_infer("simple", simple_infer_inputs(good[1]), request_id="g1")
        c.async_stream_infer("simple", wrong_shape, request_id="bad-shape")
        c.async_stream_infer("simple", simple_infer_inputs(good[2]), request_id="g2")
        c.async_stream_infer("no_such_model", simple_infer_inputs(good[3]), request_id="bad-model")
        c.async_stream_infer("simple", simple_infer_inputs(good[4]), request_id="g4")
        c.async_stream_infer("simple", simple_infer_inputs(good[5]), request_id="g5")

    items = run_stream(client, send, 7)
    expected = ["g0", "g1", "bad-shape", "g2", "bad-model", "g4", "g5"]
    for (result, error), rid in zip(items, expected):
        if rid.startswith("bad"):
            assert result is None and error is not None, (rid, result)
            continue
        check_simple(result, error, rid, good[int(rid[1:])])
    assert "INPUT0" in items[2][1].message() and "shape" in items[2][1].message(), items[2][1]
    assert "no_such_model" in items[4][1].message(), items[4][1]
    assert client.is_server_live()


def test_raw_stream_error_response_fields(stub):
    """What tritonclient hides: an error response still names its request, and every response
    is marked final (also with triton_enable_empty_final_response on a non-decoupled model)."""
    reqs = [
        h.infer_request("simple", h.simple_inputs(1), request_id="a"),
        h.infer_request("simple", {"INPUT0": np.zeros((1, 3), np.int32)}, request_id="b", version="1"),
        h.infer_request("nope", h.simple_inputs(1), request_id="c", version="7"),
        h.infer_request("simple", h.simple_inputs(2), request_id="d",
                        params={"triton_enable_empty_final_response": True}),
        h.infer_request("simple", h.simple_inputs(1), request_id="e", params={"triton_bogus": 1}),
    ]
    resps = list(stub.ModelStreamInfer(iter(reqs), timeout=h.RPC_TIMEOUT_S))
    assert [r.infer_response.id for r in resps] == ["a", "b", "c", "d", "e"]
    assert [bool(r.error_message) for r in resps] == [False, True, True, False, True]
    assert (resps[1].infer_response.model_name, resps[1].infer_response.model_version) == ("simple", "1")
    assert (resps[2].infer_response.model_name, resps[2].infer_response.model_version) == ("nope", "7")
    assert "triton_" in resps[4].error_message
    for r in resps:
        p = r.infer_response.parameters["triton_final_response"]
        assert p.WhichOneof("parameter_choice") == "bool_param" and p.bool_param, r
    for r in (resps[0], resps[3]):
        assert r.infer_response.model_name == "simple" and r.infer_response.model_version == "1"
    out = h.decode_response(resps[3].infer_response)
    exp = h.simple_inputs(2)
    assert np.array_equal(out["OUTPUT0"], exp["INPUT0"] + exp["INPUT1"])


def test_empty_stream(stub):
    assert list(stub.ModelStreamInfer(iter([]), timeout=h.RPC_TIMEOUT_S)) == []


# ------------------------------------------------------------ order and pipelining, exactly

SLOW = "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: %d }"


@pytest.fixture(scope="module")
def slow_server(module_switchyard, tmp_path_factory):
    """`simple`, `simple_identity`, and `slow`: simple with a batcher that holds a lone
    request for 0.6 s and runs a batch at once when 4 requests wait."""
    repo = tmp_path_factory.mktemp("stream-repo")
    h.copy_model(repo, "simple")
    h.copy_model(repo, "simple_identity")
    h.copy_model(repo, "simple", "slow", config=h.simple_config("slow", SLOW % 600_000))
    return module_switchyard(repo)


def test_responses_wait_for_earlier_slower_requests(slow_server):
    """A request to `slow` is answered after 0.6 s, the `simple` ones after it at once; their
    responses must still come after the slow one's."""
    data = [h.simple_inputs(1, seed=k, extremes=False) for k in range(4)]
    models = ["slow", "simple", "simple", "slow"]
    c = slow_server.client()
    try:
        def send(cl):
            for k, m in enumerate(models):
                cl.async_stream_infer(m, simple_infer_inputs(data[k]), request_id=str(k))

        items = run_stream(c, send, 4)
    finally:
        c.close()
    assert [response_id(*it) for it in items] == ["0", "1", "2", "3"]
    for k, (result, error) in enumerate(items):
        assert error is None, error
        assert result.get_response().model_name == models[k]
        a, b = data[k]["INPUT0"], data[k]["INPUT1"]
        assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_requests_of_one_stream_run_concurrently(slow_server):
    """8 requests on one stream to `slow` (preferred batch 4, 0.6 s delay): only if they are in
    flight together do they form two batches of 4 at once instead of eight 0.6 s waits."""
    c = slow_server.client()
    try:
        before = {b.batch_size: b.compute_infer.count
                  for b in c.get_inference_statistics("slow").model_stats[0].batch_stats}
        data = [h.simple_inputs(1, seed=k, extremes=False) for k in range(8)]
        t0 = time.monotonic()

        def send(cl):
            for k in range(8):
                cl.async_stream_infer("slow", simple_infer_inputs(data[k]), request_id=str(k))

        items = run_stream(c, send, 8)
        elapsed = time.monotonic() - t0
        after = {b.batch_size: b.compute_infer.count
                 for b in c.get_inference_statistics("slow").model_stats[0].batch_stats}
    finally:
        c.close()
    assert [response_id(*it) for it in items] == [str(k) for k in range(8)]
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert grown == {4: 2}, grown
    assert elapsed < 0.6 * 2, f"8 pipelined requests took {elapsed:.2f}s"


def test_unread_responses_stop_the_server_reading(slow_server):
    """A client that sends but never reads: once the HTTP/2 windows are full the server stops
    taking requests from the stream rather than run them all and buffer the answers."""
    payload = h.bytes_array([b"x" * 32768])  # 32 KiB in, 32 KiB out per request
    sent = [0]
    total = 2000

    def requests():
        for k in range(total):
            sent[0] = k + 1
            yield h.infer_request("simple_identity", {"INPUT0": payload}, request_id=str(k))

    stub = slow_server.stub()
    before = stats(stub, "simple_identity")["1"].inference_count
    # Its own connection: unread responses fill the connection's flow-control window too,
    # which would stall the statistics call below if it shared one.
    channel = grpc.insecure_channel(slow_server.url, options=[("grpc.use_local_subchannel_pool", 1)])
    call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=h.RPC_TIMEOUT_S)
    try:
        time.sleep(3.0)  # never read from `call`
        ran = stats(stub, "simple_identity")["1"].inference_count - before
    finally:
        call.cancel()
        channel.close()
    assert sent[0] < total, "the client could send everything: nothing pushed back"
    assert 0 < ran < total // 4, f"{ran} requests of an unread stream ran"
    # ...and the server is fine afterwards.
    out = h.decode_response(h.infer(stub, h.infer_request("simple_identity", {"INPUT0": payload})))
    assert out["OUTPUT0"].tolist() == payload.tolist()


def test_in_flight_requests_per_stream_are_bounded(switchyard, make_repo):
    """With the queue held (--delay-scheduler), a stream that sends 200 requests has exactly
    STREAM_MAX_IN_FLIGHT (64) of them queued; each stream has its own window. Cancelling the
    streams drops their queued requests."""
    srv = switchyard(make_repo(("simple",)), "--delay-scheduler", "1000")
    channel = grpc.insecure_channel(srv.url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    arrays = h.simple_inputs(1, extremes=False)

    def requests(s):
        for k in range(200):
            yield h.infer_request("simple", arrays, request_id=f"{s}-{k}")

    def pending():
        return value(parse(scrape(srv.metrics_url)), "nv_inference_pending_request_count",
                     model="simple", version="1")

    def wait_pending(n):
        deadline = time.monotonic() + 10
        while (p := pending()) != n:
            assert time.monotonic() < deadline, f"{p} requests pending, expected {n}"
            time.sleep(0.05)

    calls = [stub.ModelStreamInfer(requests(s), timeout=h.RPC_TIMEOUT_S) for s in range(2)]
    try:
        wait_pending(2 * MAX_IN_FLIGHT)
        time.sleep(1.0)
        assert pending() == 2 * MAX_IN_FLIGHT
    finally:
        for c in calls:
            c.cancel()
        channel.close()
    wait_pending(0)


# ------------------------------------------------------------------------- several streams


def test_concurrent_streams(server):
    """Four clients, one stream each, mixing models; each stream gets its own responses in its
    own order."""
    n, streams = 60, 4
    failures: list[str] = []

    def one(s):
        c = server.client()
        try:
            expected = []

            def send(cl):
                for k in range(n):
                    rid = f"s{s}-{k}"
                    if k % 3 == 2:
                        inputs, arr = fraud_infer_inputs(1 + k % 5, seed=k)
                        expected.append((rid, "fraud_mlp", arr))
                        cl.async_stream_infer("fraud_mlp", inputs, request_id=rid)
                    else:
                        arrays = h.simple_inputs(1 + k % 4, seed=1000 * s + k, extremes=False)
                        expected.append((rid, "simple", arrays))
                        cl.async_stream_infer("simple", simple_infer_inputs(arrays), request_id=rid)

            items = run_stream(c, send, n)
            for (result, error), (rid, model, arr) in zip(items, expected):
                assert error is None, f"{rid}: {error}"
                assert result.get_response().id == rid, (result.get_response().id, rid)
                assert final_flag(result)
                if model == "simple":
                    check_simple(result, error, rid, arr)
                else:
                    ref = h.reference("fraud_mlp", {"features": arr}, version=2)["probabilities"]
                    np.testing.assert_allclose(result.as_numpy("probabilities"), ref, rtol=1e-4, atol=1e-6)
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            failures.append(f"stream {s}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S)
    assert not any(t.is_alive() for t in threads), "a stream did not finish"
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- perf_analyzer


@pytest.mark.perf
def test_perf_analyzer_streaming(server, stub):
    before = stats(stub, "simple")["1"]
    out = run_perf(server, "-m", "simple", "--streaming", "--concurrency-range", "1:4:3")
    measured = check_report(out, concurrencies=(1, 4))
    after = stats(stub, "simple")["1"]
    assert after.inference_count - before.inference_count >= measured
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
