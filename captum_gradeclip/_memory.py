"""Peak resident memory of a block of code (CPU), for the benchmarks.

``ru_maxrss`` is a whole-process maximum (imports and model loading included), so instead a
thread samples ``/proc/self/statm`` every millisecond while the block runs.
"""

from __future__ import annotations

import os
import threading
import time


def rss_mb() -> float:
    """The process' resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.base_mb``, ``m.peak_mb`` and ``m.extra_mb``
    (peak above the resident memory at entry)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.base_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.base_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def extra_mb(self) -> float:
        """Peak resident memory above the memory at entry, in MiB."""
        return self.peak_mb - self.base_mb
