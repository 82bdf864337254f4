"""Task-level sharding of one evaluation over GPU slots that would otherwise idle (the gpu-pool launcher's
`share_idle`): a board of claims on disk that the evaluating point and helper processes share.

A point that starts evaluating a checkpoint on more than one task opens a board,
`<outputs>/shards/<digest of mteb name@revision>/`, holding
* `offer.json`: what a helper needs to evaluate the same checkpoint (the job's resolved config, which evaluation,
  the quantized artifact, the owner's pid, the sweep) and the tasks with their sizes;
* `claims/<Task>.json`: created with O_EXCL by whoever evaluates that task (owner or helper, pid and slot inside),
  so no task is ever evaluated twice while its claimer lives;
* `done/<Task>`: written once the task's result files are complete (mteb's result cache layout, shared);
* `stats/<who>.json`: a helper's encoding counters, added to the point's timing.
Both sides take the largest unclaimed task first (longest-processing-time order, which bounds the makespan). The
owner then waits for the tasks helpers hold (taking one over if its helper died) and reads every task back from the
result cache in the spec's order, so the point's entries, per-query scores and mteb files are those of an unsharded
evaluation: the same code on the same kind of device wrote them. Sharding changes only when a task runs and where:
it is in no key. The launcher removes nothing; the owner removes the board when it has read everything back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from colq_sweep.fsio import atomic_write_text

log = logging.getLogger(__name__)

ENV = "COLQ_SWEEP_SHARDS"  # set by the gpu-pool launcher (share_idle): the point may open a board
SLOT_ENV = "COLQ_SWEEP_SLOT"
WAIT_ENV = "COLQ_SWEEP_TEST_SHARD_WAIT_S"  # a testing aid: the owner waits up to this long for a helper's first claim
OWNER = "owner"


def board_dir(outputs_dir: str | os.PathLike, model_name: str, revision: str) -> Path:
    digest = hashlib.sha256(f"{model_name}@{revision}".encode()).hexdigest()[:16]
    return Path(outputs_dir) / "shards" / digest


def sharing_enabled() -> bool:
    return os.environ.get(ENV) == "1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass(frozen=True)
class Offer:
    """What an owner offers helpers: enough to rebuild the same evaluation from the job's resolved config."""

    outputs_dir: str
    sweep_id: str
    config_yaml: str
    evaluation: str = "point"  # point | baseline: which of the config's evaluations
    artifact: str | None = None  # the quantized checkpoint a point's evaluation loads

    def of(self, evaluation: str, artifact: str | None = None) -> Offer:
        return replace(self, evaluation=evaluation, artifact=artifact)

    def open(self, model_name: str, revision: str, tasks: dict[str, int]) -> Board:
        body = {**asdict(self), "model_name": model_name, "revision": revision}
        return Board.open(board_dir(self.outputs_dir, model_name, revision), body, tasks)


class Board:
    """One evaluation's claims; `who` is `owner` or `helper-<slot>-<pid>`."""

    def __init__(self, root: Path, who: str):
        self.root = Path(root)
        self.who = who
        self.claimed: list[str] = []  # what this process claimed, in order

    # -- the owner's side -------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, offer: dict, tasks: dict[str, int]) -> Board:
        """A fresh board for an evaluation about to start (an old one of a dead owner is cleared first)."""
        root = Path(root)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        for sub in ("claims", "done", "stats"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "offer.json", json.dumps({**offer, "owner_pid": os.getpid(), "tasks": tasks}, indent=1))
        return cls(root, OWNER)

    def wait_for_helper(self, seconds: float) -> None:
        """Testing aid (WAIT_ENV): hold the first claim until a helper has made one, or `seconds` passed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not any(c["who"] != OWNER for c in self.claims().values()):
            time.sleep(0.1)

    def wait_done(self, task: str, poll_s: float = 0.2) -> bool:
        """Block until `task`, claimed by another process, is done (True); if its claimer died first, the claim
        becomes this process's (False: evaluate it here)."""
        while not (self.root / "done" / task).exists():
            claim = self.claims().get(task)
            if claim is None or not _alive(int(claim["pid"])):
                log.warning("%s: its helper (%s) is gone; evaluating it here", task, (claim or {}).get("who", "?"))
                self._write_claim(task, replace=True)
                return False
            time.sleep(poll_s)
        return True

    def helper_stats(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "stats").glob("*.json"))]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- both sides --------------------------------------------------------------------------------------------
    def offer(self) -> dict:
        return json.loads((self.root / "offer.json").read_text())

    def claims(self) -> dict[str, dict]:
        out = {}
        for p in (self.root / "claims").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                out[p.stem] = json.loads(p.read_text())
        return out

    def unclaimed(self) -> list[str]:
        """Unclaimed tasks, largest first."""
        tasks = self.offer()["tasks"]
        taken = self.claims()
        return [t for t in sorted(tasks, key=lambda t: (-tasks[t], t)) if t not in taken]

    def claim(self, task: str) -> bool:
        """True when this process now holds `task` (nobody else ever will while it lives)."""
        return self._write_claim(task, replace=False)

    def _write_claim(self, task: str, replace: bool) -> bool:
        body = json.dumps({"who": self.who, "pid": os.getpid(), "slot": os.environ.get(SLOT_ENV), "t": time.time()})
        path = self.root / "claims" / f"{task}.json"
        if replace:
            atomic_write_text(path, body)
        else:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except (FileExistsError, FileNotFoundError):  # taken, or the board closed: every task was read back
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
        self.claimed.append(task)
        return True

    def finish(self, task: str) -> None:
        atomic_write_text(self.root / "done" / task, self.who)

    def save_stats(self, stats: dict) -> None:
        atomic_write_text(self.root / "stats" / f"{self.who}.json", json.dumps({"who": self.who, "claimed": self.claimed, **stats}))


def open_offers(outputs_dirs: set[str], sweep_id: str) -> list[Board]:
    """Boards of this sweep whose owner lives and that still have unclaimed tasks (what a free slot can help with)."""
    out = []
    for outputs in sorted(outputs_dirs):
        for offer in sorted(Path(outputs, "shards").glob("*/offer.json")):
            board = Board(offer.parent, "launcher")
            try:
                o = board.offer()
                if o.get("sweep_id") == sweep_id and _alive(int(o["owner_pid"])) and board.unclaimed():
                    out.append(board)
            except (OSError, ValueError, KeyError):
                continue  # a board being opened or closed right now
    return out
