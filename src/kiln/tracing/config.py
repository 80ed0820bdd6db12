"""Trace settings as Triton spells them: ``--trace-config [MODE,]SETTING=VALUE`` at startup, and the trace
extension's ``trace_level`` / ``trace_rate`` / ``trace_count`` / ``log_frequency`` / ``trace_file`` /
``trace_mode`` at run time (strings, a list of strings for the level; ``null`` clears a model's setting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from kiln.errors import InvalidArgumentError

TIMESTAMPS = "TIMESTAMPS"
LEVELS = ("OFF", TIMESTAMPS, "TENSORS")
MODES = ("triton", "opentelemetry")
FLAG = "--trace-config"
CLEAR = None  # an update's value that clears a model's own setting (it falls back to the global one)
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class TraceValues:
    """What one setting (global or one model's) says. ``level`` empty: tracing off."""

    level: tuple[str, ...] = ()
    rate: int = 1000  # 1 in ``rate`` requests is traced (Triton's default 1000)
    count: int = -1  # traces still to collect; -1 without end
    log_frequency: int = 0  # write every N traces to trace_file.<i>; 0: to trace_file, at the end
    file: str = ""


FIELDS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count",
          "log_frequency": "log_frequency", "trace_file": "file"}  # fmt: skip


@dataclass(frozen=True)
class OtelOptions:
    """``--trace-config opentelemetry,KEY=VALUE`` (Triton's keys and defaults)."""

    url: str = "http://localhost:4318/v1/traces"
    resource: tuple[tuple[str, str], ...] = (("service.name", "triton-inference-server"),)
    bsp_max_queue_size: int = 2048
    bsp_schedule_delay: int = 5000  # milliseconds
    bsp_max_export_batch_size: int = 512

    def as_strings(self) -> dict[str, str]:
        out = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name != "resource"}
        out["resource"] = ",".join(f"{k}={v}" for k, v in self.resource)
        return out


@dataclass(frozen=True)
class TraceConfig:
    """Every ``--trace-config`` value, checked."""

    values: TraceValues = field(default_factory=TraceValues)
    mode: str = "triton"
    otel: OtelOptions = field(default_factory=OtelOptions)

    @classmethod
    def parse(cls, specs: Sequence[str]) -> TraceConfig:
        values: dict[str, Any] = {}
        levels: list[str] = []
        mode = "triton"
        otel: dict[str, Any] = {}
        resource: dict[str, str] = {}
        for spec in specs:
            section, key, value = _split(spec)
            if section == "opentelemetry":
                if key == "resource":
                    name, eq, attr = value.partition("=")
                    if not eq or not name:
                        raise InvalidArgumentError(
                            f"{FLAG} {spec!r}: expected opentelemetry,resource=KEY=VALUE"
                        )
                    resource[name] = attr
                elif key == "url":
                    otel["url"] = value
                elif key in ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size"):
                    otel[key] = _int(value, f"{FLAG} {spec!r}", 1, INT32_MAX)
                else:
                    raise InvalidArgumentError(
                        f"{FLAG} {spec!r}: unknown opentelemetry setting '{key}' (known: url, resource, "
                        "bsp_max_queue_size, bsp_schedule_delay, bsp_max_export_batch_size)"
                    )
            elif key == "mode" and section == "":
                if value not in MODES:
                    raise InvalidArgumentError(f"{FLAG} {spec!r}: mode must be triton or opentelemetry")
                mode = value
            elif key == "level" and section == "":
                levels.append(value)
            elif key in ("rate", "count") and section == "":
                values[key] = _value(key, value, f"{FLAG} {spec!r}")
            elif key in ("file", "log-frequency", "log_frequency") and section in ("", "triton"):
                name = "file" if key == "file" else "log_frequency"
                values[name] = value if name == "file" else _value(name, value, f"{FLAG} {spec!r}")
            else:
                where = f"the {section} section" if section else "the global settings"
                raise InvalidArgumentError(
                    f"{FLAG} {spec!r}: unknown setting '{key}' in {where} (global: level, rate, count, mode; "
                    "triton: file, log-frequency; opentelemetry: url, resource, bsp_*)"
                )
        if levels:
            values["level"] = parse_level(levels, FLAG)
        if resource:
            otel["resource"] = tuple({**dict(OtelOptions.resource), **resource}.items())
        config = cls(TraceValues(**values), mode, OtelOptions(**otel))
        check(config.values, mode, FLAG)
        if config.otel.bsp_max_export_batch_size > config.otel.bsp_max_queue_size:
            raise InvalidArgumentError(
                f"{FLAG}: opentelemetry,bsp_max_export_batch_size must not exceed bsp_max_queue_size"
            )
        return config


