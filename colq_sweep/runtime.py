"""The process the work runs in: device resolution, peak memory of a stage, garbage-collector and environment
guards, what is installed and what the CPU can do. One place each, so every stage agrees."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# CPU features that make ark's `auto` compute mode quantize activations to int8 (the most capable first)
_INT8_ISA_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


def resolve_device(device: str) -> str:
    """`auto` -> `cuda:0` if available else `cpu`; `cuda` -> `cuda:0`."""
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


class PeakMemory:
    """Peak CPU RSS (Linux: VmHWM after resetting it via /proc/self/clear_refs) and CUDA max allocated."""

    def __init__(self, device: str):
        self.device = device
        self.reset_ok = False

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS high-water mark
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        self.peak_rss, self.method = None, None
        if self.reset_ok:
            with contextlib.suppress(OSError, ValueError):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss, self.method = int(line.split()[1]) * 1024, "VmHWM since reset"
        if self.peak_rss is None:
            try:
                import resource

                scale = 1 if sys.platform == "darwin" else 1024
                self.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
                self.method = "ru_maxrss (process lifetime)"
            except ImportError:  # pragma: no cover
                import psutil

                self.peak_rss, self.method = psutil.Process().memory_info().rss, "psutil rss at end"
        self.peak_cuda = None
        if self.device.startswith("cuda"):
            import torch

            self.peak_cuda = int(torch.cuda.max_memory_allocated(self.device))
        return False


@contextlib.contextmanager
def gc_frozen():
    """Move every object alive now out of the garbage collector's reach for the duration.

    auto-round calls `gc.collect()` after every block and layer; with torch + transformers + datasets imported
    each call walks ~10^6 long-lived objects (0.7 s each on 2 CPU cores: 85% of a tiny quantization). Objects
    created inside the block (the model, auto-round's state) are still collected normally. Skipped if the caller
    froze objects itself (unfreezing would undo that)."""
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def env(**values: str):
    """Set environment variables for the duration of the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_int8_isa() -> str:
    """The CPU's strongest int8 matmul feature (`amx_int8`, `avx512_vnni`, `avx_vnni`) or `none`."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return next((f for f in _INT8_ISA_FLAGS if f in flags), "none")


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), so a reused pid is not mistaken for the
    process that owned a run; None when there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def process_alive(pid: int, started: str | None = None) -> bool:
    """Is `pid` running here (and, if `started` is given, still the same process)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or process_start(pid) in (None, started)
