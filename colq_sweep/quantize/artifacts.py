"""The on-disk artifact cache: `<models_dir>/<key>/` holds a complete quantized checkpoint or nothing.

An artifact is built in a hidden temporary sibling directory, gets a `manifest.json` (inputs, calibration
samples used, versions, timing, peak memory, every file with size and sha256) and is then renamed into place,
so a directory named `<key>` with a valid manifest is complete. Anything else (leftover temp dirs, a `<key>` dir
without a valid manifest or with a file of the wrong size) is never used and is removed. Builds of one key are
serialised by an advisory lock (`<models_dir>/.locks/<key>.lock`), so concurrent sweep jobs neither build the
same artifact twice nor delete each other's work in progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from colq_sweep.fsio import atomic_write_text, file_lock, file_sha256, remove
from colq_sweep.keys import ARTIFACT_SCHEMA, KEY_LEN, KEY_RE

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CALIB_FILE = "calibration.jsonl"
PAGES_FILE = "calibration_samples.jsonl"  # page calibration: every sample, in auto-round's order (quantize/pages.py)

PROVENANCE_FILES = (MANIFEST, CALIB_FILE, PAGES_FILE)  # artifact files that are not part of the HF checkpoint
TMP_RE = re.compile(rf"^\.(?P<key>[0-9a-f]{{{KEY_LEN}}})\.tmp-")


@dataclass
class QuantArtifact:
    key: str
    path: Path  # the checkpoint directory, loadable with load_quantized / ColQwen3Processor.from_checkpoint
    manifest: dict
    reused: bool


@contextlib.contextmanager
def key_lock(models_dir: Path, key: str, blocking: bool = True):
    """Advisory exclusive lock per key; yields False when non-blocking and someone else holds it."""
    with file_lock(Path(models_dir) / ".locks" / f"{key}.lock", blocking=blocking) as got:
        yield got


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(directory: Path, manifest: dict) -> None:
    """The manifest goes in last and atomically (fsynced): its presence means every listed file is complete."""
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str), fsync=True)


def file_table(directory: Path) -> dict[str, dict]:
    """Every file of an artifact but the manifest, with its size and sha256 (what the manifest records)."""
    return {
        f.name: {"size": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != MANIFEST
    }


def stamp_path(path: Path) -> Path:
    """`<models_dir>/.verified/<key>.json`: outside the artifact, so its files stay exactly the manifest's."""
    return path.parent / ".verified" / f"{path.name}.json"


def _stat(f: Path) -> list[int]:
    st = f.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_stamp(path: Path) -> None:
    """Record that the artifact's files (as they are now: size, mtime, inode) match its manifest's sha256s."""
    manifest_file = path / MANIFEST
    files = (read_manifest(path) or {}).get("files", {})
    stamp = {"manifest_sha256": file_sha256(manifest_file), "files": {n: _stat(path / n) for n in files}}
    atomic_write_text(stamp_path(path), json.dumps(stamp, sort_keys=True))


def verify_artifact(path: str | os.PathLike, check_hashes: bool = False) -> tuple[bool, str]:
    """(complete?, why not): a valid manifest whose every file exists with the recorded size, and with
    `check_hashes` the recorded sha256. A file is hashed only when it changed (size, mtime or inode) since the
    last verification stamp, so a reused 8 GB artifact costs a few stats, not a re-read."""
    path = Path(path)
    ok, why = _verify(path, check_hashes)
    if check_hashes and ok:
        write_stamp(path)
    return ok, why


def _verify(path: Path, check_hashes: bool) -> tuple[bool, str]:
    if not path.is_dir():
        return False, "not a directory"
    manifest = read_manifest(path)
    if manifest is None:
        return False, "no readable manifest.json"
    if manifest.get("schema") != ARTIFACT_SCHEMA:
        return False, f"manifest schema {manifest.get('schema')!r} != {ARTIFACT_SCHEMA}"
    if manifest.get("key") != path.name:
        return False, f"manifest key {manifest.get('key')!r} != directory name"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False, "manifest lists no files"
    stamp: dict = {}
    if check_hashes:
        with contextlib.suppress(OSError, ValueError):
            stamp = json.loads(stamp_path(path).read_text())
        if stamp.get("manifest_sha256") != file_sha256(path / MANIFEST):
            stamp = {}  # the manifest itself changed: every file is hashed again
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return False, f"{name} missing"
        if f.stat().st_size != meta.get("size"):
            return False, f"{name} has {f.stat().st_size} bytes, manifest says {meta.get('size')}"
        if check_hashes and stamp.get("files", {}).get(name) != _stat(f) and file_sha256(f) != meta.get("sha256"):
            return False, f"{name} sha256 differs from the manifest"
    return True, ""


def clean_incomplete(models_dir: str | os.PathLike) -> list[Path]:
    """Remove leftover temp dirs and `<key>` dirs without a valid manifest; return what was removed.

    Entries whose key is locked by a live build (another process) are left alone; names that are not ours
    (not a 20-hex key or a `.<key>.tmp-*` dir) are never touched."""
    models_dir = Path(models_dir)
    removed: list[Path] = []
    if not models_dir.is_dir():
        return removed
    for entry in sorted(models_dir.iterdir()):
        m = TMP_RE.match(entry.name)
        if m:
            key = m["key"]
        elif KEY_RE.match(entry.name) and entry.is_dir():
            key = entry.name
        else:
            continue
        with key_lock(models_dir, key, blocking=False) as got:
            if not got:
                log.info("leaving %s alone: its key is being built by another process", entry)
                continue
            if not m:
                ok, why = verify_artifact(entry)
                if ok:
                    continue
                log.warning("removing incomplete artifact %s (%s)", entry, why)
            else:
                log.warning("removing leftover temporary artifact %s", entry)
            remove(entry)
            stamp_path(entry).unlink(missing_ok=True)
            removed.append(entry)
    return removed


def clean_key(models_dir: Path, key: str) -> None:
    """With the key's lock held: drop its leftover temp dirs."""
    for entry in models_dir.glob(f".{key}.tmp-*"):
        log.warning("removing leftover temporary artifact %s", entry)
        remove(entry)
