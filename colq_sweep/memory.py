"""Peak memory of one stage (not of the whole process): quantization and evaluation measure the same way."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


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
