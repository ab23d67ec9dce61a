"""An embedded PostgreSQL cluster built from the machine's PostgreSQL binaries.

Used by `potato-runs serve` when no DSN is given, and by the test suite. The
cluster lives in a data directory that persists across restarts. When the
process runs as root, the cluster runs as an unprivileged OS user (`nobody`
unless POTATO_PG_OS_USER names another), because PostgreSQL refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH, "
    "through pg_config, or under /usr/lib/postgresql/*/bin.\n"
    "Install them, e.g. on Debian/Ubuntu: sudo apt-get install -y postgresql "
    "postgresql-contrib\n"
    "or pass --dsn / set POTATO_DSN to use an existing PostgreSQL 15+ server."
)

SUPERUSER = "potato"


class EmbeddedPostgresError(RuntimeError):
    pass


def _has_tools(d: Path) -> bool:
    return all((d / t).exists() for t in ("initdb", "pg_ctl", "postgres"))


def find_pg_bindir() -> Path:
    """Finds a directory holding initdb, pg_ctl and postgres."""
    env = os.environ.get("POTATO_PG_BINDIR")
    if env and _has_tools(Path(env)):
        return Path(env)
    found = shutil.which("pg_ctl")
    if found and _has_tools(Path(found).resolve().parent):
        return Path(found).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 check=True, timeout=10).stdout.strip()
            if out and _has_tools(Path(out)):
                return Path(out)
        except (subprocess.SubprocessError, OSError):
            pass
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                        else 0, reverse=True)
    for c in candidates:
        if _has_tools(Path(c)):
            return Path(c)
    raise EmbeddedPostgresError(INSTALL_HINT)


def default_data_dir() -> Path:
    """Per-user default: $XDG_DATA_HOME/potato-runs/pgdata (~/.local/share/...);
    for root, /var/lib/potato-runs/pgdata (the unprivileged cluster user must reach it)."""
    if os.geteuid() == 0:
        return Path("/var/lib/potato-runs/pgdata")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "potato-runs" / "pgdata"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, port: int | None = None, fast_unsafe: bool = False,
                 os_user: str | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.fast_unsafe = fast_unsafe
        self.bindir = find_pg_bindir()
        self.os_user: str | None = None
        if os.geteuid() == 0:
            self.os_user = os_user or os.environ.get("POTATO_PG_OS_USER") or "nobody"
        self._started_here = False

    # -- helpers -------------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            args, capture_output=True, text=True, timeout=timeout, cwd="/", check=False, **kwargs)
        return result

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            # Every parent must be traversable by the cluster's user.
            for parent in self.data_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise EmbeddedPostgresError(
                        f"{parent} is not traversable by {self.os_user}; choose a --data-dir "
                        f"outside it (e.g. /var/lib/potato-runs/pgdata)")
        os.chmod(self.data_dir, 0o700)

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "data"

    @property
    def _password_file(self) -> Path:
        return self.data_dir / "superuser.password"

    def dsn(self, database: str = "potato") -> str:
        """DSN of `database`; the superuser's password (scram-sha-256) comes from
        a 0600 file beside the cluster, so other local users cannot connect."""
        auth = SUPERUSER
        if self._password_file.exists():
            auth += ":" + self._password_file.read_text().strip()
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _running_port(self) -> int | None:
        pid_file = self._pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = self._run([str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "status"])
        if status.returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> str:
        """Initialises (first time) and starts the cluster; returns the DSN of `potato`."""
        self._prepare_dir()
        if not (self._pgdata / "PG_VERSION").exists():
            password = secrets.token_urlsafe(24)
            pwfile = self.data_dir / "initdb.pw"
            pwfile.write_text(password + "\n")
            os.chmod(pwfile, 0o600)
            if self.os_user:
                pw = pwd.getpwnam(self.os_user)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            try:
                res = self._run([str(self.bindir / "initdb"), "-D", str(self._pgdata),
                                 "-U", SUPERUSER, "-A", "scram-sha-256", f"--pwfile={pwfile}",
                                 "-E", "UTF8", "--locale=C"])
            finally:
                pwfile.unlink(missing_ok=True)
            if res.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed:\n{res.stderr}")
            self._password_file.write_text(password + "\n")
            os.chmod(self._password_file, 0o600)
        running = self._running_port()
        if running is not None:
            self.port = running
            return self.dsn()
        self.port = self.port or free_port()
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=", "-c max_connections=200"]
        if self.fast_unsafe:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        log = self.data_dir / "postgres.log"
        res = self._run([str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "-l", str(log),
                         "-o", " ".join(opts), "-w", "-t", "60", "start"])
        if res.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(f"pg_ctl start failed:\n{res.stderr}\n{tail}")
        self._started_here = True
        return self.dsn()

    def stop(self) -> None:
        if not self._started_here:
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "-m", "fast", "-w",
                   "stop"])
        self._started_here = False
