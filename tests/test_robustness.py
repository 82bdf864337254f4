"""Nothing reused unverified, nothing left RUNNING, no two sweeps in one folder, every bad input caught up front."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from colq_sweep.track.store import Tracker, resolve_tracking_uri, sweep_id_for
from tests.helpers import make_point, quantize_point

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def cli(args: list[str], outputs: Path, fixtures: Path, extra_env: dict | None = None, **kw):
    """`python -m colq_sweep experiment=demo ...` on the fixtures (Popen kwargs: start it in the background)."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants flags before the overrides
    args = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "colq_sweep", *flags, "experiment=demo", f"outputs_dir={outputs}",
           f"model.path={fixtures / 'tiny-colqwen3'}", f"calib.path={fixtures / 'calib.jsonl'}",
           f"eval.fixture_dir={fixtures / 'vidore-fixture'}", *args]  # fmt: skip
    env = {**ENV, **(extra_env or {})}
    if kw.pop("background", False):
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kw)  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def tracker(outputs: Path) -> Tracker:
    return Tracker(resolve_tracking_uri(outputs), "demo")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------- bad input, up front


@pytest.mark.parametrize(
    "args, expect",
    [
        (["foo=1"], "config error: foo=1: no such key in the config"),
        (["-m", "seqln=32,64"], "config error: seqln=32,64: no such key in the config; did you mean seqlen?"),
        (["+foo=1"], "config error: foo=1: unknown top-level key"),
        (["-m", "seqlen=32,4096"], "only 0 usable calibration samples for nsamples=8"),
        (["-m", "device=cuda", "seqlen=32"], "device='cuda': no CUDA device is visible on this machine"),
        (["model=nope"], "Could not find 'model/nope'; available: colqwen3-4b, colqwen3-8b, small, tiny"),
        (["-m", "device=cpu", "eval.preprocess_device=cuda", "seqlen=32"],
         "eval.preprocess_device='cuda': the evaluation runs on cpu (device=cpu): use eval.preprocess_device=auto, pil or cpu"),
    ],
    ids=["unknown key", "unknown key in a sweep", "added unknown key", "short calibration", "no cuda", "bad option",
         "pixels on a missing GPU"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, expect, tmp_path, fixture_paths):
    """(Where results go, refused before Hydra makes a folder: test_results_that_cannot_be_kept_are_refused_up_front.)"""
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    outputs = tmp_path / "out"
    proc = cli(args, outputs, fixture_paths.root)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc)
    assert line.startswith("colq_sweep: ") and expect in line, line
    if "-m" in args:  # a rejected multirun writes nothing: no sweep folder, no store, no parent run
        assert not outputs.exists() or not any(outputs.iterdir()), sorted(outputs.rglob("*"))


@pytest.fixture(scope="module")
def not_mlflow():
    """A local HTTP server that is not MLflow (every path: 404)."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("what", ["unwritable outputs", "nothing listening", "not an MLflow server"])
def test_results_that_cannot_be_kept_are_refused_up_front(what, tmp_path, fixture_paths, not_mlflow):
    """Before Hydra creates any folder, whatever the launcher: one line naming the setting and the fix, exit 2,
    within seconds (MLflow's own client would retry for minutes)."""
    import time

    outputs, args = tmp_path / "out", []
    if what == "unwritable outputs":
        outputs, expect = Path("/proc/colq"), "outputs_dir='/proc/colq': cannot be created or written"
    elif what == "nothing listening":
        args, expect = ["tracking_uri=http://127.0.0.1:9/"], "tracking_uri='http://127.0.0.1:9/': no MLflow server answers"
    else:
        args, expect = [f"tracking_uri={not_mlflow}"], "answered HTTP 404 to MLflow's REST API"
    for mode in ([], ["-m"]):
        t0 = time.monotonic()
        proc = cli([*mode, *args], outputs, fixture_paths.root)
        assert proc.returncode == 2 and time.monotonic() - t0 < 30, proc.stderr[-3000:]
        line = one_line(proc)
        assert line.startswith("colq_sweep: config error: ") and expect in line and "[nothing was run]" in line, line
        if what != "unwritable outputs":
            assert "mlflow server --backend-store-uri" in line and not outputs.exists()  # nothing made, not even outputs/
    assert not list(tmp_path.rglob("mlflow.db"))


# ------------------------------------------------------------------------------------- nothing left RUNNING


def _sweep_config(outputs: Path, sweep_dir: Path):
    return OmegaConf.create({"outputs_dir": str(outputs), "tracking_uri": None, "name": "demo",
                             "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": []}}})  # fmt: skip


