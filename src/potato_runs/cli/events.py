"""`potato-runs events watch`: follow the run event stream of a running server.

It calls RunEventsService.WatchRunEvents with the admin token ($POTATO_ADMIN_TOKEN or the
server's <data-dir>/admin.token), like the other operator commands, and prints one line
per event as it arrives (or one JSON object per line with --json). Ctrl-C ends it with
exit 0; a stream the server ends prints one `error:` line with a hint that names the
--after to resume from, and exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import typer
from google.protobuf import json_format
from rich.markup import escape

from potato.runs.v2 import run_events_service_pb2 as epb
from potato.runs.v2 import run_events_service_pb2_grpc
from potato_runs.cli._common import (
    TargetOpt,
    _error,
    app,
    call,
    console,
    err_console,
    rpc_error_text,
    tls_options,
)

events_app = typer.Typer(no_args_is_help=True,
                         help="Run events (run_created, run_merged, ...): follow them live.")
app.add_typer(events_app, name="events")

EventsDataDirOpt = typer.Option(
    None, "--data-dir", help="The server's data directory, whose admin.token authenticates "
    "the call when $POTATO_ADMIN_TOKEN is unset (default: $POTATO_DATA_DIR, else the "
    "embedded default)")

_RESUME = {"WATCHER_TOO_SLOW", "SERVER_DRAINING", "DATABASE_UNAVAILABLE", "TOO_MANY_WATCHERS"}


def _runs(runs: Any) -> str:
    return "[" + ", ".join(f"{r.start_date}..{r.end_date} ({r.day_count}d"
                           f"{', active' if r.active else ''})" for r in runs) + "]"


def event_line(event: epb.RunEvent) -> str:
    """One line: id, time, kind, user, cause, before -> after, request id."""
    kind = epb.RunEventKind.Name(event.kind).removeprefix("RUN_EVENT_KIND_").lower()
    cause = epb.RunEventCause.Name(event.cause).removeprefix("RUN_EVENT_CAUSE_").lower()
    when = event.event_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    line = (f"{event.event_id} {when} run_{kind} user={event.user_id} cause={cause} "
            f"{_runs(event.before)} -> {_runs(event.after)}")
    return line + (f" request_id={event.request_id}" if event.request_id else "")


@events_app.command("watch")
@tls_options
def watch(user: str = typer.Option("", "--user", help="Only this user's events (a UUID)"),
          after: int = typer.Option(0, "--after", min=0, help="Start after this event_id "
                                    "(0: from the oldest event kept)"),
          as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
          target: str = TargetOpt, data_dir: Path = EventsDataDirOpt) -> None:
    """Print the run events after --after (replayed from the table), then new ones as
    they commit, one line each, until Ctrl-C (exit 0). Every event is printed once, in
    event_id order; to resume after a stop, pass the last event_id printed as --after."""
    last = after

    def follow(stub: run_events_service_pb2_grpc.RunEventsServiceStub) -> None:
        nonlocal last
        stream = stub.WatchRunEvents(epb.WatchRunEventsRequest(user_id=user,
                                                               after_event_id=after))
        try:
            for message in stream:
                event = message.event
                if as_json:
                    print(json.dumps(json_format.MessageToDict(event)), flush=True)
                else:
                    console.print(escape(event_line(event)), highlight=False)
                    console.file.flush()
                last = event.event_id
        except grpc.RpcError as exc:
            _ended(exc, target, last)
        except KeyboardInterrupt:
            stream.cancel()
            raise

    try:
        call(target, run_events_service_pb2_grpc.RunEventsServiceStub, follow, admin=True,
             data_dir=data_dir)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _ended(exc: grpc.RpcError, target: str | None, last: int) -> None:
    """A stream the server ended: resumable reasons print the --after to resume from;
    the rest go to the usual one-line report (call())."""
    from potato_runs.cli._common import _target, _violations

    reason, _ = _violations(exc)
    if reason == "CURSOR_EXPIRED":
        line, _, _ = rpc_error_text(exc, _target(target))
        _error(line)
        err_console.print("[dim]hint:[/dim] events after --after were deleted by the "
                          "retention (POTATO_RUN_EVENTS_RETENTION); start again with "
                          "--after 0 (from the oldest kept)", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from exc
    if reason in _RESUME:
        line, _, _ = rpc_error_text(exc, _target(target))
        _error(line)
        err_console.print(f"[dim]hint:[/dim] resume with --after {last}", soft_wrap=True,
                          highlight=False)
        raise typer.Exit(1) from exc
    raise exc
