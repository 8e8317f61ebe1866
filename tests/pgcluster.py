"""A private PostgreSQL cluster that a test may stop and start: its own data directory, port and
socket directory, never the machine's own server.

::

    cluster = PgCluster.create(base)     initdb into <base>/data (trust auth, UTF-8, no fsync)
    cluster.start()                      pg_ctl start on a free port of 127.0.0.1, waits until ready
    cluster.url                          postgresql+psycopg://postgres@127.0.0.1:<port>/postgres
    cluster.stop()                       pg_ctl stop (fast: clients are disconnected), waits
    cluster.destroy()                    stops it if running (immediate), removes <base>

The binaries come from ``/usr/lib/postgresql/<version>/bin`` (the newest) or ``PATH``. PostgreSQL
refuses to run as root, so as root every command runs as the ``postgres`` user (``runuser``) and
``<base>`` is handed to that user. :func:`find_binaries` says why a cluster cannot be made here,
so that a fixture can skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgCluster", "PgClusterUnavailable", "find_binaries"]

#: The machine's own server: a private cluster never uses its port.
_SYSTEM_PORT = 5432
_START_TIMEOUT = 60


class PgClusterUnavailable(Exception):
    """A private cluster cannot be made on this machine; the message says why."""


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; raises
    :class:`PgClusterUnavailable` saying what is missing."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: _version_key(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).parent)
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
                raise PgClusterUnavailable(
                    "running as root needs the `postgres` user and `runuser` to start a private "
                    "PostgreSQL cluster (PostgreSQL refuses to run as root)")
            return bin_dir
    raise PgClusterUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under /usr/lib/postgresql/*/bin "
        "or on PATH; install the server package (e.g. `apt-get install postgresql`)")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class PgCluster:
    """One private cluster; see the module docstring."""

    base: Path
    bin_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the cluster's ``postgres`` database (trust auth)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls, base: Path) -> PgCluster:
        """initdb a new cluster in ``base`` (which must not exist yet); not started."""
        bin_dir = find_binaries()
        base.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        cluster = cls(base=base, bin_dir=bin_dir, port=_free_port())
        cluster._run("initdb", "-D", str(cluster.data_dir), "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--locale=C", "--no-sync")
        return cluster

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(self._command(tool, *args), capture_output=True, text=True,
                              timeout=_START_TIMEOUT, check=False, cwd=self.base)
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PgClusterUnavailable(
                f"{tool} {' '.join(args[:2])} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1000:]}\n{log}")

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it accepts connections."""
        assert self.port != _SYSTEM_PORT, "a private cluster never takes the system server's port"
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.base}", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=40",
            "-c shared_buffers=16MB"])
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                  "-w", "-t", str(_START_TIMEOUT), "start")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server and wait until it is gone (``fast``: disconnect the clients;
        ``immediate``: abort, as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w",
                  "-t", str(_START_TIMEOUT), "stop")

    @property
    def running(self) -> bool:
        """Whether the cluster's postmaster is alive."""
        return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def destroy(self) -> None:
        """Stop the server if it runs (whatever it takes) and remove the cluster's files."""
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                self.stop(mode="immediate")
            except (PgClusterUnavailable, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # its backends exit once the postmaster is gone
                deadline = time.monotonic() + 10
                while self._postmaster_pid() is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
