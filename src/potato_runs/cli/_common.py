"""What every potato-runs command shares: the Typer app, consoles, settings and
one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import inspect
import os
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from potato_runs.config import Settings
from potato_runs.transport.service_config import CHANNEL_OPTIONS as RETRY_CHANNEL_OPTIONS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Potato Runs: check-in facts and streak runs over gRPC.")


def _console(stderr: bool = False) -> Console:
    """The console policy of every command: rich never hard-wraps a sentence (a long
    UUID or word stays whole: a terminal folds the line itself, a pipe gets one line),
    and output that is not a terminal is not cut at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 10_000
    return Console(stderr=stderr, soft_wrap=True, width=width)


console = _console()
err_console = _console(stderr=True)


def table(title: str | None, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells never wrap (UUIDs, dates and words stay whole)."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, no_wrap=True, overflow="ignore",
                     justify="right" if col in right else "left")
    return t


def show(renderable: Table) -> None:
    """Prints a table at its natural width, wider than a narrow terminal rather than
    wrapped or cropped (the terminal folds the long lines)."""
    need = console.measure(renderable, options=console.options.update_width(10_000)).maximum
    if need <= console.width:
        console.print(renderable)
        return
    wide = Console(file=console.file, width=need, soft_wrap=True,
                   force_terminal=console.is_terminal, no_color=console.no_color,
                   color_system=console.color_system)  # type: ignore[arg-type]
    wide.print(renderable, crop=False)
T = TypeVar("T")
S = TypeVar("S")

DsnOpt = typer.Option(None, "--dsn", help="PostgreSQL DSN (default: $POTATO_DSN, else embedded)")
DataDirOpt = typer.Option(None, "--data-dir", help="Embedded PostgreSQL data directory")
AdminDataDirOpt = typer.Option(
    None, "--data-dir", help="The server's data directory: its admin.token authenticates the "
    "call (default: $POTATO_DATA_DIR, else the embedded default); with --offline, the "
    "embedded cluster to open")
OfflineDsnOpt = typer.Option(
    None, "--dsn", help="Work offline on this PostgreSQL instead of asking the server")
OfflineOpt = typer.Option(
    False, "--offline", help="Work on the database directly (--dsn, $POTATO_DSN, or the "
    "embedded cluster in --data-dir) instead of asking a running server")
TargetOpt = typer.Option(None, "--target", help="host:port of a running server "
                         "(default: $POTATO_TARGET or 127.0.0.1:50051)")


@dataclass(frozen=True)
class ClientTls:
    """How a command reaches the server: plaintext unless a CA or a client certificate
    is given."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.ca, self.cert, self.key))


_CLIENT_TLS: contextvars.ContextVar[ClientTls | None] = contextvars.ContextVar(
    "potato_client_tls", default=None)
"""The TLS options of the running command (set by @tls_options, read by call())."""
_TLS_PARAMS = (
    ("tls_ca", Path | None, typer.Option(
        None, "--tls-ca", envvar="POTATO_TLS_CA", show_envvar=False,
        help="PEM CA that signed the server's certificate: talk TLS "
        "(default: $POTATO_TLS_CA)")),
    ("tls_cert", Path | None, typer.Option(
        None, "--tls-cert", envvar="POTATO_TLS_CLIENT_CERT", show_envvar=False,
        help="PEM client certificate, for a server that requires one (mTLS) "
        "(default: $POTATO_TLS_CLIENT_CERT)")),
    ("tls_key", Path | None, typer.Option(
        None, "--tls-key", envvar="POTATO_TLS_CLIENT_KEY", show_envvar=False,
        help="PEM private key of --tls-cert (default: $POTATO_TLS_CLIENT_KEY)")),
    ("tls_server_name", str | None, typer.Option(
        None, "--tls-server-name", help="Name to verify in the server's certificate "
        "(default: the host of --target)")),
)
F = TypeVar("F", bound=Callable[..., Any])


def tls_options(command: F) -> F:
    """Gives a command that calls the server --tls-ca, --tls-cert, --tls-key and
    --tls-server-name, and makes call() use them: one decorator instead of four
    parameters threaded through every command and helper."""
    signature = inspect.signature(command, eval_str=True)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                               annotation=kind) for name, kind, option in _TLS_PARAMS]

    @functools.wraps(command)
    def wrapper(*args: Any, tls_ca: Path | None = None, tls_cert: Path | None = None,
                tls_key: Path | None = None, tls_server_name: str | None = None,
                **kwargs: Any) -> Any:
        token = _CLIENT_TLS.set(ClientTls(tls_ca, tls_cert, tls_key, tls_server_name))
        try:
            return command(*args, **kwargs)
        finally:
            _CLIENT_TLS.reset(token)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra])
    wrapper.__annotations__ = {**{n: p.annotation for n, p in signature.parameters.items()},
                               **{name: kind for name, kind, _ in _TLS_PARAMS},
                               "return": signature.return_annotation}
    return wrapper  # type: ignore[return-value]


class CliError(Exception):
    """A failure explained by its message alone (exit 2, no traceback)."""


def _check_dsn(dsn: str) -> None:
    """Refuses a malformed DSN up front: asyncpg reports some (a bad port, a broken
    IPv6 host) as bare ValueError/OverflowError. Messages never repeat the DSN, which
    may hold a password."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError('the scheme must be "postgresql" or "postgres"')
        if "," not in parts.netloc:   # one host (multi-host DSNs are left to asyncpg)
            _ = parts.port            # ValueError unless a number in 0..65535
    except ValueError as exc:
        raise CliError(f"invalid DSN: {exc}") from exc


