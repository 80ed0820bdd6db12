"""Where triton-mode traces go: Triton's trace file (one JSON list) and its indexed files (``FILE.0``, ``FILE.1``,
... one list each, written every ``log_frequency`` traces)."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("kiln.tracing")


class TraceFile:
    """One trace file path. The main file is a JSON list that stays valid after every write (Triton closes its
    list only at shutdown); indexed files count from 0 for each path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.index = 0
        self._started = False
        self._lock = threading.Lock()

    def append(self, items: list[str]) -> None:
        """Add trace records (each a serialized JSON object, or several joined by commas) to the main file."""
        if not items:
            return
        body = ",".join(items)
        with self._lock:
            try:
                if not self._started:
                    with open(self.path, "w", encoding="utf-8") as f:
                        f.write("[" + body + "]")
                    self._started = True
                    return
                with open(self.path, "r+b") as f:
                    f.seek(-1, os.SEEK_END)  # over the closing bracket
                    f.write(("," + body + "]").encode())
            except OSError as e:
                log.error("cannot write the trace file %s: %s", self.path, e)

    def write_indexed(self, items: list[str]) -> None:
        """Write ``items`` as a JSON list of their own to ``PATH.<index>``."""
        if not items:
            return
        with self._lock:
            name = f"{self.path}.{self.index}"
            self.index += 1
        try:
            with open(name, "w", encoding="utf-8") as f:
                f.write("[" + ",".join(items) + "]")
        except OSError as e:
            log.error("cannot write the trace file %s: %s", name, e)
