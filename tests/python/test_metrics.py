"""The Prometheus endpoint (--metrics-port, GET /metrics): Triton's metric names and labels with
values that match the statistics API, failure reasons, pending count, CPU gauges, the
switchyard_ histograms, and the flags that switch it off."""

import re
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import sy_helpers as h

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(url):
    r = requests.get(url, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return r.text


def parse(text):
    """{(name, frozenset(labels)): value} for every sample line; checks the text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) \S+ ", line), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name, labels, value = m.groups()
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")
        out[(name, frozenset(pairs))] = float(value)
    return out


def value(samples, name, **labels):
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    assert key in samples, f"{name}{labels} missing; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def simple_inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for name in ("INPUT0", "INPUT1"):
        t = grpcclient.InferInput(name, [batch, 16], "INT32")
        t.set_data_from_numpy(rng.integers(-9, 9, size=(batch, 16), dtype=np.int32))
        out.append(t)
    return out


def test_triton_counters_match_the_statistics_api(switchyard, make_repo):
    repo = make_repo(())
    h.copy_model(repo, "simple", config=h.simple_config("simple", "dynamic_batching { }"))
    srv = switchyard(repo, "--delay-scheduler", "3")
    c = srv.client()
    # Three requests (1 + 2 + 3 rows) held until all are queued: one execution of 6.
    threads = [
        threading.Thread(target=lambda b=b: grpcclient.InferenceServerClient(srv.url).infer("simple", simple_inputs(b)))
        for b in (1, 2, 3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # One bad request: fails validation (OTHER); it never reaches the queue.
    with pytest.raises(InferenceServerException):
        c.infer("simple", simple_inputs(9))  # 9 > max_batch_size 8
    stats = c.get_inference_statistics("simple").model_stats[0]
    samples = parse(scrape(srv.metrics_url))
    lbl = {"model": "simple", "version": "1"}
    assert value(samples, "nv_inference_request_success", **lbl) == stats.inference_stats.success.count == 3
    assert value(samples, "nv_inference_count", **lbl) == stats.inference_count == 6
    assert value(samples, "nv_inference_exec_count", **lbl) == stats.execution_count == 1
    assert value(samples, "nv_inference_request_duration_us", **lbl) == stats.inference_stats.success.ns // 1000
    assert value(samples, "nv_inference_queue_duration_us", **lbl) == stats.inference_stats.queue.ns // 1000
    for phase in ("input", "infer", "output"):
        ns = getattr(stats.inference_stats, f"compute_{phase}").ns
        assert value(samples, f"nv_inference_compute_{phase}_duration_us", **lbl) == ns // 1000
    # Every failure reason is there, at 0 unless something failed for it.
    for reason in ("REJECTED", "CANCELED", "BACKEND"):
        assert value(samples, "nv_inference_request_failure", reason=reason, **lbl) == 0
    assert value(samples, "nv_inference_pending_request_count", **lbl) == 0
    assert value(samples, "nv_model_load_duration_secs", **lbl) > 0
    # Histograms: 3 successful requests, one batch of 6.
    assert value(samples, "switchyard_request_duration_seconds_count", **lbl) == 3
    assert value(samples, "switchyard_queue_duration_seconds_count", **lbl) == 3
    assert value(samples, "switchyard_compute_duration_seconds_count", **lbl) == 3
    assert value(samples, "switchyard_batch_size_bucket", le="4", **lbl) == 0
    assert value(samples, "switchyard_batch_size_bucket", le="8", **lbl) == 1
    assert value(samples, "switchyard_request_duration_seconds_bucket", le="+Inf", **lbl) == 3
    text = scrape(srv.metrics_url)
    assert "# TYPE switchyard_request_duration_seconds histogram" in text
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text


def test_rejected_and_pending_are_counted(switchyard, make_repo):
    repo = make_repo(())
    h.copy_model(
        repo,
        "simple",
        config=h.simple_config("simple", "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"),
    )
    srv = switchyard(repo, "--delay-scheduler", "100")  # hold everything
    held = [
        threading.Thread(
            target=lambda: pytest.raises(
                InferenceServerException,
                grpcclient.InferenceServerClient(srv.url).infer,
                "simple",
                simple_inputs(1),
                client_timeout=2.0,
            )
        )
        for _ in range(2)
    ]
    for t in held:
        t.start()
    lbl = {"model": "simple", "version": "1"}
    deadline = time.monotonic() + 5
    while value(parse(scrape(srv.metrics_url)), "nv_inference_pending_request_count", **lbl) != 2:
        assert time.monotonic() < deadline, "pending count never reached 2"
        time.sleep(0.05)
    with pytest.raises(InferenceServerException, match="Exceeds maximum queue size"):
        srv.client().infer("simple", simple_inputs(1))
    samples = parse(scrape(srv.metrics_url))
    assert value(samples, "nv_inference_request_failure", reason="REJECTED", **lbl) == 1
    for t in held:
        t.join(timeout=10)
    # The held requests' clients gave up: once the batcher notices, they count as CANCELED.
    deadline = time.monotonic() + 5
    while True:
        samples = parse(scrape(srv.metrics_url))
        if value(samples, "nv_inference_request_failure", reason="CANCELED", **lbl) == 2:
            break
        assert time.monotonic() < deadline, "cancelled requests were not counted"
        time.sleep(0.05)
    assert value(samples, "nv_inference_pending_request_count", **lbl) == 0
    assert value(samples, "nv_inference_exec_count", **lbl) == 0


def test_cpu_metrics_and_every_loaded_version(server):
    samples = parse(scrape(server.metrics_url))
    util = value(samples, "nv_cpu_utilization")
    assert 0.0 <= util <= 1.0
    total = value(samples, "nv_cpu_memory_total_bytes")
    used = value(samples, "nv_cpu_memory_used_bytes")
    assert total > 0 and 0 < used <= total
    # fraud_mlp serves two versions: each has its own series.
    for v in ("1", "2"):
        assert value(samples, "nv_inference_request_success", model="fraud_mlp", version=v) >= 0


def test_only_get_metrics_is_served(server):
    base = server.metrics_url.rsplit("/", 1)[0]
    assert requests.get(base + "/nothing", timeout=5).status_code == 404
    assert requests.post(server.metrics_url, timeout=5).status_code == 405


def test_allow_metrics_false_serves_nothing(switchyard, make_repo):
    srv = switchyard(make_repo(("simple",)), "--allow-metrics=false")
    with pytest.raises(requests.ConnectionError):
        requests.get(srv.metrics_url, timeout=2)
    assert srv.client().is_server_ready()


def test_cpu_metrics_can_be_switched_off(switchyard, make_repo):
    srv = switchyard(make_repo(("simple",)), "--allow-cpu-metrics=false", "--metrics-interval-ms", "100")
    time.sleep(0.3)
    text = scrape(srv.metrics_url)
    assert "nv_cpu_utilization" not in text
    assert 'nv_inference_request_success{model="simple",version="1"} 0' in text


def _nvml_present():
    import ctypes

    for name in ("libnvidia-ml.so.1", "libnvidia-ml.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(_nvml_present(), reason="this machine has NVML: GPU series are expected")
def test_no_gpu_series_without_nvml(switchyard, make_repo):
    """On a machine without the NVIDIA driver, --allow-gpu-metrics (the default) exports no GPU
    series, says so once in the log, and changes nothing else."""
    srv = switchyard(make_repo(("simple",)), "--allow-gpu-metrics=true", "--metrics-interval-ms", "100")
    time.sleep(0.3)
    c = srv.client()
    assert c.is_server_ready()
    res = c.infer("simple", simple_inputs(1))
    assert res.as_numpy("OUTPUT0").shape == (1, 16)
    text = scrape(srv.metrics_url)
    assert "nv_gpu_" not in text and "nv_energy_consumption" not in text, text
    samples = parse(text)
    assert value(samples, "nv_inference_request_success", model="simple", version="1") == 1
    assert 0.0 <= value(samples, "nv_cpu_utilization") <= 1.0
    log = srv.log()
    lines = [l for l in log.splitlines() if "GPU metrics will not be available" in l]
    assert len(lines) == 1, log
    assert "NVML not available" in lines[0], lines[0]
