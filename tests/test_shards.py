"""The shard board's bookkeeping (evaluate/shards.py): exclusive claims across processes, largest task first, a dead
helper's task taken back, offers only from this sweep's living owners. The sharded evaluation itself, end to end on
two CPU slots with identical scores, is tests/test_realpath.py::test_real_presets_offline_end_to_end."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys

from colq_sweep.evaluate.shards import OWNER, Board, Offer, board_dir, open_offers

TASKS = {"A": 10, "B": 30, "C": 20, "D": 30}


def _claim_all(root: str, who: str, out) -> None:
    board = Board(root, who)
    out.put((who, [t for t in board.unclaimed() if board.claim(t)]))


def test_claims_are_exclusive_across_processes_and_largest_first(tmp_path):
    board = Offer(str(tmp_path), "sweep-1", "x: 1").open("org/m", "rev", TASKS)
    assert board.root == board_dir(tmp_path, "org/m", "rev") and board.offer()["owner_pid"] == os.getpid()
    assert board.unclaimed() == ["B", "D", "C", "A"]  # size descending, then name
    ctx, q = mp.get_context("spawn"), mp.get_context("spawn").Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(board.root), f"helper-{i}", q)) for i in range(4)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    flat = [t for g in got.values() for t in g]
    assert sorted(flat) == sorted(TASKS)  # every task once, no overlap
    assert {t: c["who"] for t, c in board.claims().items()} == {t: who for who, g in got.items() for t in g}
    assert board.unclaimed() == [] and not board.claim("A")


def test_a_dead_helpers_task_goes_back_to_the_owner(tmp_path):
    board = Offer(str(tmp_path), "s", "x: 1").open("m", "r", {"A": 1, "B": 1})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (board.root / "claims" / "A.json").write_text(json.dumps({"who": "helper-1-x", "pid": int(dead.stdout)}))
    assert board.wait_done("A", poll_s=0.01) is False  # its claimer is gone: the owner evaluates it
    assert board.claims()["A"]["who"] == OWNER and board.claimed == ["A"]
    (board.root / "claims" / "B.json").write_text(json.dumps({"who": "helper-2-y", "pid": os.getpid()}))
    Board(board.root, "helper-2-y").finish("B")
    assert board.wait_done("B", poll_s=0.01) is True  # done by its helper: read back from the result cache


def test_offers_are_this_sweeps_with_living_owners_and_work_left(tmp_path):
    mine = Offer(str(tmp_path), "sweep-1", "x: 1").open("m", "r1", {"A": 1})
    Offer(str(tmp_path), "sweep-2", "x: 1").open("m", "r2", {"A": 1})  # another sweep's
    assert [b.root for b in open_offers({str(tmp_path)}, "sweep-1")] == [mine.root]
    mine.claim("A")
    assert open_offers({str(tmp_path)}, "sweep-1") == []  # nothing left to help with
    orphan = Offer(str(tmp_path), "sweep-1", "x: 1").open("m", "r3", {"A": 1})
    offer = json.loads((orphan.root / "offer.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (orphan.root / "offer.json").write_text(json.dumps({**offer, "owner_pid": int(dead.stdout)}))
    assert open_offers({str(tmp_path)}, "sweep-1") == []  # its owner died: nobody would read the work back
    mine.close()
    assert not mine.root.exists() and not mine.claim("A")  # a closed board takes no claims and is not recreated
    assert not mine.root.exists()
