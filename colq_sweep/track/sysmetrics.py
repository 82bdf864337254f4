"""System metrics on a point's run while it works: CPU and RAM (psutil), GPU utilisation and memory (pynvml,
`nvidia-ml-py`), disk and network, as MLflow's `system/...` metrics.

MLflow's `SystemMetricsMonitor` attaches to a run id (it needs no `mlflow.start_run`); its metric collectors and
names are used as they are, but it publishes through our `Tracker` so that a sqlite store's writes stay under
the store's cross-process lock. `system_metrics=auto` (the default) turns it on for CUDA runs; `true` / `false`
force it. MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds, default here 10) and
MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING are honoured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from colq_sweep.track.store import Tracker

log = logging.getLogger(__name__)
SAMPLING_INTERVAL_S = 10.0


def wanted(setting: str, device: str) -> bool:
    return setting == "true" or (setting == "auto" and str(device).startswith("cuda"))


class _Off:
    def finish(self) -> None:
        pass


def start(setting: str, device: str, tracker: Tracker, run_id: str):
    """A started monitor of `run_id` (call `.finish()` before closing the run), or a no-op when off."""
    if not wanted(setting, device):
        return _Off()
    try:
        monitor = _monitor_class()(tracker, run_id)
    except ImportError as exc:  # psutil missing (or pynvml for GPUs: MLflow then logs CPU metrics only)
        log.warning("system metrics are off: %s (pip install psutil nvidia-ml-py)", exc)
        return _Off()
    monitor.start()
    return monitor


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class TrackerMonitor(SystemMetricsMonitor):
        """MLflow's monitor, publishing each aggregate through the Tracker (under a sqlite store's lock), and
        publishing what it sampled since the last publication when it is stopped."""

        def __init__(self, tracker: Tracker, run_id: str):
            super().__init__(run_id, sampling_interval=SAMPLING_INTERVAL_S, tracking_uri=tracker.uri)
            self.tracker = tracker

        def monitor(self) -> None:
            try:
                while not self._shutdown_event.is_set():
                    for _ in range(self.samples_before_logging):
                        self.collect_metrics()
                        if self._shutdown_event.wait(self.sampling_interval):
                            break
                    self.publish_metrics(self.aggregate_metrics())
            except Exception as exc:  # noqa: BLE001 - metrics must never fail a point
                log.warning("system metrics of run %s stopped: %s", self._run_id, exc)

        def publish_metrics(self, metrics: dict) -> None:
            if not metrics:
                return
            prefix = self._metrics_prefix + (self.node_id + "/" if self.node_id else "")
            self.tracker.log(self._run_id, metrics={prefix + k: v for k, v in metrics.items()}, step=self._logging_step)
            self._logging_step += 1
            for m in self.monitors:
                m.clear_metrics()

        def finish(self) -> None:
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join(timeout=60)
            self._process = None

    return TrackerMonitor
