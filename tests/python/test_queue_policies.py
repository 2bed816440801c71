"""Priority levels, per-level queue policies, timeout_action DELAY and preserve_ordering through
tritonclient. Batch formation is made deterministic with `--delay-scheduler N` (the batcher holds
its queue until N requests wait); the order the batcher took requests in shows up in batch_stats
because the requests of each priority have different batch sizes."""

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import sy_helpers as h


def simple_repo(make_repo, extra, max_batch_size=4):
    """simple with a smaller max_batch_size and `extra` appended."""
    repo = make_repo(())
    text = h.simple_config("simple", extra)
    assert "max_batch_size: 8" in text
    text = text.replace("max_batch_size: 8", f"max_batch_size: {max_batch_size}")
    h.copy_model(repo, "simple", config=text)
    return repo


def simple_request(batch, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    inputs = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = grpcclient.InferInput(name, list(arr.shape), "INT32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return inputs, a + b


class Sender:
    """Sends requests from threads, one client each; remembers results, errors, finish times."""

    def __init__(self, url, model="simple"):
        self.url, self.model = url, model
        self.results, self.errors, self.done_at = {}, {}, {}
        self.threads = []
        self.lock = threading.Lock()

    def send(self, key, batch, **kwargs):
        def run():
            c = grpcclient.InferenceServerClient(self.url)
            inputs, expected = simple_request(batch, seed=len(str(key)) + batch)
            try:
                r = c.infer(self.model, inputs, **kwargs)
                assert np.array_equal(r.as_numpy("OUTPUT0"), expected)
                with self.lock:
                    self.results[key] = r
            except InferenceServerException as e:
                with self.lock:
                    self.errors[key] = e
            finally:
                with self.lock:
                    self.done_at[key] = time.monotonic()
                c.close()

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)
        return t

    def join(self, timeout=30):
        for t in self.threads:
            t.join(timeout=timeout)
        assert not any(t.is_alive() for t in self.threads), "a request never completed"


def batch_stats(url, model="simple"):
    c = grpcclient.InferenceServerClient(url)
    s = c.get_inference_statistics(model).model_stats[0]
    c.close()
    return s, {b.batch_size: b.compute_infer.count for b in s.batch_stats}


def test_higher_priority_requests_are_batched_first(switchyard, make_repo):
    # max batch 4. Low priority (level 2): two requests of 3 rows; high (level 1): two of 1 row.
    # FIFO would give batches 3, 3+1, 1. Priority order gives 1+1 (then 3 would exceed 4), 3, 3.
    repo = simple_repo(make_repo, "dynamic_batching { priority_levels: 2 default_priority_level: 2 }")
    srv = switchyard(repo, "--delay-scheduler", "4")
    s = Sender(srv.url)
    s.send("low-a", 3, priority=2)
    s.send("low-b", 3)  # no priority: default level 2
    time.sleep(0.3)
    s.send("high-a", 1, priority=1)
    s.send("high-b", 1, priority=1)
    s.join()
    assert not s.errors, s.errors
    stats, batches = batch_stats(srv.url)
    assert batches == {2: 1, 3: 2}, batches
    assert (stats.execution_count, stats.inference_count) == (3, 8)


def test_out_of_range_priority_uses_the_default_level(switchyard, make_repo):
    # Default level 1 (high). A priority of 9 (> priority_levels) maps to it, so the 1-row
    # requests go first even though they were sent after the 3-row request at level 2.
    repo = simple_repo(make_repo, "dynamic_batching { priority_levels: 2 default_priority_level: 1 }")
    srv = switchyard(repo, "--delay-scheduler", "3")
    s = Sender(srv.url)
    s.send("low", 3, priority=2)
    time.sleep(0.3)
    s.send("a", 1, priority=9)
    s.send("b", 1)
    s.join()
    assert not s.errors, s.errors
    _, batches = batch_stats(srv.url)
    assert batches == {2: 1, 3: 1}, batches


def test_priority_queue_policy_limits_each_level(switchyard, make_repo):
    repo = simple_repo(
        make_repo,
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 "
        "default_queue_policy { max_queue_size: 4 } "
        "priority_queue_policy { key: 2 value { max_queue_size: 1 } } }",
    )
    srv = switchyard(repo, "--delay-scheduler", "4")
    s = Sender(srv.url)
    s.send("low-1", 1, priority=2)
    time.sleep(0.3)
    c = srv.client()
    inputs, _ = simple_request(1, 0)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", inputs, priority=2)
    assert time.monotonic() - t0 < 1.0
    assert "Exceeds maximum queue size" in e.value.message()
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    # Level 1 has its own limit (the default policy's 4): three more fit and release the hold.
    for k in range(3):
        s.send(f"high-{k}", 1, priority=1)
    s.join()
    assert not s.errors, s.errors
    assert len(s.results) == 4
    stats, _ = batch_stats(srv.url)
    assert stats.inference_stats.fail.count == 1


def test_delay_action_keeps_a_timed_out_request_behind_newer_ones(switchyard, make_repo):
    # A (3 rows) times out while held and moves behind B and C (1 row each) instead of failing.
    # Max batch 4: FIFO would run A+B then C; with DELAY the batches are B+C, then A.
    repo = simple_repo(
        make_repo,
        "dynamic_batching { default_queue_policy { timeout_action: DELAY "
        "default_timeout_microseconds: 200000 } }",
    )
    srv = switchyard(repo, "--delay-scheduler", "3")
    s = Sender(srv.url)
    s.send("A", 3)
    time.sleep(0.6)
    s.send("B", 1)
    s.send("C", 1)
    s.join()
    assert not s.errors, {k: e.message() for k, e in s.errors.items()}
    _, batches = batch_stats(srv.url)
    assert batches == {2: 1, 3: 1}, batches


def test_reject_action_fails_the_timed_out_request(switchyard, make_repo):
    # The same sequence with the default timeout_action (REJECT): A fails, B and C run together.
    repo = simple_repo(
        make_repo,
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 200000 } }",
    )
    srv = switchyard(repo, "--delay-scheduler", "2")
    s = Sender(srv.url)
    s.send("A", 3)
    time.sleep(0.6)
    s.send("B", 1)
    s.send("C", 1)
    s.join()
    assert set(s.errors) == {"A"}
    assert "Request timeout expired" in s.errors["A"].message()
    _, batches = batch_stats(srv.url)
    assert batches == {2: 1}, batches


