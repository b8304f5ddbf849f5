"""Progress a person can follow: a tqdm bar on a terminal; elsewhere (logs, CI, a scheduler's output
file) one line per milestone with the elapsed time and an estimate of the rest. Jobs that run side
by side (the demo's workers) name themselves in every line they log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

log = logging.getLogger("npo")
_QUIET = {"on": False}


class _Context(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"[{self.text}] {record.msg}"
        return True


def set_log_context(text: str, quiet_progress: bool = False) -> None:
    """Prefix every npo log line of this process with `[text]` (e.g. "seed 0 npo_rt"); with
    `quiet_progress` no bars or progress lines (the caller reports progress for the whole job)."""
    for f in [f for f in log.filters if isinstance(f, _Context)]:
        log.removeFilter(f)
    if text:
        log.addFilter(_Context(text))
    _QUIET["on"] = quiet_progress


@contextlib.contextmanager
def quiet():
    """No bars or progress lines inside (the training hook's evaluations: the epoch line says enough)."""
    before, _QUIET["on"] = _QUIET["on"], True
    try:
        yield
    finally:
        _QUIET["on"] = before


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Lines:
    """tqdm's interface, printing a line every `every` units (and at the end) instead of a bar."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: int | None = None, unit: str = ""):
        self.total, self.desc, self.n, self.every, self.unit = total, desc, initial, every, unit
        self.start, self.first, self.postfix = time.time(), initial, ""

    def update(self, k: int = 1) -> None:
        self.n += k
        if (self.every and self.n % self.every == 0) or self.n >= self.total:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self) -> None:
        elapsed = time.time() - self.start
        done = self.n - self.first
        left = elapsed / done * (self.total - self.n) if done else float("nan")
        milestone = f" ({self.unit} {self.n // self.every} of {self.total // self.every})" if self.every and self.unit else ""
        rest = f", about {duration(left)} left" if self.n < self.total and done else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log.info("%s %d of %d%s%s, %s%s", self.desc, self.n, self.total, milestone, extra, duration(elapsed), rest)

    def close(self) -> None:
        pass


class _Silent(Lines):
    def update(self, k: int = 1) -> None:
        self.n += k


def progress(total: int, desc: str, show: bool, initial: int = 0, every: int | None = None, unit: str = ""):
    """A tqdm bar on a terminal for the main process; elsewhere a line every `every` units and at the
    end (when `every` is None: at the end only); nothing on other ranks or in quiet workers."""
    if not show or _QUIET["on"]:
        return _Silent(total, desc, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
    return Lines(total, desc, initial, every, unit)
