"""Progress reporting that works on terminals and in log files.

On a terminal: a tqdm bar with rate and ETA on stderr. Otherwise (CI, Slurm logs): an INFO log line about
every 10% with count, rate and ETA. Library code calls :func:`progress`; it never prints.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["progress"]

log = logging.getLogger("lifebench.progress")


class _LogProgress:
    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.t0 = time.perf_counter()
        self._next = max(1, total // 10)
        self._last = self.t0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.total <= 0:  # unknown total: a line every 10 s
            if time.perf_counter() - self._last >= 10:
                self._last = time.perf_counter()
                log.info("%s: %d %s", self.desc, self.n, self.unit)
            return
        if self.n >= self._next or self.n >= self.total:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            rate = self.n / dt
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d %s (%.1f %s/s, ETA %.0f s)", self.desc, self.n, self.total, self.unit, rate,
                     self.unit, eta)
            self._next = self.n + max(1, self.total // 10)

    def close(self) -> None:
        pass

    def __enter__(self) -> _LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """Return a context-managed progress object with ``update(k)``: tqdm on a TTY, log lines otherwise."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    return _LogProgress(total, desc, unit)