SLOW_CONFIG = """
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 1000000
input [ { name: "x" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def slow_repo(make_repo, extra):
    """A model whose cost is compute, not bytes: 40 x (MatMul 256x256 + Tanh) per row, summed to
    one number per row, so a few thousand rows keep one instance busy for most of a second while a 1-row request
    runs on the other instance."""
    repo = make_repo(())
    d = repo / "slow"
    h.write_slow_model(d, width=256, depth=40)
    (d / "config.pbtxt").write_text(SLOW_CONFIG + extra + "\n")
    return repo


def finish_order(url, big_rows):
    """A big request, then (while it runs) a 1-row request on the second instance.
    Returns, per key, when its response arrived and how long it took."""
    done, took, lock = {}, {}, threading.Lock()

    def one(key, rows):
        c = grpcclient.InferenceServerClient(url)
        t = grpcclient.InferInput("x", [rows, 256], "FP32")
        t.set_data_from_numpy(np.ones((rows, 256), dtype=np.float32))
        t0 = time.monotonic()
        c.infer("slow", [t])
        t1 = time.monotonic()
        with lock:
            done[key], took[key] = t1, t1 - t0
        c.close()

    big = threading.Thread(target=one, args=("big", big_rows))
    big.start()
    time.sleep(0.2)  # a few MB reach the server in milliseconds: the big request is running
    small = threading.Thread(target=one, args=("small", 1))
    small.start()
    big.join(timeout=60)
    small.join(timeout=60)
    return done, took


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_ordering_holds_back_a_later_request_that_finishes_first(
    switchyard, make_repo, preserve
):
    extra = "dynamic_batching { preserve_ordering: true }" if preserve else "dynamic_batching { }"
    srv = switchyard(slow_repo(make_repo, extra), "--ort-intra-op-threads", "1")
    # Size the big request so that it runs well past the small one's arrival.
    rows = 1000
    for _ in range(4):
        _, took = finish_order(srv.url, rows)
        if took["big"] >= 0.7:
            break
        rows = int(rows * max(1.5, 1.0 / max(took["big"], 0.05)))
    done, took = finish_order(srv.url, rows)
    assert took["big"] >= 0.5, f"big request too fast to test ordering ({rows} rows, {took})"
    # Both answers are released together when the big one finishes, and the client threads
    # may then read them in either order: compare arrival times with a small tolerance.
    if preserve:
        assert done["small"] >= done["big"] - 0.05, (done, took)
        assert took["small"] >= 0.2, took
    else:
        # The control: without preserve_ordering the small request overtakes.
        assert done["small"] < done["big"] - 0.2, (done, took)
        assert took["small"] < 0.2, took
