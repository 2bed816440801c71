"""Fixtures that run the real `switchyard` binary on free loopback ports.

* ``server``      -- session-scoped server over ``model_repository/`` (the example models).
* ``client``      -- ``tritonclient.grpc.InferenceServerClient`` connected to ``server``.
* ``stub``        -- raw ``GRPCInferenceServiceStub`` connected to ``server``.
* ``http_client`` -- ``tritonclient.http.InferenceServerClient`` connected to ``server``
                     (``server.http_url`` is its ``host:port``).
* ``switchyard``  -- factory: ``switchyard(repo, *extra_args, wait=True)`` starts a server over a
                     custom repository and returns a :class:`Server` (unpacks as
                     ``url, process, log_path``); every server it started is stopped with SIGTERM at
                     teardown and must exit 0 within 30 s.
* ``make_repo``   -- factory: ``make_repo(["simple", ...])`` copies example models into a fresh
                     repository under ``tmp_path`` and returns its path.

Every wait is bounded. A server's log goes to a file under the test's tmp directory and is
attached to the report of any test that fails while it ran.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

import sy_helpers as h

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", ROOT / "target" / "release" / "switchyard"))
MODEL_REPOSITORY = ROOT / "model_repository"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Servers alive in this process; killed at exit if a test run is aborted.
_LIVE: list["Server"] = []
# Servers started by each test (nodeid -> servers), for the failure report.
_BY_TEST: dict[str, list["Server"]] = {}
_SESSION_SERVER: list["Server"] = []
_MODULE_POOLS: list["ServerPool"] = []


def ort_library() -> str:
    """The ONNX Runtime shared library the server loads (ORT_DYLIB_PATH)."""
    f = ROOT / ".deps" / "ort-lib-path"
    if f.is_file():
        path = f.read_text().strip()
    else:
        path = os.environ.get("ORT_DYLIB_PATH", "")
    if not path or not Path(path).exists():
        pytest.exit(
            f"ONNX Runtime library not found (.deps/ort-lib-path -> {path!r}); "
            "run `bash scripts/deps.sh test`",
            returncode=2,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server gets SIGKILL if this process dies (PR_SET_PDEATHSIG), so an aborted run leaves
# nothing behind. Done with setpriv(1) rather than a preexec_fn: forking a process that has
# gRPC threads and running Python code in the child is not safe.
_SETPRIV = shutil.which("setpriv")


def _launcher() -> list[str]:
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


class ServerStartError(Exception):
    def __init__(self, msg: str, log: str):
        super().__init__(msg)
        self.log = log


class Server:
    """One running switchyard process."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, cmd: list[str]):
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self.cmd = cmd
        self.grpc_port = int(url.rsplit(":", 1)[1])
        self.metrics_url = ""
        self.http_port = 0
        # host:port of the HTTP endpoint (tritonclient.http style; prefix http:// for requests).
        self.http_url = ""

    # `url, process, log = switchyard(...)`
    def __iter__(self):
        return iter((self.url, self.proc, self.log_path))

    def log(self) -> str:
        try:
            return ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.url)

    def http_client(self, **kwargs):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url, **kwargs)

    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return h.make_stub(self.url)

    def wait_live(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        # Short reconnect backoff: the first probes usually hit a port that is not bound yet.
        client = grpcclient.InferenceServerClient(
            self.url,
            channel_args=[
                ("grpc.initial_reconnect_backoff_ms", 20),
                ("grpc.min_reconnect_backoff_ms", 20),
                ("grpc.max_reconnect_backoff_ms", 100),
            ],
        )
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerStartError(
                        f"switchyard exited with code {rc} before becoming live", self.log()
                    )
                try:
                    if client.is_server_live(client_timeout=1.0):
                        return
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServerStartError(
                        f"switchyard was not live after {timeout:.0f} s", self.log()
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"switchyard did not exit within {timeout:.0f} s\n--- log ---\n{self.log()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Sends `sig` and waits (bounded) for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if self in _LIVE:
            _LIVE.remove(self)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self in _LIVE:
            _LIVE.remove(self)


def start_server(
    repo: Path, log_dir: Path, args: tuple[str, ...] = (), wait: bool = True, name: str = "switchyard"
) -> Server:
    """Starts the binary over `repo`; with `wait`, returns once ServerLive answers true."""
    assert BINARY.is_file(), f"{BINARY} missing: run `cargo build --release`"
    env = dict(os.environ)
    env["ORT_DYLIB_PATH"] = ort_library()
    env.pop("SWITCHYARD_MODEL_REPOSITORY", None)
    env["NO_COLOR"] = "1"
    last_error: ServerStartError | None = None
    for attempt in range(3):
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        cmd = [
            str(BINARY),
            "--model-repository", str(repo),
            "--grpc-address", "127.0.0.1",
            "--grpc-port", str(grpc_port),
            "--http-port", str(http_port),
            "--metrics-port", str(metrics_port),
            *args,
        ]
        log_path = log_dir / f"{name}-{grpc_port}.log"
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(
                _launcher() + cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        srv = Server(proc, f"127.0.0.1:{grpc_port}", log_path, cmd)
        srv.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        srv.http_port = http_port
        srv.http_url = f"127.0.0.1:{http_port}"
        _LIVE.append(srv)
        if not wait:
            return srv
        try:
            srv.wait_live()
            return srv
        except ServerStartError as e:
            srv.kill()
            last_error = e
            if "in use" in e.log.lower():  # lost a race for the port: try other ports
                continue
            break
    pytest.fail(f"{last_error}\n--- switchyard log ---\n{last_error.log}", pytrace=False)


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_LIVE):
        srv.kill()


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server over the example repository, shared by the whole session."""
    log_dir = tmp_path_factory.mktemp("session-server")
    srv = start_server(MODEL_REPOSITORY, log_dir, name="session")
    _SESSION_SERVER.append(srv)
    yield srv
    rc = srv.stop()
    assert rc == 0, f"session server exited with {rc} after SIGTERM\n--- log ---\n{srv.log()}"


@pytest.fixture(scope="session")
def client(server):
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def http_client(server):
    c = server.http_client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def stub(server):
    return server.stub()


class ServerPool:
    """Starts servers into one log directory and stops them all (SIGTERM, exit 0) on close."""

    def __init__(self, log_dir: Path, owner: str | None = None):
        self.log_dir = log_dir
        self.owner = owner
        self.started: list[Server] = []

    def start(self, repo, *args: str, wait: bool = True) -> Server:
        srv = start_server(Path(repo), self.log_dir, tuple(args), wait=wait, name=f"sy{len(self.started)}")
        self.started.append(srv)
        if self.owner:
            _BY_TEST.setdefault(self.owner, []).append(srv)
        return srv

    def close(self) -> None:
        problems = []
        for srv in self.started:
            if srv.proc.poll() is not None:  # exited on its own; the test checked its code
                if srv in _LIVE:
                    _LIVE.remove(srv)
                continue
            rc = srv.stop()
            if rc != 0:
                problems.append(f"{srv.url}: exit code {rc} after SIGTERM\n{srv.log()}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def switchyard(tmp_path, request):
    """Factory: `switchyard(repo, *extra_args, wait=True)` starts a server over a custom
    repository; returns a Server (unpacks as url, process, log_path)."""
    pool = ServerPool(tmp_path, owner=request.node.nodeid)
    yield pool.start
    pool.close()


@pytest.fixture(scope="module")
def module_switchyard(tmp_path_factory, request):
    """Like `switchyard`, for servers shared by the tests of one module."""
    pool = ServerPool(tmp_path_factory.mktemp("module-servers"))
    _MODULE_POOLS.append(pool)
    yield pool.start
    _MODULE_POOLS.remove(pool)
    pool.close()


@pytest.fixture
def make_repo(tmp_path):
    """Factory: a repository under tmp_path holding copies of example models."""
    counter = [0]

    def make(models=("simple",)) -> Path:
        repo = tmp_path / f"repo{counter[0]}"
        counter[0] += 1
        repo.mkdir()
        for m in models:
            shutil.copytree(MODEL_REPOSITORY / m, repo / m)
        return repo

    return make


# ------------------------------------------------------------------ logs in failure reports


def _tail(text: str, lines: int = 150) -> str:
    parts = text.splitlines()
    if len(parts) > lines:
        parts = [f"... ({len(parts) - lines} earlier lines in the log file)"] + parts[-lines:]
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    servers = list(_BY_TEST.get(item.nodeid, []))
    names = getattr(item, "fixturenames", ())
    if "server" in names:
        servers += _SESSION_SERVER
    if "module_switchyard" in names:
        for pool in _MODULE_POOLS:
            servers += pool.started
    for srv in servers:
        rep.sections.append((f"switchyard log {srv.url} ({srv.log_path})", _tail(srv.log())))


def pytest_runtest_logfinish(nodeid, location):
    _BY_TEST.pop(nodeid, None)
