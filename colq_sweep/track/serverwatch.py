"""While a point works, a tracking server that stops answering is said on the console within `INTERVAL_S` +
`TIMEOUT_S` seconds, instead of at the point's next MLflow call (which can be the end of an hour of quantization).

The work goes on: a stage does not need the server until it records its result, what it builds or evaluates is kept
in outputs/ (artifacts, result and page caches), and a rerun against the restarted server reuses it. When the server
answers again, that is said too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request

log = logging.getLogger("colq_sweep.track")

INTERVAL_S = float(os.environ.get("COLQ_SERVER_WATCH_INTERVAL_S") or 15.0)  # how often /health is asked
TIMEOUT_S = 5.0


def answers(uri: str, timeout: float = TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


class ServerWatch:
    """A daemon thread asking `<uri>/health` every `interval` seconds (a no-op for a non-http store)."""

    def __init__(self, uri: str, who: str, interval: float = INTERVAL_S):
        self.uri, self.who, self.interval = uri, who, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_at: float | None = None

    def __enter__(self) -> ServerWatch:
        if self.uri.startswith(("http://", "https://")):
            self._thread = threading.Thread(target=self._run, name="colq-server-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_S + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ok = answers(self.uri)
            if not ok and self.lost_at is None:
                self.lost_at = time.time()
                log.warning("%s | the tracking server %s does not answer; the point goes on, what it builds stays in "
                            "outputs/ and a rerun reuses it", self.who, self.uri)  # fmt: skip
            elif ok and self.lost_at is not None:
                log.warning("%s | the tracking server %s answers again (it was gone for %.0f s)", self.who, self.uri,
                            time.time() - self.lost_at)  # fmt: skip
                self.lost_at = None