def _settings(**overrides: Any) -> Settings:
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        raise CliError(f"invalid POTATO_* environment setting: {exc}") from exc
    for dsn in (settings.dsn, settings.migrate_dsn):
        if dsn is not None:
            _check_dsn(dsn)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a command's coroutine on the configured event loop (POTATO_EVENT_LOOP)."""
    from potato_runs.config import event_loop_from_env
    from potato_runs.event_loop import run

    try:
        loop = event_loop_from_env()
    except ValueError as exc:
        coro.close()
        raise CliError(f"invalid POTATO_* environment setting: {exc}") from exc
    return run(coro, loop)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):   # an OSError in 3.11, usually with no text
        return "timed out"
    return str(exc).strip() or type(exc).__name__


def _describe(exc: Exception) -> str | None:
    """The `error: ...` text for a failure an operator can act on; None for a bug."""
    from potato_runs.domain.errors import DomainError
    from potato_runs.observability import ObservabilityError

    if isinstance(exc, asyncpg.PostgresError):   # e.g. 28P01 (login refused), 3D000 (no database)
        return f"PostgreSQL refused ({exc.sqlstate}): {_reason(exc)}"
    if isinstance(exc, asyncpg.InterfaceError):  # e.g. an invalid DSN
        return f"cannot connect to PostgreSQL: {_reason(exc)}"
    if isinstance(exc, OSError):                 # refused, unreachable, timed out
        return f"cannot reach PostgreSQL: {_reason(exc)}"
    if isinstance(exc, (CliError, DomainError, ObservabilityError, RuntimeError)):
        # RuntimeError: EmbeddedPostgresError, MigrationError, "could not bind ..."
        return _reason(exc)
    return None


def _error(message: str) -> None:
    err_console.print("[red]error:[/red]", escape(message), soft_wrap=True, highlight=False)


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    """Known failures print one `error: ...` message and exit 2 (no traceback)."""
    try:
        yield
    except typer.Exit:   # a RuntimeError too: already reported (e.g. by call())
        raise
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        _error(message)
        raise typer.Exit(2) from exc



def _target(target: str | None) -> str:
    return target or os.environ.get("POTATO_TARGET") or "127.0.0.1:50051"




# --------------------------------------------------------------------------- gRPC calls
TOKEN_ENV = "POTATO_ADMIN_TOKEN"
STATUS_DETAILS = "grpc-status-details-bin"


def admin_token(data_dir: Path | None = None) -> str | None:
    """$POTATO_ADMIN_TOKEN, else `<data-dir>/admin.token` written by `serve` (embedded)."""
    from potato_runs.admin_token import read_token
    from potato_runs.storage.embedded import EmbeddedPostgresError, default_data_dir

    token = os.environ.get(TOKEN_ENV)
    if token:
        return token.strip()
    try:
        return read_token(data_dir or Path(os.environ.get("POTATO_DATA_DIR") or default_data_dir()))
    except (OSError, EmbeddedPostgresError):
        return None