def test_runs_of_dead_processes_are_marked_killed_and_foreign_ones_listed(tmp_path, capsys):
    from colq_sweep.track.multirun import close_sweep, open_sweep

    outputs = tmp_path / "out"
    t = tracker(outputs)
    dead = t.create_run("dead parent", {"colq.role": "sweep", "colq.pid": str(dead_pid())})
    reused = t.create_run("pid reused", {"colq.role": "baseline", "colq.pid": str(os.getpid()), "colq.pid_start": "1"})
    alive = t.create_run("alive", {"colq.role": "baseline"})  # this very process: still running
    foreign = t.create_run("elsewhere", {"colq.role": "quantized", "colq.host": "gpu-node-7", "colq.pid": "1"})
    cfg = _sweep_config(outputs, tmp_path / "sweep")
    parent = open_sweep(cfg, 1)
    status = {r: t.client.get_run(r).info.status for r in (dead, reused, alive, foreign, parent)}
    assert status == {dead: "KILLED", reused: "KILLED", alive: "RUNNING", foreign: "RUNNING", parent: "RUNNING"}
    assert "found by a later sweep" in t.client.get_run(dead).data.tags["colq.error"]
    assert t.client.get_run(parent).data.tags["colq.host"] == socket.gethostname()  # parents carry their owner
    assert t.client.get_run(parent).data.tags["colq.pid_start"]
    # the sweep ends: its job left a child RUNNING and wrote no status (crashed) -> the child is KILLED now
    child = t.create_run("crashed job", {"colq.role": "quantized"}, parent_id=parent)
    job_dir = tmp_path / "sweep" / "0"
    job_dir.mkdir(parents=True)
    assert close_sweep(cfg, [(0, job_dir, "seqlen=32")]) == 1
    err = capsys.readouterr().err
    assert "CRASHED" in err and f"{foreign} (gpu-node-7)" in err and "owner unknown" in err
    assert t.client.get_run(child).info.status == "KILLED" and t.client.get_run(parent).info.status == "FAILED"
    t.finish(alive)


