"""Start and stop real servers (Dagster UI, PostgreSQL, MLflow) for tests.

Every server runs in its own process group (`start_new_session=True`) so that stopping it
also stops whatever it spawned (dagster dev starts a webserver, a daemon and code servers):
a test that fails half-way must never leave a process behind holding a port.

A test that needs a service this machine lacks (redis-server, PostgreSQL, chromium, or their
Python clients) calls `require_services`: a plain run skips it, saying what to install, and the
session ends with one line counting those skips; under CI=true (as .ci/run sets it) it FAILS,
so CI can never pass with the distributed-engine, PostgreSQL or browser tests quietly skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Mapping, NoReturn, Sequence, TypeVar

import pytest

T = TypeVar("T")

MISSING_SERVICE = "missing service"
SERVICE_INSTALL = "apt-get install chromium postgresql redis-server; pip install -e '.[test,deploy]'"


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """CI=true (GitHub Actions, GitLab, .ci/run) or CI=1."""
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_services(missing: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Nothing when `missing` is empty; else skip the test, or fail it under CI=true. Each entry
    names what is missing and how to install it, e.g. "redis-server (apt-get install redis-server)"."""
    if missing:
        service_unavailable(", ".join(missing), environ)


def service_unavailable(reason: str, environ: Mapping[str, str] = os.environ) -> NoReturn:
    message = f"{MISSING_SERVICE}: {reason}"
    if in_ci(environ):
        pytest.fail(f"{message}. CI=true: tests that need a service must run, not skip", pytrace=False)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 (pytest's signature)
    """One line at the end of a plain run that skipped service tests: how many, and the fix."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if MISSING_SERVICE in str(getattr(report, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests skipped for a missing service (redis-server, PostgreSQL, chromium): "
            f"{SERVICE_INSTALL} (CI=true makes them fail instead)", yellow=True)


@dataclass
class Server:
    """A running server process (the leader of its own process group) and its log file."""

    process: subprocess.Popen
    log_path: Path
    url: str = ""

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with code {self.process.returncode}; log tail:\n{self.log_tail()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | str | None = None, url: str = "", user: str | None = None) -> Server:
    """Start `command` in a new session (its own process group), output to `log_path`.

    `user` runs it as that account (PostgreSQL refuses to run as root).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if user:
        command = as_user(user, command)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=cwd, start_new_session=True)
    return Server(process=process, log_path=log_path, url=url)


def stop_server(server: Server, *, first_signal: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signal the whole process group, then SIGKILL whatever is left after `grace_s`.

    The group id outlives its leader, so children are reached even when the leader is gone.
    """
    pgid = server.process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, first_signal)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_alive(pgid):
        server.process.poll()  # reap the leader so it does not linger as a zombie
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=5)


def run_in_own_group(command: list[str], *, timeout_s: float) -> subprocess.CompletedProcess:
    """Run a short-lived command (e.g. headless Chromium) in its own process group and kill
    that group when it returns or times out: helpers it forked (crashpad, renderers) go too."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def group_alive(pgid: int) -> bool:
    """True while a process of the group is alive (zombies of the group do not count)."""
    for stat in glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")" that closes the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until(probe: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.5,
               what: str = "condition", server: Server | None = None) -> T:
    """Call `probe` until it returns something truthy; fail early if `server` dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server is not None:
            server.check_alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"; server log tail:\n{server.log_tail()}" if server else ""
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s{tail}")
        time.sleep(interval_s)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


# --- PostgreSQL -------------------------------------------------------------------------


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (binaries or a non-root account missing)."""


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster listening on 127.0.0.1 with trust authentication."""

    server: Server
    port: int
    user: str
    data_root: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        # The password is ignored under trust auth, but clients want one in the URL.
        return f"{driver}://{self.user}:unused@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()


def postgres_bin_dir() -> Path | None:
    """Debian's versioned binaries (/usr/lib/postgresql/N/bin), newest first, else PATH."""
    candidates = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def running_postgres(user: str = "medfilip", timeout_s: float = 30.0) -> Iterator[Postgres]:
    """initdb a cluster in a fresh temp folder, run `postgres` in the foreground, stop it after.

    As root the server runs as the `postgres` account (the Debian package creates it); the
    folder is then made outside pytest's 0700 tmp tree so that account can reach it.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, postgres) not found")
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as and not _account_exists(run_as):
        raise PostgresUnavailable("running as root and there is no 'postgres' account to run the server as")
    root = Path(tempfile.mkdtemp(prefix="medfilip-pg-"))
    server = None
    try:
        if run_as:
            account = pwd.getpwnam(run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
        data = root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "--encoding=UTF8",
                  "--no-sync"]
        subprocess.run(as_user(run_as, initdb) if run_as else initdb, check=True, capture_output=True,
                       cwd=root, timeout=120)
        port = free_port()
        command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                   "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off"]
        # The log file is opened here and inherited, so the server needs no write access to it.
        server = start_server(command, root / "postgres.log", cwd=root, user=run_as)
        pg = Postgres(server=server, port=port, user=user, data_root=root)
        wait_until(lambda: _accepts_connections(pg), timeout_s=timeout_s, what="PostgreSQL ready", server=server)
        yield pg
    finally:
        if server is not None:
            # SIGINT is PostgreSQL's "fast shutdown": no waiting for clients to disconnect.
            stop_server(server, first_signal=signal.SIGINT, grace_s=10)
        shutil.rmtree(root, ignore_errors=True)


def _accepts_connections(pg: Postgres) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname="postgres", connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _account_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def as_user(user: str | None, command: list[str]) -> list[str]:
    if not user:
        return command
    account = pwd.getpwnam(user)
    # setpriv (util-linux) keeps the environment and needs no PAM session, unlike su.
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--", *command]


# --- Redis (the Celery broker) -----------------------------------------------------------


@contextlib.contextmanager
def running_redis(timeout_s: float = 30.0) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1, in memory only (no snapshot, no append log), in a
    fresh temp folder; yields its URL without a database number. Stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable("redis-server (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="medfilip-redis-"))
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(root), "--protected-mode", "yes"]
    server = start_server(command, root / "redis.log", cwd=root)
    try:
        wait_until(lambda: _redis_pings(port), timeout_s=timeout_s, what="redis-server ready", server=server)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_server(server, grace_s=10)
        shutil.rmtree(root, ignore_errors=True)


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def deploy_instance(postgres: Postgres, home: Path, monkeypatch) -> Iterator[tuple[object, str]]:
    """A Dagster instance configured by the unmodified deploy/dagster.yaml on a fresh database of
    `postgres`, its settings in the environment as a deployment sets them; (instance, database)."""
    import uuid

    import dagster as dg

    from common.paths import REPO_ROOT

    database = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres.create_database(database)
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    for name, value in {**profile_env(postgres, database), "DAGSTER_HOME": str(dagster_home)}.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.get()
    try:
        yield instance, database
    finally:
        instance.dispose()


def profile_env(postgres: Postgres, database: str) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads (trust authentication: the password is unused)."""
    return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_DB": database,
            "DAGSTER_PG_USER": postgres.user, "DAGSTER_PG_PASSWORD": "unused-under-trust-auth"}
