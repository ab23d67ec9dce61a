"""An embedded PostgreSQL cluster built from the machine's PostgreSQL binaries.

Used by `potato-runs serve` when no DSN is given, and by the test suite. The
cluster lives in a data directory that persists across restarts. When the
process runs as root, the cluster runs as an unprivileged OS user (`nobody`
unless POTATO_PG_OS_USER names another), because PostgreSQL refuses root.

The data directory then belongs to that user, so everything root does inside
it must survive a hostile owner: files are opened with O_NOFOLLOW (and created
with O_EXCL), the initdb password file lives in a fresh private directory
elsewhere, and an existing directory is only taken over when it is empty or
already holds a cluster. One process at a time uses a data directory: start()
takes an exclusive flock on DATA_DIR/potato-runs.lock and stop() releases it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH, "
    "through pg_config, or under /usr/lib/postgresql/*/bin.\n"
    "Install them, e.g. on Debian/Ubuntu: sudo apt-get install -y postgresql "
    "postgresql-contrib\n"
    "or pass --dsn / set POTATO_DSN to use an existing PostgreSQL 15+ server."
)

SUPERUSER = "potato"
LOCK_FILE = "potato-runs.lock"
PASSWORD_FILE = "superuser.password"
APP_PASSWORD_FILE = "app.password"
"""The password of potato_app (storage/roles.py), the role every server connection uses."""
LOG_FILE = "postgres.log"


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


def _read_nofollow(path: Path, limit: int = 1 << 20, *, private: bool = False) -> str | None:
    """The text of regular file `path` (its last `limit` bytes), never through a
    symbolic link; None when it does not exist. `private`: it must be ours and 0600."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EmbeddedPostgresError(f"{path} is a symbolic link; refusing to read it") from exc
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EmbeddedPostgresError(f"{path} is not a regular file; refusing to read it")
        if private and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            raise EmbeddedPostgresError(
                f"{path} must be owned by uid {os.geteuid()} with mode 0600; refusing to use it")
        if st.st_size > limit:
            f.seek(st.st_size - limit)
        return f.read(limit).decode("utf-8", errors="replace")


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, port: int | None = None, fast_unsafe: bool = False,
                 os_user: str | None = None, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.fast_unsafe = fast_unsafe
        # Server settings passed at start (`-c name=value`): e.g. Citus's
        # shared_preload_libraries (storage/embedded_citus.py).
        self.settings = dict(settings or {})
        self.bindir = find_pg_bindir()
        self.os_user: str | None = None
        if os.geteuid() == 0:
            self.os_user = os_user or os.environ.get("POTATO_PG_OS_USER") or "nobody"
        self._lock_fd: int | None = None
        self._running = False   # a cluster we started or adopted: stop() stops it

    # -- helpers -------------------------------------------------------------
    def _ids(self) -> tuple[int, int] | None:
        if not self.os_user:
            return None
        try:
            pw = pwd.getpwnam(self.os_user)
        except KeyError as exc:
            raise EmbeddedPostgresError(
                f"the cluster's OS user {self.os_user!r} does not exist "
                f"(set POTATO_PG_OS_USER to an unprivileged user)") from exc
        return pw.pw_uid, pw.pw_gid

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        ids = self._ids()
        if ids:
            kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            args, capture_output=True, text=True, timeout=timeout, cwd="/", check=False, **kwargs)
        return result

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "data"

    @property
    def _password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def _log(self) -> Path:
        return self.data_dir / LOG_FILE

    def has_cluster(self) -> bool:
        """Whether the data directory holds an initialised cluster."""
        try:
            return (self._pgdata / "PG_VERSION").is_file()
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {self.data_dir}: {exc}") from exc

    def _claim_dir(self) -> None:
        """Creates the data directory, or checks that an existing one may be used:
        it must be empty (but for our lock file) or hold a cluster already. Only then
        is it chowned to the cluster's user and made 0700: `--data-dir /tmp` must not
        turn /tmp into a private directory of `nobody`."""
        d = self.data_dir
        try:
            st = d.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot use {d} as the data directory: {exc}") from exc
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise EmbeddedPostgresError(f"{d} is not a directory; choose another --data-dir")
            if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
                raise EmbeddedPostgresError(
                    f"{d} is a shared directory (world-writable or sticky); refusing to use it "
                    f"as the data directory: choose a new one such as {d / 'potato-runs'}")
            if not self.has_cluster():
                try:
                    foreign = sorted(set(os.listdir(d)) - {LOCK_FILE})
                except OSError as exc:
                    raise EmbeddedPostgresError(f"cannot read {d}: {exc}") from exc
                if foreign:
                    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                    raise EmbeddedPostgresError(
                        f"{d} is not empty ({shown}) and holds no potato-runs cluster; refusing "
                        f"to take it over. Choose a new or empty --data-dir.")
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            ids = self._ids()
            st = d.stat()
            if ids:
                # Every parent must be traversable by the cluster's user.
                for parent in d.parents:
                    if not parent.stat().st_mode & 0o001:
                        raise EmbeddedPostgresError(
                            f"{parent} is not traversable by {self.os_user}; choose a --data-dir "
                            f"outside it (e.g. /var/lib/potato-runs/pgdata)")
                if (st.st_uid, st.st_gid) != ids:
                    os.chown(d, *ids)
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(d, 0o700)
        except EmbeddedPostgresError:
            raise
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot prepare the data directory {d}: {exc}") from exc

    def _lock(self) -> None:
        """Takes the data directory for this process (exclusive, non-blocking)."""
        path = self.data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot open the lock file {path}: {exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EmbeddedPostgresError(f"the lock file {path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise EmbeddedPostgresError(
                    f"the embedded cluster in {self.data_dir} is in use by another potato-runs "
                    f"process (a server or an operator command); stop it first, or pass --dsn "
                    f"to reach the database through a running server's PostgreSQL") from exc
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    def _read_password(self) -> str | None:
        text = _read_nofollow(self._password_file, limit=4096, private=True)
        return None if text is None else text.strip()

    def _write_password(self, password: str) -> None:
        path = self._password_file
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError as exc:
            kind = "a symbolic link" if path.is_symlink() else "already there"
            raise EmbeddedPostgresError(
                f"{path} is {kind} but {self._pgdata} holds no cluster; refusing to write the "
                f"superuser password over it (remove it, or choose another --data-dir)") from exc
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")

    def app_password(self) -> str:
        """potato_app's password, from `<data-dir>/app.password` (0600, like the
        superuser's); a random one is written there first when it is missing (a new
        cluster, or one created before the roles existed)."""
        path = self.data_dir / APP_PASSWORD_FILE
        text = _read_nofollow(path, limit=4096, private=True)
        if text is not None and text.strip():
            return text.strip()
        password = secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError as exc:
            raise EmbeddedPostgresError(
                f"{path} is empty or a symbolic link; remove it and start again") from exc
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return password

    def app_dsn(self, database: str = "potato") -> str:
        """DSN of `database` as potato_app (the password file must exist: app_password())."""
        from potato_runs.storage.roles import APP_ROLE

        text = _read_nofollow(self.data_dir / APP_PASSWORD_FILE, limit=4096, private=True)
        if not text or not text.strip():
            raise EmbeddedPostgresError(f"no {APP_PASSWORD_FILE} in {self.data_dir}")
        return f"postgresql://{APP_ROLE}:{text.strip()}@127.0.0.1:{self.port}/{database}"

    def _log_tail(self) -> str:
        try:
            return (_read_nofollow(self._log, limit=2000) or "").strip()
        except (OSError, EmbeddedPostgresError) as exc:
            return f"(cannot read {self._log}: {exc})"

    def dsn(self, database: str = "potato") -> str:
        """DSN of `database`; the superuser's password (scram-sha-256) comes from
        a 0600 file beside the cluster, so other local users cannot connect."""
        auth = SUPERUSER
        password = self._read_password()
        if password:
            auth += ":" + password
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) from postmaster.pid when pg_ctl says its server is alive."""
        text = _read_nofollow(self._pgdata / "postmaster.pid", limit=4096)
        if text is None:
            return None
        status = self._run([str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "status"])
        if status.returncode != 0:
            return None   # stale: postgres removes it at start
        lines = text.splitlines()
        if not lines or not lines[0].strip().isdigit():
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return int(lines[0]), port

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether `pid` is a postmaster running in this data directory (a postmaster's
        working directory is its data directory). Without /proc, trust pg_ctl."""
        if not os.path.isdir("/proc/self"):
            return True
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False   # gone, or another user's process
        return os.path.realpath(cwd) == os.path.realpath(self._pgdata)

    def _initdb(self) -> None:
        password = secrets.token_urlsafe(24)
        self._write_password(password)   # first: refuses a planted file before initdb
        ok = False
        tmp_base = tempfile.gettempdir()
        if self.os_user and not _traversable_by_others(Path(tmp_base)):
            tmp_base = "/tmp"
        private = tempfile.mkdtemp(prefix="potato-initdb-", dir=tmp_base)   # 0700, ours
        try:
            pwfile = os.path.join(private, "pw")
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            ids = self._ids()
            if ids:   # the file first, then the directory: nothing to swap in between
                os.chown(pwfile, *ids)
                os.chown(private, *ids)
            res = self._run([str(self.bindir / "initdb"), "-D", str(self._pgdata),
                             "-U", SUPERUSER, "-A", "scram-sha-256", f"--pwfile={pwfile}",
                             "-E", "UTF8", "--locale=C"])
            if res.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed:\n{res.stderr}")
            ok = True
        finally:
            shutil.rmtree(private, ignore_errors=True)   # fd-based: never follows a link
            if not ok:
                with contextlib.suppress(OSError):
                    self._password_file.unlink()

    # -- lifecycle -----------------------------------------------------------
    def start(self, *, create: bool = True) -> str:
        """Initialises (first time, unless create=False) and starts the cluster, holding
        the data directory's lock until stop(); returns the DSN of `potato`. A cluster
        already running in the directory (left by a killed server) is adopted: stop()
        stops it, since no other process can be using it while we hold the lock."""
        if self._lock_fd is not None:
            raise EmbeddedPostgresError(f"the embedded cluster in {self.data_dir} is already started")
        if not create and not self.has_cluster():
            raise EmbeddedPostgresError(self._no_cluster())
        self._claim_dir()
        self._lock()
        try:
            return self._start_locked(create)
        except BaseException:
            self.stop()
            raise

    def _no_cluster(self) -> str:
        return (f"no embedded cluster in {self.data_dir}; start `potato-runs serve` first "
                f"or pass --dsn")

    def _start_locked(self, create: bool) -> str:
        if not self.has_cluster():
            if not create:
                raise EmbeddedPostgresError(self._no_cluster())
            self._initdb()
        postmaster = self._postmaster()
        stale = ""
        if postmaster is not None:
            pid, port = postmaster
            if self._is_our_postmaster(pid) and port is not None:
                self.port = port
                self._running = True
                return self.dsn()
            stale = (f"\n{self._pgdata / 'postmaster.pid'} names PID {pid}, which is not a "
                     f"PostgreSQL server of this data directory. If no PostgreSQL runs on "
                     f"{self._pgdata}, remove that file and start again.")
        self.port = self.port or free_port()
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=", "-c max_connections=200"]
        if self.fast_unsafe:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        opts += [f"-c {name}={value}" for name, value in self.settings.items()]
        res = self._run([str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "-l", str(self._log),
                         "-o", " ".join(opts), "-w", "-t", "60", "start"])
        if res.returncode != 0:
            raise EmbeddedPostgresError(
                f"pg_ctl start failed for {self._pgdata}:\n{res.stderr.strip()}\n"
                f"--- last lines of {self._log} ---\n{self._log_tail()}{stale}")
        self._running = True
        return self.dsn()

    def stop(self) -> None:
        """Stops the cluster this object started or adopted, and releases the data
        directory. Safe to call more than once."""
        try:
            if self._running:
                pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self._pgdata), "-w", "-t", "60"]
                res = self._run([*pg_ctl, "-m", "fast", "stop"])
                if res.returncode != 0 and self._postmaster() is not None:
                    self._run([*pg_ctl, "-m", "immediate", "stop"])
                self._running = False
        finally:
            self._unlock()