@pytest.mark.slow
def test_a_killed_sweep_leaves_nothing_running_after_the_next_sweep(tmp_path, fixture_paths):
    outputs = tmp_path / "out"
    probe = ["hydra.launcher.task=colq_sweep.launch.probe.probe_task"]
    first = cli(["-m", "seqlen=32", *probe], outputs, fixture_paths.root, {"COLQ_PROBE_SECONDS": "120"}, background=True)
    deadline = time.time() + 120
    while not list(outputs.glob("hydra/demo/multirun-*/0")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the job is sleeping in its probe; the parent run exists
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (parent,) = [r for r in tracker(outputs).find("tags.`colq.role` = 'sweep'", status=None)]
    assert parent.info.status == "RUNNING"
    second = cli(["-m", "seqlen=32", *probe], outputs, fixture_paths.root)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = tracker(outputs).find("tags.`colq.role` = 'sweep'", status=None)
    assert {r.info.run_id: r.info.status for r in runs}[parent.info.run_id] == "KILLED"
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


# ------------------------------------------------------------------------------------- one folder per sweep


@pytest.mark.slow
def test_two_sweeps_started_at_once_get_their_own_folder_parent_and_summary(tmp_path, fixture_paths):
    outputs = tmp_path / "out"
    probe = ["hydra.launcher.task=colq_sweep.launch.probe.probe_task"]
    procs = [cli(["-m", "seqlen=32", f"seed={s}", *probe], outputs, fixture_paths.root, background=True) for s in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0], [e[-2000:] for _, _, e in results]
    dirs = sorted(outputs.glob("hydra/demo/multirun-*"))
    assert len(dirs) == 2 and all((d / "0" / "colq_status.json").is_file() for d in dirs)
    assert not any((d / "1").exists() for d in dirs)  # each folder holds its own single job
    parents = tracker(outputs).find("tags.`colq.role` = 'sweep'", status=None)
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert {r.data.tags["colq.sweep_id"] for r in parents} == {sweep_id_for(d) for d in dirs}
    for _, _, err in results:
        assert err.count("probe  probe  FINISHED") == 1  # its summary lists its one job, not the other sweep's


# ------------------------------------------------------------------------------------- verified reuse


@pytest.mark.slow
def test_artifact_content_is_verified_before_reuse_cheaply(fixture_paths, tmp_path, monkeypatch, caplog):
    from colq_sweep.quantize import artifacts

    point = make_point(fixture_paths, tmp_path)
    art = quantize_point(point, tmp_path / "models")
    stamp = artifacts.stamp_path(art.path)
    assert stamp.is_file() and not (art.path / stamp.name).exists()  # the stamp lives outside the artifact
    hashed: list[str] = []
    real = artifacts.file_sha256
    monkeypatch.setattr(artifacts, "file_sha256", lambda f: hashed.append(Path(f).name) or real(f))
    again = quantize_point(point, tmp_path / "models")
    assert again.reused and hashed == ["manifest.json", "manifest.json"]  # unchanged files: stats, no re-read
    # an edited sha256 in the manifest is noticed (the stamp no longer vouches for the files)
    manifest = json.loads((art.path / "manifest.json").read_text())
    manifest["files"]["config.json"]["sha256"] = "0" * 64
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    hashed.clear()
    caplog.set_level("WARNING")
    rebuilt = quantize_point(point, tmp_path / "models")
    assert not rebuilt.reused and "config.json sha256 differs from the manifest" in caplog.text
    assert json.loads((rebuilt.path / "manifest.json").read_text())["files"]["config.json"]["sha256"] != "0" * 64


@pytest.mark.slow
def test_cached_results_and_pages_are_verified_before_reuse(fixture_paths, tmp_path, caplog):
    from colq_sweep.evaluate import evaluate_model
    from colq_sweep.evaluate.encoder import PageStore
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    def loader():
        return load_colqwen3(fixture_paths.checkpoint, dtype="float32"), ColQwen3Processor.from_checkpoint(
            fixture_paths.checkpoint, 64)

    spec = make_point(fixture_paths, tmp_path).eval
    kw = dict(model_name="colq_sweep/tiny", model_revision="r1", results_dir=tmp_path / "res", cache_dir=tmp_path / "cache")
    first = evaluate_model(loader, spec, **kw)
    assert evaluate_model(loader, spec, **kw).from_cache  # intact: served from the caches
    caplog.set_level("WARNING")
    per_query = next((tmp_path / "res").rglob("*.per_query.jsonl"))
    per_query.write_text(per_query.read_text().replace('"ndcg_at_5": 0.', '"ndcg_at_5": 1.', 1))
    again = evaluate_model(loader, spec, **kw)
    assert not again.from_cache and "differs from its checksum" in caplog.text
    assert again.entries == first.entries and again.per_query == first.per_query
    # a damaged page embedding is a miss (re-encoded), never a wrong embedding
    page = next((tmp_path / "cache" / "pages").rglob("*.safetensors"))
    data = bytearray(page.read_bytes())
    data[-8:] = bytes(b ^ 0x55 for b in data[-8:])
    page.write_bytes(bytes(data))
    assert PageStore(page.parents[1]).get(page.stem) is None and not page.exists()
