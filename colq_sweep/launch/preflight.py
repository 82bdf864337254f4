"""What can be known before anything is launched beyond the config's own values: the machine and the inputs.

`config.validate` checks values; `preflight` checks them against the world, still in seconds and before any job
starts (the sweeper runs it for every job; a single run runs it before its point):
- a CUDA device asked for where none is visible (only when the jobs run on this host: a Slurm sweep is
  submitted from a login node, and its jobs check their own node);
- a local calibration .jsonl with fewer usable texts than `nsamples` at that `seqlen` (counted the way auto-round
  counts them, with the checkpoint's tokenizer), unless `quant.allow_fewer_samples=true`;
and, before Hydra creates any folder (cli.py runs these on the command line's values), where results go:
- `outputs_dir` (and a sqlite store's folder) can be created and written;
- an http(s) tracking URI answers MLflow's REST API within seconds (one request, no retries).
Each problem is a `ConfigError`: one line naming the field and the fix, exit 2, nothing launched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from colq_sweep.config import ConfigError, SweepPoint

log = logging.getLogger(__name__)

_CALIB_COUNTS: dict[tuple, tuple[int, str]] = {}


def preflight(point: SweepPoint, jobs_run_here: bool = True) -> None:
    if jobs_run_here:
        check_device(point.device)
    check_pixels(point, jobs_run_here)
    q = point.quant
    calib = point.calib
    if q.needs_calibration and calib.has_images:
        check_page_room(point)
    if q.needs_calibration and calib.reads_text and calib.source == "jsonl" and not getattr(q, "allow_fewer_samples", False):
        check_calibration_count(point)


def check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("device", device, "no CUDA device is visible on this machine; use device=cpu (or auto)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError("device", device, f"only {torch.cuda.device_count()} CUDA device(s) are visible here")


def check_pixels(point: SweepPoint, jobs_run_here: bool) -> None:
    """eval.preprocess_device=cuda computes pixels next to the forward: the evaluation must run on CUDA."""
    if point.eval.encoder.preprocess_device != "cuda":
        return
    from colq_sweep.runtime import resolve_device

    device = resolve_device(point.device) if jobs_run_here else point.device
    if device == "cpu" or (jobs_run_here and not device.startswith("cuda")):
        raise ConfigError("eval.preprocess_device", "cuda", f"the evaluation runs on {device} (device={point.device}): "
                          "use eval.preprocess_device=auto, pil or cpu, or device=cuda on a GPU machine")


def _tokenizer_dir(point: SweepPoint) -> Path | None:
    """The checkpoint folder whose tokenizer counts the samples, if it is here without a download."""
    if point.model.path:
        return Path(point.model.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(point.model.id, revision=point.model.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached yet: the run itself will fetch it (and count then)
        return None


def _tokenizer(tok_dir: Path):
    from transformers import AutoTokenizer

    quiet = logging.getLogger("transformers")
    level, quiet.level = quiet.level, logging.ERROR  # its config-type notice is noise before a one-line error
    try:
        return AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    finally:
        quiet.setLevel(level)


def check_page_room(point: SweepPoint) -> None:
    """Page calibration caps a page at seqlen minus its prompt's tokens: a seqlen below that leaves no page."""
    tok_dir = _tokenizer_dir(point)
    if tok_dir is None:
        return
    from colq_sweep.quantize.pages import prompt_tokens

    prompt = prompt_tokens(_tokenizer(tok_dir))
    seqlen = point.quant.seqlen
    if seqlen <= prompt:
        raise ConfigError("seqlen", seqlen, f"page calibration fits a page into seqlen after its {prompt}-token prompt; "
                          f"use seqlen > {prompt} (a page then has up to seqlen - {prompt} visual tokens)")  # fmt: skip


def check_calibration_count(point: SweepPoint) -> None:
    """Count the usable samples of a local calibration file exactly as the quantize stage will select them."""
    from colq_sweep.fsio import file_sha256

    tok_dir = _tokenizer_dir(point)
    if tok_dir is None:
        log.info("preflight: %s is not cached; calibration counted when the point runs", point.model.id)
        return
    q = point.quant
    nsamples = point.calib.counts(q.nsamples)[2]  # the text rows (all of them, unless pages are mixed in)
    key = (file_sha256(point.calib.path), str(tok_dir.resolve()), point.calib.text_field, q.seqlen, nsamples,
           point.seed)  # fmt: skip
    if key not in _CALIB_COUNTS:
        from colq_sweep.quantize import calibration
        from colq_sweep.quantize.errors import CalibrationError

        tokenizer = _tokenizer(tok_dir)
        try:
            texts = calibration.load_texts(point.calib)
        except CalibrationError as err:
            raise ConfigError("calib.path", point.calib.path, str(err)) from err
        sel = calibration.select_samples(texts, tokenizer, seqlen=q.seqlen, nsamples=nsamples, seed=point.seed,
                                         source=point.calib.source)
        why = (f"{sel.dropped_short} of {sel.candidates_total} texts are shorter than seqlen={q.seqlen} tokens, "
               f"{sel.dropped_repetitive} repetitive")  # fmt: skip
        _CALIB_COUNTS[key] = (sel.used, why)
    used, why = _CALIB_COUNTS[key]
    if used < nsamples:
        raise ConfigError(
            "calib.path", point.calib.path,
            f"only {used} usable calibration samples for "
            f"{f'nsamples={nsamples}' if nsamples == q.nsamples else f'the {nsamples} text rows of nsamples={q.nsamples}'} "
            f"({why}); lower nsamples or "
            "seqlen, give more or longer texts, or set quant.allow_fewer_samples=true",
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------- where results go

TRACKING_TIMEOUT_S = 5.0
START_SERVER = ("start one, e.g. `mlflow server --backend-store-uri sqlite:///$HOME/mlflow.db --artifacts-destination "
                "$HOME/mlartifacts --serve-artifacts --host 127.0.0.1 --port 5000`, or leave tracking_uri unset for the "
                "sqlite store under outputs_dir")  # fmt: skip


def check_writable(field_name: str, folder: str) -> None:
    """`folder` can be created and written: else one ConfigError line. A probe file is written and removed, and the
    folders made for it are removed again, so the check leaves nothing behind."""
    import os
    import uuid

    path = Path(folder).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".colq-write-check-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
        for p in made:  # deepest first
            p.rmdir()
    except OSError as err:
        raise ConfigError(field_name, folder, f"cannot be created or written ({err.strerror or err}); choose a folder "
                                              "this user can write") from None  # fmt: skip


def check_tracking_server(field_name: str, uri: str, timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An http(s) tracking URI answers MLflow's REST API within `timeout` seconds (one request, no retries)."""
    import json
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read(1 << 16)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # an MLflow behind authentication: the client brings its own credentials
            return
        raise ConfigError(field_name, uri, f"answered HTTP {err.code} to MLflow's REST API (GET {url}): not an MLflow "
                                           f"tracking server; {START_SERVER}") from None  # fmt: skip
    except (urllib.error.URLError, OSError) as err:
        why = getattr(err, "reason", err)
        why = f"no answer within {timeout:.0f} s" if isinstance(why, TimeoutError) or "timed out" in str(why) else str(why)
        raise ConfigError(field_name, uri, f"no MLflow server answers ({why}); {START_SERVER}") from None
    try:
        ok = isinstance(json.loads(body), dict)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(field_name, uri, f"answered GET {url} with something other than MLflow's JSON: not an MLflow "
                                           f"tracking server; {START_SERVER}")  # fmt: skip
