"""What verified reuse costs: `verify_artifact(check_hashes=True)` on an artifact of a given size, the first time
(every file hashed, then a stamp written) and afterwards (stamp matches: a stat per file, the manifest hashed).

    python bench/verify_cost.py --gb 8 [--dir outputs/bench] [--json out.json]

Writes `--gb` GB of random bytes as 2 GB shards + a config.json and a manifest in the artifact format, times both
checks (median of `--repeat`), prints a table and writes JSON. The files are removed afterwards."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from colq_sweep.keys import ARTIFACT_SCHEMA
from colq_sweep.quantize.artifacts import MANIFEST, file_table, stamp_path, verify_artifact, write_manifest

SHARD = 2 * 10**9


def build(root: Path, nbytes: int) -> Path:
    art = root / ("ab" * 10)  # a 20-hex key
    art.mkdir(parents=True)
    (art / "config.json").write_text("{}")
    left, i = nbytes, 0
    block = os.urandom(64 * 2**20)
    while left > 0:
        size = min(SHARD, left)
        with open(art / f"model-{i:05d}.safetensors", "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
            f.write(block[: size % len(block)])
        left, i = left - size, i + 1
    write_manifest(art, {"schema": ARTIFACT_SCHEMA, "key": art.name, "files": file_table(art)})
    return art


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=8.0)
    ap.add_argument("--dir", default="outputs/bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(args.dir) / "verify_cost"
    shutil.rmtree(root, ignore_errors=True)
    try:
        art = build(root, int(args.gb * 1e9))
        cold, warm = [], []
        for _ in range(args.repeat):
            stamp_path(art).unlink(missing_ok=True)
            os.system("sync")
            t0 = time.perf_counter()
            ok, why = verify_artifact(art, check_hashes=True)
            cold.append(time.perf_counter() - t0)
            assert ok, why
            t0 = time.perf_counter()
            ok, why = verify_artifact(art, check_hashes=True)
            warm.append(time.perf_counter() - t0)
            assert ok, why
        files = len(json.loads((art / MANIFEST).read_text())["files"])
        result = {"gb": args.gb, "files": files, "first_check_s": statistics.median(cold),
                  "stamped_check_s": statistics.median(warm), "cpu_count": os.cpu_count()}  # fmt: skip
        print(f"{'artifact':>10} {'files':>6} {'first check (hash all)':>24} {'later checks (stamp)':>22}")
        print(f"{args.gb:>8.1f}GB {files:>6} {result['first_check_s']:>22.2f} s {result['stamped_check_s'] * 1e3:>19.2f} ms")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
