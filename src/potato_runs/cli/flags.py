"""potato-runs flags: list, get, set and roll back feature flags on a running server.

Every command calls the server's AdminService (the admin token comes from
$POTATO_ADMIN_TOKEN or the server's <data-dir>/admin.token) and names the operator
in `x-potato-actor` ($USER@hostname), which the audit table keeps.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import Any

import typer
from google.protobuf import field_mask_pb2

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import admin_service_pb2_grpc
from potato_runs.cli._common import (
    TargetOpt,
    app,
    call,
    console,
    show,
    table,
    tls_options,
)

flags_app = typer.Typer(
    no_args_is_help=True,
    help="Feature flags (e.g. ff.potato.runs_v2): list, get, set and roll back, through "
         "the running server's AdminService.")
app.add_typer(flags_app, name="flags")

ACTOR_HEADER = "x-potato-actor"
FlagsDataDirOpt = typer.Option(
    None, "--data-dir", help="The server's data directory, whose admin.token authenticates "
    "the call when $POTATO_ADMIN_TOKEN is unset (default: $POTATO_DATA_DIR, else the "
    "embedded default)")
JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout instead of a table")
NameArg = typer.Argument(..., help="The flag name, e.g. ff.potato.runs_v2")
ReasonOpt = typer.Option(..., "--reason", help="Why (required; kept in the audit table "
                         "with who and when)")
TIMEOUT = 10.0


def actor() -> str:
    """$USER@hostname, as a header may carry it (printable ASCII)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    text = f"{user}@{socket.gethostname()}"
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:128]


def _metadata() -> tuple[tuple[str, str], ...]:
    return ((ACTOR_HEADER, actor()),)


def _call(target: str | None, data_dir: Path | None, fn: Any) -> Any:
    return call(target, admin_service_pb2_grpc.AdminServiceStub, fn, admin=True,
                data_dir=data_dir, exit_code=2)


