"""Logging as Triton's flags and its logging extension set it: which levels are written (``--log-info``,
``--log-warning``, ``--log-error``, ``--log-verbose``), how (``--log-format default|ISO8601``, plus Kiln's
``json``: one object a line) and where (``--log-file``, else stderr); ``GET/POST /v2/logging`` and gRPC
``LogSettings`` read and change them while the server runs. At ``--log-verbose 1`` each inference request is
logged by the transport that served it (``kiln.access``: model, version, status, duration, client)."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import orjson

from kiln.errors import InvalidArgumentError

FORMATS = ("default", "ISO8601", "json")
ACCESS = logging.getLogger("kiln.access")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LogSettings:
    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"


class _Levels(logging.Filter):
    def __init__(self, control: LogControl) -> None:
        super().__init__()
        self.control = control

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.control.settings
        if record.levelno >= logging.ERROR:
            return s.log_error
        if record.levelno >= logging.WARNING:
            return s.log_warning
        if record.levelno >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0


class _Iso8601(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return (
            dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z")
        )


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class LogControl:
    """The process's logging, configured from :class:`LogSettings` and changed at run time through
    :meth:`update` (the logging extension)."""

    def __init__(self, settings: LogSettings) -> None:
        _check(settings)
        self.settings = settings
        self._handler: logging.Handler | None = None
        self._apply(reopen=True)

    def _apply(self, reopen: bool = False) -> None:
        root = logging.getLogger()
        if reopen or self._handler is None:
            handler: logging.Handler = (
                logging.FileHandler(self.settings.log_file, encoding="utf-8")
                if self.settings.log_file
                else logging.StreamHandler(sys.stderr)
            )
            handler.addFilter(_Levels(self))
            for old in list(root.handlers):
                root.removeHandler(old)
                if old is self._handler:
                    old.close()
            root.addHandler(handler)
            self._handler = handler
        fmt = self.settings.log_format
        self._handler.setFormatter(
            _Json() if fmt == "json" else _Iso8601(_TEXT) if fmt == "ISO8601" else logging.Formatter(_TEXT)
        )
        root.setLevel(logging.DEBUG if self.settings.log_verbose_level > 0 else logging.INFO)

    def as_dict(self) -> dict[str, object]:
        return asdict(self.settings)

    def update(self, changes: Mapping[str, object]) -> dict[str, object]:
        """The logging extension's update: any of the settings; returns them all."""
        known = set(asdict(self.settings))
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown log setting(s) {unknown}; the settings are {sorted(known)}")
        new = replace(self.settings, **changes)  # type: ignore[arg-type]
        _check(new)
        if new.log_file != self.settings.log_file:
            raise InvalidArgumentError(
                "log_file can only be set when the server starts (--log-file): a request must not choose where "
                "the server writes"
            )
        self.settings = new
        self._apply()
        return self.as_dict()

    def close(self) -> None:
        if self._handler is not None and self.settings.log_file:
            self._handler.close()


def _check(s: LogSettings) -> None:
    for key in ("log_info", "log_warning", "log_error"):
        if not isinstance(getattr(s, key), bool):
            raise InvalidArgumentError(f"log setting '{key}' must be true or false")
    if (
        isinstance(s.log_verbose_level, bool)
        or not isinstance(s.log_verbose_level, int)
        or s.log_verbose_level < 0
    ):
        raise InvalidArgumentError("log setting 'log_verbose_level' must be an integer >= 0")
    if s.log_format not in FORMATS:
        raise InvalidArgumentError(f"log setting 'log_format' must be one of {', '.join(FORMATS)}")
    if not isinstance(s.log_file, str):
        raise InvalidArgumentError("log setting 'log_file' must be a string")


def access(transport: str, model: str, version: str, status: object, duration_ns: int, client: str) -> None:
    """One inference request, at --log-verbose 1 and above."""
    if ACCESS.isEnabledFor(logging.DEBUG):
        ACCESS.debug(
            "%s infer model=%s version=%s status=%s duration_ms=%.3f client=%s",
            transport, model, version or "-", status, duration_ns / 1e6, client or "-",
        )  # fmt: skip
