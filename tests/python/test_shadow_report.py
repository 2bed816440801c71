"""`switchyard shadow-report` against an independent computation in Python.

One real server shadows fraud_mlp v2 behind stable v1 (threshold 0.5) and writes its divergence
log; the report's numbers are then recomputed here from the same log lines: counts, agreement
(or the only-diverging caveat, for a log of diverging pairs only), decision confusion, PSI (numpy,
the quantile bins of deploy/psi.rs), score deltas, latencies and the top divergent requests. The
HTML page must be self-contained and escape client-controlled request ids. Hand-written logs cover
the agreement-rate path whatever the server writes, grouping, rotated files, malformed lines and
the exit codes of bad input."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import sy_helpers as h
from conftest import BINARY

N_REQUESTS = 3000
TOP = 10
BINS = 10
TIMEOUT = 20.0

DEPLOYMENT = """stable = 1
[[shadow]]
version = 2
max_in_flight = 64
timeout_ms = 5000
[shadow.compare]
output = "probabilities"
element = 1
threshold = 0.5
"""


def report(*args, check: bool = True) -> subprocess.CompletedProcess:
    assert BINARY.is_file(), f"{BINARY} missing: run `cargo build --release`"
    p = subprocess.run([str(BINARY), "shadow-report", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    if check:
        assert p.returncode == 0, f"rc {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


# ------------------------------------------------------------------ independent computation


def psi(expected, actual, bins: int) -> float:
    """deploy/psi.rs in numpy: inner edges are the i*n//bins-th smallest expected values
    (i = 1..bins-1) without repeats; bin i holds edges[i-1] <= x < edges[i]; shares floored
    at 1e-4; sum (pa - pe) ln(pa / pe)."""
    e = np.sort(np.asarray(expected, dtype=np.float64))
    a = np.asarray(actual, dtype=np.float64)
    n = len(e)
    edges = np.array([e[min(i * n // bins, n - 1)] for i in range(1, bins)])
    edges = edges[np.concatenate(([True], edges[1:] != edges[:-1]))]
    ce = np.bincount(np.searchsorted(edges, e, side="right"), minlength=len(edges) + 1)
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1)
    pe = np.maximum(ce / n, 1e-4)
    pa = np.maximum(ca / len(a), 1e-4)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def nearest_rank(values, pct: int) -> float:
    s = sorted(values)
    return s[max(1, -(-pct * len(s) // 100)) - 1]


def expected_groups(records: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["model"], r["kind"], r["primary_version"], r["shadow_version"])
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        pairs = [(r["primary_score"], r["shadow_score"]) for r in rs
                 if r["primary_score"] is not None and r["shadow_score"] is not None]
        deltas = [s - p for p, s in pairs]

        def divergence(r):
            if r["primary_score"] is not None and r["shadow_score"] is not None:
                return abs(r["shadow_score"] - r["primary_score"])
            return r["max_abs_diff"]

        # Identical, agreeing answers are never listed as divergent.
        candidates = [r for r in rs
                      if not (r["agree"] and divergence(r) == 0.0 and not r["exact_mismatch"])]
        ranked = sorted(candidates, key=lambda r: (-divergence(r), r["time_ms"], r["request_id"]))
        top = ranked[:TOP]
        out[key] = {
            "records": len(rs),
            "agreed": sum(r["agree"] for r in rs),
            "confusion": Counter((r["primary_decision"], r["shadow_decision"]) for r in rs),
            "psi": psi([p for p, _ in pairs], [s for _, s in pairs], BINS) if pairs else None,
            "pairs": len(pairs),
            "delta": None if not deltas else {
                "mean": float(np.mean(deltas)),
                "p50": nearest_rank(deltas, 50),
                "p90": nearest_rank(deltas, 90),
                "p99": nearest_rank(deltas, 99),
                "max": max(abs(d) for d in deltas),
            },
            "primary_latency": (nearest_rank([r["primary_latency_ms"] for r in rs], 50),
                                nearest_rank([r["primary_latency_ms"] for r in rs], 99)),
            "shadow_latency": (nearest_rank([r["shadow_latency_ms"] for r in rs], 50),
                               nearest_rank([r["shadow_latency_ms"] for r in rs], 99)),
            "top": [r["request_id"] for r in top],
            "top_divergence": [divergence(r) for r in top],
            # Up to one past the list: a near-tie at its end can change which ids are in it.
            "ranked_divergence": [divergence(r) for r in ranked[:TOP + 1]],
            "divergence_by_id": {r["request_id"]: divergence(r) for r in rs},
        }
    return out


# ------------------------------------------------------------------ reading the text report

NUM = r"[-+]?\d+(?:\.\d+)?"


def parse_report(text: str) -> tuple[dict, dict[tuple, dict]]:
    """Header numbers and, per group title, the numbers of its section."""
    m = re.match(r"switchyard shadow-report: (\d+) files?, (\d+) records, (\d+) malformed lines skipped",
                 text)
    assert m, text
    header = {"files": int(m[1]), "records": int(m[2]), "malformed": int(m[3])}
    groups = {}
    for sec in re.split(r"^(?=== )", text, flags=re.M)[1:]:
        t = re.match(r"== (.*) \| (.*) \| primary v(-?\d+) -> shadow v(-?\d+) ==", sec)
        key = (t[1], t[2], int(t[3]), int(t[4]))
        g: dict = {"text": sec}
        g["records"] = int(re.search(r"^records:\s+(\d+)$", sec, re.M)[1])
        agr = re.search(r"^agreement:\s+(.*)$", sec, re.M)[1]
        m = re.match(rf"({NUM}) % \((\d+) of (\d+) pairs agree\)", agr)
        g["agreement"] = (float(m[1]), int(m[2]), int(m[3])) if m else agr
        m = re.search(r"^decisions \(rows primary, columns shadow\):\n(.*?)\n(?=\S)", sec, re.M | re.S)
        g["confusion"] = Counter()
        if m:
            rows = m[1].splitlines()
            cols = [c.split()[1] for c in re.findall(r"shadow \w+", rows[0])]
            for row in rows[1:]:
                parts = row.split()
                for c, n in zip(cols, parts[2:]):
                    decode = {"true": True, "false": False, "none": None}
                    g["confusion"][(decode[parts[1]], decode[c])] = int(n)
        m = re.search(rf"^PSI:\s+({NUM}) \(shadow scores against primary scores, (\d+) bins, (\d+) pairs\)",
                      sec, re.M)
        g["psi"] = (float(m[1]), int(m[2]), int(m[3])) if m else None
        m = re.search(rf"mean ({NUM})  p50 ({NUM})  p90 ({NUM})  p99 ({NUM})  max \|delta\| ({NUM})", sec)
        g["delta"] = [float(x) for x in m.groups()] if m else None
        m = re.search(rf"^latency ms:\s+primary p50 ({NUM}) p99 ({NUM}) \| shadow p50 ({NUM}) p99 ({NUM})",
                      sec, re.M)
        g["latency"] = [float(x) for x in m.groups()]
        m = re.search(r"^top \d+ divergent requests.*\n.*\n((?:    .*\n?)*)", sec, re.M)
        g["top"] = [line.split()[0] for line in m[1].splitlines()] if m else []
        groups[key] = g
    return header, groups


def check_against_log(text: str, records: list[dict], malformed: int = 0) -> dict[tuple, dict]:
    header, got = parse_report(text)
    want = expected_groups(records)
    assert header["records"] == len(records) and header["malformed"] == malformed, header
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert g["records"] == w["records"], key
        if w["agreed"]:
            rate, agreed, n = g["agreement"]
            assert (agreed, n) == (w["agreed"], w["records"])
            assert rate == pytest.approx(100 * w["agreed"] / w["records"], abs=0.006)
            assert "only diverging" not in g["text"]
        else:
            assert g["agreement"] == "n/a: the log holds only diverging pairs", g["agreement"]
            assert "agreement cannot be computed" in g["text"]
            assert not re.search(r"^agreement:.*%", g["text"], re.M)
        if any(d is not None for pair in w["confusion"] for d in pair):
            assert +g["confusion"] == +w["confusion"], (g["confusion"], w["confusion"])
        if w["psi"] is None:
            assert g["psi"] is None
        else:
            value, bins, pairs = g["psi"]
            assert (bins, pairs) == (BINS, w["pairs"])
            assert value == pytest.approx(w["psi"], abs=2e-6), (value, w["psi"])
            d = w["delta"]
            assert g["delta"] == pytest.approx([d["mean"], d["p50"], d["p90"], d["p99"], d["max"]],
                                               abs=2e-6)
        assert g["latency"] == pytest.approx([*w["primary_latency"], *w["shadow_latency"]], abs=2e-3)
        # The same ranking; a near-tie may order differently, since serde_json (without its
        # float_roundtrip feature) can read a 17-digit float one ulp away from Python.
        listed = [w["divergence_by_id"][i] for i in g["top"]]
        assert listed == pytest.approx(w["top_divergence"], abs=1e-12), (g["top"], w["top"])
        if len(set(np.round(w["ranked_divergence"], 9))) == len(w["ranked_divergence"]):
            assert g["top"] == w["top"]
    return got


def check_page(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 3, "inline SVG charts"
    assert "<script" not in page.lower(), "no script, and request ids escaped"
    assert not re.search(r"https?://", page), "no external URL"
    assert not re.search(r"""(src|href)\s*=""", page), "nothing loaded from elsewhere"


# ------------------------------------------------------------------ the server's own log


@pytest.fixture
def server_log(make_repo, switchyard, tmp_path) -> Path:
    """The log directory of a server that compared N_REQUESTS pairs (stopped, so complete)."""
    logdir = tmp_path / "shadow-logs"
    srv = switchyard(h.fraud_repo_with(make_repo, DEPLOYMENT), "--shadow-log-dir", str(logdir))
    client = srv.client()
    rng = np.random.default_rng(7)
    for i in range(N_REQUESTS):
        x = h.fraud_inputs(1, seed=int(rng.integers(1 << 30)))["features"]
        t = grpcclient.InferInput("features", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        # Every id is client-controlled markup: whichever requests the report lists, their
        # ids must come out escaped.
        r = client.infer("fraud_mlp", [t], request_id=f"<script>r{i}</script>", client_timeout=TIMEOUT)
        assert r.get_response().model_version == "1"
    client.close()
    # SIGTERM drains the shadow copies still running; every logged line is then complete.
    assert srv.stop() == 0, srv.log()
    return logdir


def test_report_matches_an_independent_computation(server_log, tmp_path):
    lines = []
    for f in sorted(server_log.glob("divergence.jsonl*")):
        lines += f.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    # fraud_mlp v1 and v2 disagree on a few percent of inputs: diverging pairs exist whether the
    # server logs every pair or only diverging ones.
    assert any(not r["agree"] for r in records), "no diverging pair logged"
    assert all(r["kind"] == "shadow" and r["threshold"] == 0.5 for r in records)
    out = tmp_path / "out.html"
    p = report(server_log, "--html", out)
    got = check_against_log(p.stdout, records)
    assert list(got) == [("fraud_mlp", "shadow", 1, 2)]
    page = out.read_text()
    check_page(page)
    assert "&lt;script&gt;r" in page and "&lt;/script&gt;" in page
    assert "fraud_mlp | shadow | primary v1 -&gt; shadow v2" in page


# ------------------------------------------------------------------ hand-written logs


def rec(i: int, p: float, s: float, *, model="m", kind="shadow", pv=1, sv=2, rid=None, t=None):
    pd, sd = p > 0.5, s > 0.5
    return {
        "time_ms": t if t is not None else 1_700_000_000_000 + 250 * i,
        "model": model, "request_id": rid or f"q{i}", "kind": kind,
        "primary_version": pv, "shadow_version": sv,
        "primary_score": p, "shadow_score": s, "primary_decision": pd, "shadow_decision": sd,
        "threshold": 0.5, "agree": pd == sd, "max_abs_diff": abs(p - s),
        "max_rel_diff": abs(p - s) / max(abs(p), 1e-300), "exact_mismatch": False,
        "primary_latency_ms": 1.0 + (i % 17) / 10, "shadow_latency_ms": 2.0 + (i % 13) / 10,
    }


def handwritten(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A rotated log: .1 (older) and the live file; agreeing and diverging pairs of model m,
    diverging-only pairs of a canary check, and a `<script>` id as the most divergent request."""
    rng = np.random.default_rng(3)
    records = []
    for i in range(400):
        p = float(rng.beta(2, 5))
        records.append(rec(i, p, float(np.clip(p + rng.normal(0, 0.08), 0, 1))))
    records.append(rec(400, 0.01, 0.99, rid="<script>alert('x')</script>&amp;"))
    for i in range(30):  # a canary check whose log holds only diverging pairs
        records.append(rec(500 + i, 0.7, 0.2 + i / 100, model="m", kind="canary_check", pv=3, sv=1))
    no_score = rec(600, 0.0, 0.0, model="n")
    no_score.update(primary_score=None, shadow_score=None, primary_decision=None,
                    shadow_decision=None, threshold=None, agree=False, max_abs_diff=0.25)
    records.append(no_score)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    lines = [json.dumps(r) for r in records]
    (logdir / "divergence.jsonl.1").write_text("\n".join(lines[:200]) + "\n")
    (logdir / "divergence.jsonl").write_text("\n".join(lines[200:]) + "\n")
    (logdir / "unrelated.txt").write_text("not a log\n")
    return logdir, records


