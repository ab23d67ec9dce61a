"""Server logs: one JSON object per line, or plain text for a person at a terminal.

`POTATO_LOG_FORMAT` (`serve --log-format`): `json`, `text`, or `auto` (the default): JSON
when stderr is not a terminal (a container, systemd, a log shipper), text when it is.
A JSON line carries `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `message`,
and, when a span is current (an RPC traced with `POTATO_OTEL_GRPC_SPANS`, or our write
span), `trace_id` and `span_id` in the W3C hex form a trace backend searches by
(32 and 16 hex digits); an exception adds `exception` (the traceback, as text). In a
worker of `serve --workers N` every line carries its index, `worker`. Extra
fields passed with `extra={...}` are kept when JSON can hold them.

The CLI's one-line `error: ...` messages are not logs: they stay plain on stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["auto", "json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line (json.dumps escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


def resolve(fmt: LogFormat, stream: Any = None) -> Literal["json", "text"]:
    """`auto` -> text on a terminal, json elsewhere."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class _Worker(logging.Filter):
    """Gives every record the `worker` field: the index of this process in a
    `serve --workers N` group."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def configure(level: str, fmt: LogFormat = "auto", *, worker: int | None = None) -> None:
    """The root logger's one handler (stderr) with the chosen format; replaces any
    handler a previous configure() or basicConfig() installed. `worker`: every line
    carries it (JSON field `worker`; `[worker N]` in text)."""
    handler = logging.StreamHandler()
    text = TEXT_FORMAT if worker is None else TEXT_FORMAT.replace(
        " %(name)s", " [worker %(worker)s] %(name)s")
    handler.setFormatter(JsonFormatter() if resolve(fmt, handler.stream) == "json"
                         else logging.Formatter(text))
    if worker is not None:
        handler.addFilter(_Worker(worker))
    logging.basicConfig(level=level, handlers=[handler], force=True)
