"""Dynamic batching through the real server: batch_stats and counts as Triton's L0_batcher checks
them, with `--delay-scheduler N` holding the queue until N requests wait (Triton's
TRITONSERVER_DELAY_SCHEDULER), plus queue limits, queue timeouts and cancellation."""

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def with_batching(make_repo, text):
    repo = make_repo(("simple",))
    cfg = repo / "simple" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\n" + text + "\n")
    return repo


def simple_inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    i0 = grpcclient.InferInput("INPUT0", [batch, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1 = grpcclient.InferInput("INPUT1", [batch, 16], "INT32")
    i1.set_data_from_numpy(b)
    return [i0, i1], a, b


def fire(url, batches, timeout=None):
    """Sends one request per entry of `batches` concurrently; returns (results, errors)."""
    results, errors = {}, {}

    def one(k, batch):
        c = grpcclient.InferenceServerClient(url)
        inputs, a, b = simple_inputs(batch, seed=k)
        try:
            r = c.infer("simple", inputs, client_timeout=timeout)
            assert np.array_equal(r.as_numpy("OUTPUT0"), a + b)
            assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)
            results[k] = r
        except InferenceServerException as e:
            errors[k] = e
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(k, b)) for k, b in enumerate(batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, errors


def stats(client):
    s = client.get_inference_statistics("simple").model_stats[0]
    return s, {b.batch_size: b.compute_infer.count for b in s.batch_stats}


def test_largest_preferred_size_then_delay(switchyard, make_repo):
    repo = with_batching(make_repo, "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 1500000 }")
    srv = switchyard(repo, "--delay-scheduler", "6")
    t0 = time.monotonic()
    results, errors = fire(srv.url, [1] * 6)
    assert not errors and len(results) == 6
    s, batches = stats(srv.client())
    # 4 (largest preferred size reached) at once, then 2 (also preferred) at once.
    assert batches == {4: 1, 2: 1}, batches
    assert (s.execution_count, s.inference_count) == (2, 6)
    assert s.inference_stats.success.count == 6
    assert s.inference_stats.queue.count == 6
    assert time.monotonic() - t0 < 1.4, "preferred sizes must not wait for the delay"


def test_partial_batch_waits_for_the_delay(switchyard, make_repo):
    repo = with_batching(make_repo, "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 700000 }")
    srv = switchyard(repo, "--delay-scheduler", "3")
    t0 = time.monotonic()
    results, errors = fire(srv.url, [1] * 3)
    elapsed = time.monotonic() - t0
    assert not errors and len(results) == 3
    s, batches = stats(srv.client())
    assert batches == {3: 1}, batches
    assert elapsed >= 0.6, f"3 < preferred 4: must wait the 0.7 s delay, took {elapsed:.3f}s"
    assert s.inference_stats.queue.ns >= 3 * 500_000_000


def test_batches_never_exceed_max_batch_size(switchyard, make_repo):
    repo = with_batching(make_repo, "dynamic_batching { }")  # preferred normalised to [8], delay 0
    srv = switchyard(repo, "--delay-scheduler", "5")
    results, errors = fire(srv.url, [3] * 5)
    assert not errors and len(results) == 5
    s, batches = stats(srv.client())
    assert max(batches) <= 8
    assert sum(k * v for k, v in batches.items()) == 15
    assert batches == {6: 2, 3: 1}, batches
    assert s.inference_count == 15 and s.execution_count == 3
    cfg = srv.client().get_model_config("simple").config
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]


def test_without_dynamic_batching_requests_run_alone(switchyard, make_repo):
    srv = switchyard(make_repo(("simple",)), "--delay-scheduler", "4")
    results, errors = fire(srv.url, [1, 2, 1, 1])
    assert not errors and len(results) == 4
    s, batches = stats(srv.client())
    assert batches == {1: 3, 2: 1}, batches
    assert s.execution_count == 4 and s.inference_count == 5


def test_queue_full_is_rejected_at_once(switchyard, make_repo):
    repo = with_batching(
        make_repo,
        "dynamic_batching { default_queue_policy { max_queue_size: 2 } }",
    )
    srv = switchyard(repo, "--delay-scheduler", "100")  # hold everything
    held = threading.Thread(target=fire, args=(srv.url, [1, 1]), kwargs={"timeout": 3})
    held.start()
    time.sleep(0.5)
    c = srv.client()
    inputs, _, _ = simple_inputs(1)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", inputs)
    assert time.monotonic() - t0 < 1.0
    assert "Exceeds maximum queue size" in e.value.message()
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    held.join(timeout=10)
    assert srv.client().is_server_live()


def test_queue_timeout_fires_while_held(switchyard, make_repo):
    repo = with_batching(
        make_repo,
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 300000 } }",
    )
    srv = switchyard(repo, "--delay-scheduler", "100")
    t0 = time.monotonic()
    results, errors = fire(srv.url, [1, 1])
    elapsed = time.monotonic() - t0
    assert not results and len(errors) == 2
    for e in errors.values():
        assert "Request timeout expired" in e.message()
        assert e.status() == "StatusCode.UNAVAILABLE"
    assert elapsed < 2.0, f"timeouts must fire on time, took {elapsed:.3f}s"
    s, _ = stats(srv.client())
    assert s.inference_stats.fail.count == 2 and s.execution_count == 0


def test_cancelled_requests_never_reach_the_model(switchyard, make_repo):
    repo = with_batching(make_repo, "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 1500000 }")
    srv = switchyard(repo)
    results, errors = fire(srv.url, [1, 1, 1], timeout=0.3)
    assert not results and len(errors) == 3
    time.sleep(2.0)  # past the batch delay: had they stayed queued, they would have run now
    s, batches = stats(srv.client())
    assert s.execution_count == 0 and s.inference_count == 0, batches
    results, errors = fire(srv.url, [1])
    assert not errors
    s, batches = stats(srv.client())
    assert batches == {1: 1}