def _split(spec: str) -> tuple[str, str, str]:
    """``[MODE,]KEY=VALUE`` -> (mode or '', key, value)."""
    head, sep, rest = spec.partition(",")
    section, setting = "", spec
    if sep and "=" not in head:
        section, setting = head, rest
        if section not in MODES:
            raise InvalidArgumentError(
                f"{FLAG} {spec!r}: unknown trace mode '{section}' (triton, opentelemetry)"
            )
    key, eq, value = setting.partition("=")
    if not eq or not key:
        raise InvalidArgumentError(f"{FLAG} {spec!r}: expected [MODE,]SETTING=VALUE")
    return section, key.strip(), value.strip()


def parse_level(levels: Sequence[object], what: str) -> tuple[str, ...]:
    """A list of level names -> the levels on (() for OFF). TENSORS is refused: Kiln traces timestamps only."""
    names = [str(v).upper() if isinstance(v, str) else v for v in levels]
    for name in names:
        if name not in LEVELS:
            raise InvalidArgumentError(f"{what}: unknown trace level {name!r} (OFF, TIMESTAMPS, TENSORS)")
    if "TENSORS" in names:
        raise InvalidArgumentError(f"{what}: trace level TENSORS is not supported by Kiln (use TIMESTAMPS)")
    if "OFF" in names:
        if len(names) > 1:
            raise InvalidArgumentError(f"{what}: trace level OFF must be given alone")
        return ()
    return (TIMESTAMPS,)


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgumentError(f"{what}: expected an integer as a string, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgumentError(f"{what}: expected an integer, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidArgumentError(f"{what}: {number} is out of range [{low}, {high}]")
    return number


_RANGES = {"rate": (0, UINT32_MAX), "count": (-1, INT32_MAX), "log_frequency": (0, UINT32_MAX)}


def _value(name: str, value: object, what: str) -> int:
    low, high = _RANGES[name]
    return _int(value, what, low, high)


def check(values: TraceValues, mode: str, what: str) -> None:
    """Triton's validity rule: a setting that traces needs a non-zero rate (except OpenTelemetry, where rate 0
    traces only requests that carry a trace context) and, in triton mode, a trace file."""
    if not values.level:
        return
    if values.rate == 0 and mode == "triton":
        raise InvalidArgumentError(f"{what}: the trace rate must be non-zero while tracing is on")
    if mode == "triton" and not values.file:
        raise InvalidArgumentError(
            f"{what}: tracing in triton mode needs a trace file ({FLAG} triton,file=PATH)"
        )


Changes = dict[str, Any]  # TraceValues field -> new value, or CLEAR


def parse_changes(doc: Mapping[str, object], current: TraceValues, config: TraceConfig) -> Changes:
    """The trace extension's update (JSON or gRPC, already as Python values) -> changes to the values.

    ``trace_file`` and ``trace_mode`` (and the OpenTelemetry options) can only be set at startup: a request may
    repeat their current value, anything else is refused, as an unknown setting is."""
    fixed = {
        "trace_mode": config.mode,
        **(config.otel.as_strings() if config.mode == "opentelemetry" else {}),
    }
    changes: Changes = {}
    for key, value in doc.items():
        if key == "trace_file":
            if value is not None and value != current.file:
                raise InvalidArgumentError(
                    "trace_file can only be set when the server starts (--trace-config triton,file=PATH): "
                    "a request must not choose where the server writes"
                )
        elif key in fixed:
            if value is not None and str(value) != fixed[key]:
                raise InvalidArgumentError(f"trace setting '{key}' can only be set when the server starts")
        elif key not in FIELDS:
            known = sorted([*FIELDS, *fixed])
            raise InvalidArgumentError(f"unknown trace setting '{key}'; the settings are {known}")
        elif value is None:
            changes[FIELDS[key]] = CLEAR
        elif key == "trace_level":
            if not isinstance(value, list):
                raise InvalidArgumentError("trace setting 'trace_level' must be a list of strings")
            changes["level"] = parse_level(value, "trace setting 'trace_level'")
        else:
            changes[FIELDS[key]] = _value(FIELDS[key], value, f"trace setting '{key}'")
    return changes


def render(values: TraceValues, config: TraceConfig) -> dict[str, object]:
    """Triton's response: every value a string, the level a list of strings."""
    doc: dict[str, object] = {
        "trace_level": list(values.level) or ["OFF"],
        "trace_rate": str(values.rate),
        "trace_count": str(values.count),
    }
    if config.mode == "triton":
        doc["log_frequency"] = str(values.log_frequency)
        doc["trace_file"] = values.file
    doc["trace_mode"] = config.mode
    if config.mode == "opentelemetry":
        doc.update(config.otel.as_strings())
    return doc