def percent(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + "%"


def flag_dict(f: apb.Flag) -> dict[str, Any]:
    return {"name": f.name, "enabled": f.enabled, "rollout_percent": f.rollout_percent,
            "shadow_percent": f.shadow_percent, "allow_user_ids": list(f.allow_user_ids),
            "deny_user_ids": list(f.deny_user_ids),
            "update_time": f.update_time.ToJsonString() if f.HasField("update_time") else None,
            "update_reason": f.update_reason}


def _updated(f: apb.Flag) -> str:
    if not f.HasField("update_time"):
        return ""
    return f.update_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def _flags_table(flags: list[apb.Flag], title: str | None) -> None:
    t = table(title, "name", "enabled", "rollout", "shadow", "allow", "deny", "updated",
              "reason", right=("rollout", "shadow", "allow", "deny"))
    for f in flags:
        t.add_row(f.name, "yes" if f.enabled else "no", percent(f.rollout_percent),
                  percent(f.shadow_percent), str(len(f.allow_user_ids)),
                  str(len(f.deny_user_ids)), _updated(f), f.update_reason)
    show(t)


def _print_flag(f: apb.Flag, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(flag_dict(f)))
        return
    t = table(None, "field", "value")
    t.add_row("name", f.name)
    t.add_row("enabled", "yes" if f.enabled else "no (everyone is served legacy)")
    t.add_row("rollout", percent(f.rollout_percent) + " served v2")
    t.add_row("shadow", percent(f.shadow_percent) + " of the others compared in shadow")
    t.add_row("allow", "\n".join(f.allow_user_ids) or "-")
    t.add_row("deny", "\n".join(f.deny_user_ids) or "-")
    t.add_row("updated", _updated(f))
    t.add_row("reason", f.update_reason)
    show(t)


def _parse_percent(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    text = value.strip().removesuffix("%").strip()
    try:
        number = float(text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a percentage (0 to 100, e.g. 12.5)",
                                 param_hint=option) from None
    return number


@flags_app.command("list")
@tls_options
def list_flags(as_json: bool = JsonOpt, target: str = TargetOpt,
               data_dir: Path = FlagsDataDirOpt) -> None:
    """List every flag: state, percentages, list sizes and the last change."""
    res = _call(target, data_dir, lambda s: s.ListFlags(apb.ListFlagsRequest(), timeout=TIMEOUT,
                                                        metadata=_metadata()))
    if as_json:
        console.print_json(json.dumps([flag_dict(f) for f in res.flags]))
    elif not res.flags:
        console.print("no flags")
    else:
        _flags_table(list(res.flags), None)


@flags_app.command("get")
@tls_options
def get_flag(name: str = NameArg, as_json: bool = JsonOpt, target: str = TargetOpt,
             data_dir: Path = FlagsDataDirOpt) -> None:
    """Show one flag, with its allow and deny lists."""
    res = _call(target, data_dir, lambda s: s.GetFlag(apb.GetFlagRequest(name=name),
                                                      timeout=TIMEOUT, metadata=_metadata()))
    _print_flag(res.flag, as_json)


@flags_app.command("set")
@tls_options
def set_flag(
        name: str = NameArg,
        rollout: str = typer.Option(None, "--rollout", metavar="PCT",
                                    help="Share of users served v2: 0 to 100, steps of 0.01"),
        shadow: str = typer.Option(None, "--shadow", metavar="PCT",
                                   help="Share of the other users served legacy and compared "
                                        "with v2 in shadow: 0 to 100, steps of 0.01"),
        allow: list[str] = typer.Option(None, "--allow", metavar="UUID",
                                        help="A user always served v2 (repeat it; replaces "
                                             "the whole allow list)"),
        deny: list[str] = typer.Option(None, "--deny", metavar="UUID",
                                       help="A user always served legacy (repeat it; replaces "
                                            "the whole deny list; deny wins over allow)"),
        clear_allow: bool = typer.Option(False, "--clear-allow", help="Empty the allow list"),
        clear_deny: bool = typer.Option(False, "--clear-deny", help="Empty the deny list"),
        enable: bool = typer.Option(None, "--enable/--disable",
                                    help="Turn the flag on, or off (off: everyone legacy)"),
        reason: str = ReasonOpt, as_json: bool = JsonOpt, target: str = TargetOpt,
        data_dir: Path = FlagsDataDirOpt) -> None:
    """Change a flag. Only the options given change; the rest is kept."""
    if allow and clear_allow:
        raise typer.BadParameter("give --allow or --clear-allow, not both",
                                 param_hint="--clear-allow")
    if deny and clear_deny:
        raise typer.BadParameter("give --deny or --clear-deny, not both",
                                 param_hint="--clear-deny")
    flag = apb.Flag(name=name)
    paths = []
    if enable is not None:
        flag.enabled = enable
        paths.append("enabled")
    if (pct := _parse_percent(rollout, "--rollout")) is not None:
        flag.rollout_percent = pct
        paths.append("rollout_percent")
    if (pct := _parse_percent(shadow, "--shadow")) is not None:
        flag.shadow_percent = pct
        paths.append("shadow_percent")
    if allow or clear_allow:
        flag.allow_user_ids.extend(allow or [])
        paths.append("allow_user_ids")
    if deny or clear_deny:
        flag.deny_user_ids.extend(deny or [])
        paths.append("deny_user_ids")
    if not paths:
        raise typer.BadParameter("nothing to change: give --rollout, --shadow, --allow, "
                                 "--deny, --clear-allow, --clear-deny, --enable or --disable")
    request = apb.UpdateFlagRequest(flag=flag, update_mask=field_mask_pb2.FieldMask(paths=paths),
                                    reason=reason)
    res = _call(target, data_dir, lambda s: s.UpdateFlag(request, timeout=TIMEOUT,
                                                         metadata=_metadata()))
    _print_flag(res.flag, as_json)


@flags_app.command("rollback")
@tls_options
def rollback_flag(name: str = NameArg, reason: str = ReasonOpt, as_json: bool = JsonOpt,
                  target: str = TargetOpt, data_dir: Path = FlagsDataDirOpt) -> None:
    """Disable a flag at once: everyone is served legacy (percentages and lists kept)."""
    res = _call(target, data_dir, lambda s: s.RollbackFlag(
        apb.RollbackFlagRequest(name=name, reason=reason), timeout=TIMEOUT,
        metadata=_metadata()))
    f = res.flag
    if as_json:
        console.print_json(json.dumps(flag_dict(f)))
        return
    console.print(f"{f.name} is disabled: every user is served legacy (rollout "
                  f"{percent(f.rollout_percent)}, shadow {percent(f.shadow_percent)} and the "
                  f"lists are kept; `potato-runs flags set {f.name} --enable --reason ...` "
                  f"resumes).", highlight=False)