def test_handwritten_log_agreement_groups_and_escaping(tmp_path):
    logdir, records = handwritten(tmp_path)
    out = tmp_path / "hand.html"
    p = report(logdir, "--html", out, "--bins", BINS, "--top", TOP)
    got = check_against_log(p.stdout, records)
    assert p.stdout.splitlines()[1:3] == [f"  {logdir / 'divergence.jsonl.1'}",
                                           f"  {logdir / 'divergence.jsonl'}"], "oldest first"
    m = got[("m", "shadow", 1, 2)]
    assert isinstance(m["agreement"], tuple) and 0 < m["agreement"][0] < 100
    assert m["top"][0] == "<script>alert('x')</script>&amp;"
    assert isinstance(got[("m", "canary_check", 3, 1)]["agreement"], str)
    assert "PSI:              n/a" in got[("n", "shadow", 1, 2)]["text"]
    assert "0.250000*" in got[("n", "shadow", 1, 2)]["text"], "max_abs_diff fallback"
    page = out.read_text()
    check_page(page)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;amp;" in page
    assert page.count("<section>") == 3
    assert "the log holds only diverging pairs" in page


def test_malformed_lines_are_counted(tmp_path):
    good = [rec(i, 0.2 + i / 100, 0.25 + i / 100 + (i % 7) / 1000) for i in range(20)]
    bad = ["not json", '{"time_ms": 1}', json.dumps({**good[0], "agree": "yes"}), "\x00\xff",
           json.dumps(good[1])[:30]]
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join([json.dumps(r) for r in good[:10]] + bad + [""]
                           + [json.dumps(r) for r in good[10:]]) + "\n")
    p = report(f)
    check_against_log(p.stdout, good, malformed=len(bad))


def test_bad_input_exits_2(tmp_path):
    p = report(tmp_path / "missing.jsonl", check=False)
    assert p.returncode == 2 and "missing.jsonl" in p.stderr and p.stdout == "", p
    (tmp_path / "empty").mkdir()
    p = report(tmp_path / "empty", check=False)
    assert p.returncode == 2 and "no divergence.jsonl" in p.stderr, p
    p = report(check=False)
    assert p.returncode == 2 and "LOG" in p.stderr, p
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps(rec(0, 0.1, 0.9)) + "\n")
    assert report(f, "--bins", "1", check=False).returncode == 2
    p = report(f, "--html", tmp_path / "no" / "dir" / "x.html", check=False)
    assert p.returncode == 1 and "x.html" in p.stderr, p