def admin_metadata(data_dir: Path | None = None) -> tuple[tuple[str, str], ...]:
    token = admin_token(data_dir)
    return (("authorization", f"Bearer {token}"),) if token else ()


def _violations(exc: grpc.RpcError) -> tuple[str | None, list[tuple[str, str]]]:
    """ErrorInfo.reason and the BadRequest field violations of a failed call."""
    from google.rpc import error_details_pb2, status_pb2

    trailers: Any = exc.trailing_metadata() or ()
    raw = next((v for k, v in trailers if k == STATUS_DETAILS), None)
    if raw is None:
        return None, []
    reason, out = None, []
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return reason, out


_HINTS = {
    "TIME_ZONE_REQUIRED": "pass --tz with an IANA zone, e.g. --tz America/New_York",
    "INVALID_TIME_ZONE": "use an IANA region name such as Europe/London, or UTC",
    "DATE_IN_FUTURE": "dates are local dates in the user's zone; pass --tz if the user moved",
    "CONTENTION": "the user's data was busy; run the command again",
}


def rpc_error_text(exc: grpc.RpcError, target: str, *,
                   tls: bool = False) -> tuple[str, list[str], str | None]:
    """(one line, the field violations, a hint) for a failed call (`tls`: whether the
    channel spoke TLS, which changes what an UNAVAILABLE most likely means)."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    name = code.name if code is not None else "ERROR"
    reason, violations = _violations(exc)
    hint: str | None = _HINTS.get(reason or "")
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:
        detail, hint = _unavailable(detail, target, tls)
    elif code == grpc.StatusCode.UNAUTHENTICATED and "access policy" in detail:
        hint = ("set POTATO_TOKEN (mark, unmark, backfill, active, runs) or "
                f"{TOKEN_ENV} (operator commands) to a token the server's access policy "
                "knows, or pass a client certificate it knows (--tls-cert, --tls-key)")
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        hint = (f"set {TOKEN_ENV}, or run where the server's <data-dir>/admin.token is readable "
                f"(--data-dir)")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and reason is None:
        hint = f"the server at {target} did not answer in time; check its health"
    if violations:
        detail = f"{len(violations)} invalid field(s)" if len(violations) > 1 else detail
    lines = [f"{f}: {d}" for f, d in violations] if len(violations) > 1 else []
    return f"{name}: {detail}", lines, hint


def _unavailable(detail: str, target: str, tls: bool) -> tuple[str, str]:
    """The text and hint of a connection failure: no server, or a TLS mismatch."""
    start = "start `potato-runs serve`, or pass --target HOST:PORT (or set POTATO_TARGET)"
    if tls and ("handshake" in detail or "Verification" in detail):
        why = detail.rsplit(": ", 1)[-1] if "Verification" in detail else \
            next((p for p in detail.split(": ") if p.isupper() and "_" in p),
                 "the handshake failed")
        return (f"TLS handshake with {target} failed ({why})",
                "--tls-ca must be the CA that signed the server's certificate, the "
                "certificate must name the --target host (or pass --tls-server-name), "
                "and the server must serve TLS")
    if tls:
        return (f"no server answers at {target}, or it refused this client",
                f"{start}; a server that requires client certificates (mTLS) needs "
                f"--tls-cert and --tls-key signed by its client CA")
    return (f"no server answers at {target}",
            f"{start}; a server that serves TLS needs --tls-ca (POTATO_TLS_CA)")


def report_rpc_error(exc: grpc.RpcError, target: str, exit_code: int = 1, *,
                     tls: bool = False) -> typer.Exit:
    """Prints `error: CODE: detail`, each field violation, and a hint; returns the Exit."""
    line, violations, hint = rpc_error_text(exc, target, tls=tls)
    _error(line)
    for v in violations:
        err_console.print("  " + escape(v), soft_wrap=True, highlight=False)
    if hint:
        err_console.print("[dim]hint:[/dim] " + escape(hint), soft_wrap=True, highlight=False)
    return typer.Exit(exit_code)


CHANNEL_OPTIONS: list[tuple[str, Any]] = [*RETRY_CHANNEL_OPTIONS]
"""Options of every channel the CLI opens (open_channel): the one list to extend. It holds
the documented retry service config (transport/service_config.py): a call the server
shed (RESOURCE_EXHAUSTED) or could not serve (UNAVAILABLE) is retried with backoff."""
TLS_HINT = ("--tls-ca is the PEM CA that signed the server's certificate; --tls-cert and "
            "--tls-key are a PEM client certificate and its unencrypted key")


def _tls_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {option} {path}: "
                       f"{exc.strerror or type(exc).__name__}") from exc


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """TLS credentials from the files, checked first (a wrong file is one error line
    here, not a vague handshake failure later). Raises CliError."""
    if (tls.cert is None) != (tls.key is None):
        raise CliError("--tls-cert and --tls-key go together (POTATO_TLS_CLIENT_CERT, "
                       "POTATO_TLS_CLIENT_KEY)")
    ca = _tls_file(tls.ca, "--tls-ca") if tls.ca is not None else None
    cert = _tls_file(tls.cert, "--tls-cert") if tls.cert is not None else None
    key = _tls_file(tls.key, "--tls-key") if tls.key is not None else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise CliError(f"--tls-ca {tls.ca} is not a PEM CA certificate") from exc
    if tls.cert is not None and tls.key is not None:
        try:
            context.load_cert_chain(tls.cert, tls.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise CliError(f"--tls-cert {tls.cert} and --tls-key {tls.key} are not a PEM "
                           f"certificate and its matching unencrypted key") from exc
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def channel_setup(tls: ClientTls, options: Sequence[tuple[str, Any]] | None = None,
                  ) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """(TLS credentials or None for plaintext, channel options) for `tls`: what every
    channel to the server is made from (`options` defaults to CHANNEL_OPTIONS)."""
    options = list(CHANNEL_OPTIONS if options is None else options)
    if not tls.enabled:
        return None, options
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return channel_credentials(tls), options


def open_channel(target: str, tls: ClientTls | None = None) -> grpc.Channel:
    """The one place the CLI opens a channel: plaintext, or TLS (and mTLS) as the
    command's --tls-* options (or `tls`) say. Raises CliError for unusable TLS files."""
    credentials, options = channel_setup(
        tls if tls is not None else _CLIENT_TLS.get() or ClientTls())
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(target: str, tls: ClientTls,
                     options: Sequence[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """The asyncio twin of open_channel, for the benchmark scripts."""
    credentials, opts = channel_setup(tls, options)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, credentials, options=opts)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI's client TLS flags for an argparse script (defaults from the same
    environment variables); read them back with client_tls(args)."""
    env = os.environ.get
    parser.add_argument("--tls-ca", type=Path, default=env("POTATO_TLS_CA") or None,
                        help="PEM CA that signed the server's certificate: talk TLS")
    parser.add_argument("--tls-cert", type=Path, default=env("POTATO_TLS_CLIENT_CERT") or None,
                        help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, default=env("POTATO_TLS_CLIENT_KEY") or None,
                        help="PEM private key of --tls-cert")
    parser.add_argument("--tls-server-name", help="name to verify in the server's certificate")


def client_tls(args: argparse.Namespace) -> ClientTls:
    """The ClientTls of parsed add_tls_arguments flags."""
    return ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def call(target: str | None, stub_factory: Callable[[grpc.Channel], S],
         fn: Callable[[S], T], *, admin: bool = False, data_dir: Path | None = None,
         exit_code: int = 1) -> T:
    """One call over a fresh channel to a running server; a failure prints one error
    line (plus field violations and a hint) and exits with `exit_code` (2 when the
    TLS files cannot be used)."""
    where = _target(target)
    tls = _CLIENT_TLS.get() or ClientTls()
    try:
        channel = open_channel(where, tls)
    except CliError as exc:
        _error(str(exc))
        err_console.print("[dim]hint:[/dim] " + escape(TLS_HINT), soft_wrap=True,
                          highlight=False)
        raise typer.Exit(2) from exc
    with channel:
        stub: Any = stub_factory(channel)
        if admin:
            stub = _with_metadata(stub, admin_metadata(data_dir))
        try:
            return fn(stub)
        except grpc.RpcError as exc:
            raise report_rpc_error(exc, where, exit_code, tls=tls.enabled) from exc


class _with_metadata:
    """A stub whose every call carries `metadata` (e.g. the admin token)."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def invoke(request: Any, **kw: Any) -> Any:
            kw["metadata"] = tuple(kw.get("metadata") or ()) + self._metadata
            return method(request, **kw)

        return invoke
