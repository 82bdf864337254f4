"""Shared test fixtures: the offline fixture set is built once per session into a temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tests download many small artifacts


@pytest.fixture(scope="session")
def fixture_paths(tmp_path_factory):
    """Tiny Tomoro-layout checkpoint, ViDoRe-format task and calibration .jsonl (colq_sweep.fixtures)."""
    from colq_sweep.fixtures.offline import ensure_fixtures

    # Laid out as <outputs_dir>/fixtures so configs that interpolate ${outputs_dir}/fixtures/... find them.
    return ensure_fixtures(tmp_path_factory.mktemp("outputs") / "fixtures")


@pytest.fixture(scope="session")
def fixture_outputs_dir(fixture_paths):
    """An outputs_dir whose fixtures/ subfolder holds the session fixtures (for composing real configs)."""
    return fixture_paths.root.parent


ROOT = Path(__file__).resolve().parents[1]
SLURM_CONF = ROOT / "outputs" / "slurm" / "slurm.conf"  # scripts/slurm-up.sh's cluster


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, reason: str):
    """Skip a test that needs `what` (fail under CI=true, where everything the tests need must run)."""
    if _in_ci():
        pytest.fail(f"CI=true: {what} is required but unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


def _slurm_answers(conf: str) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env={**os.environ, "SLURM_CONF": conf},
                             capture_output=True, text=True, timeout=15)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a one-node Slurm cluster that answers: $SLURM_CONF, else the cluster of scripts/slurm-up.sh
    (started here, as root, when Slurm is installed; under CI=true installed too, and stopped again at the end).
    Without one the tests that need it skip with the reason (under CI=true they fail)."""
    conf = os.environ.get("SLURM_CONF") or str(SLURM_CONF)
    if shutil.which("sinfo") and Path(conf).is_file() and _slurm_answers(conf):
        yield conf
        return
    if Path(conf) != SLURM_CONF:
        _unavailable("Slurm", f"SLURM_CONF={conf} does not answer (sinfo)")
    if os.geteuid() != 0:
        _unavailable("Slurm", "starting the test cluster needs root (scripts/slurm-up.sh)")
    if not shutil.which("slurmctld") and not _in_ci():
        _unavailable("Slurm", "slurm-wlm is not installed (`make slurm-up` installs and starts it, as root)")
    env = {**os.environ, "COLQ_SLURM_INSTALL": "1" if _in_ci() else "0"}
    up = subprocess.run([str(ROOT / "scripts" / "slurm-up.sh")], env=env, capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        _unavailable("Slurm", f"scripts/slurm-up.sh failed: {up.stderr.strip()[-500:]}")
    try:
        yield str(SLURM_CONF)
    finally:
        subprocess.run([str(ROOT / "scripts" / "slurm-down.sh")], capture_output=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """An `mlflow server` process (sqlite backend, proxied artifacts under a temp dir) on a free local port."""

    def __init__(self, directory: Path | None = None, port: int | None = None):
        """A new server; with the `directory` and `port` of a killed one, the same server again."""
        import tempfile

        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="colq-mlflow-server-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{port or free_port()}"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job consumers (GenAI jobs): 7 fewer processes
        self.log = (self.dir / "server.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.dir}/mlflow.db",
             "--artifacts-destination", str(self.dir / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
             "--port", self.url.rsplit(":", 1)[1], "--workers", "1"],
            cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout  # ~11-20 s on 2 cores
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: {(self.dir / 'server.log').read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server: no answer on {self.url}/health in {timeout:.0f} s: "
                            f"{(self.dir / 'server.log').read_text()[-1500:]}")  # fmt: skip
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would (the store on disk stays)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_server: list[_Server] = []


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Start the MLflow server as soon as the session knows a test will need it: its ~15 s start-up overlaps
    with the tests that run before that one."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        _server.append(_Server())


def pytest_sessionfinish(session, exitstatus):
    while _server:
        _server.pop().stop()


@pytest.fixture(scope="session")
def mlflow_server():
    """The URL of a real `mlflow server` on 127.0.0.1 (free port, sqlite backend, `--serve-artifacts` with an
    artifact root in a temp dir), started at collection time and stopped at the end of the session."""
    if not _server:
        _server.append(_Server())
    return _server[0].wait_healthy()


@pytest.fixture
def killable_mlflow_server(mlflow_server):
    """The session's `mlflow server` as an object a test may kill (SIGKILL) and restart on the same store and port
    with `restart()`; the session stops whichever process is current at its end."""
    server = _server[0]

    def restart() -> _Server:
        server.log.close()
        again = _Server(server.dir, int(server.url.rsplit(":", 1)[1]))
        _server[0] = again
        again.wait_healthy()
        return again

    server.restart = restart
    yield server
    if _server[0].proc.poll() is not None:  # killed and not restarted: bring it back for later tests
        restart()
