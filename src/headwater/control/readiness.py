"""Whether the collector may accept writes, and if not, why (shown on /ready)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from headwater.log import EventLog

DISK_CHECK_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry_after_seconds: int


class Readiness:
    """Answers `refusal()` cheaply on every request; the disk is looked at once a second."""

    def __init__(self, log: EventLog, data_dir: Path, min_free_bytes: int, max_pending_messages: int) -> None:
        self.log = log
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.max_pending_messages = max_pending_messages
        self._disk_checked_at = 0.0
        self._disk_refusal: Refusal | None = None
        self._write_refusal: Refusal | None = None
        self._write_refused_until = 0.0

    def refusal(self) -> Refusal | None:
        now = time.monotonic()
        if now - self._disk_checked_at >= DISK_CHECK_EVERY_SECONDS:
            self._disk_checked_at = now
            self._disk_refusal = self._check_disk()
        if self._disk_refusal is not None:
            return self._disk_refusal
        if self._write_refusal is not None and now < self._write_refused_until:
            return self._write_refusal
        if self.log.pending_messages() > self.max_pending_messages:
            return Refusal(
                "log_busy",
                f"over {self.max_pending_messages} messages are waiting for the log; retry shortly",
                1,
            )
        return None

    def write_failed(self, reason: str) -> None:
        """Refuse writes for a moment after the log failed one; then let requests try again."""
        refusal = Refusal("log_unavailable", reason, 2)
        self._write_refusal = refusal
        self._write_refused_until = time.monotonic() + refusal.retry_after_seconds

    def _check_disk(self) -> Refusal | None:
        try:
            free = shutil.disk_usage(self.data_dir).free
        except OSError as error:
            return Refusal("disk_unavailable", f"cannot read {self.data_dir}: {error}", 5)
        if free < self.min_free_bytes:
            return Refusal(
                "disk_full",
                f"only {free // 1_000_000} MB free under {self.data_dir}; the log needs at least"
                f" {self.min_free_bytes // 1_000_000} MB (log.min_free_disk)",
                5,
            )
        return None
