"""A real PostgreSQL server for the tests that need a Dagster instance shared by several processes (the
Celery workers, their run): the image's PostgreSQL binaries (`initdb`, `pg_ctl`; Debian keeps them in
/usr/lib/postgresql/<version>/bin), a data directory in a temp dir, a free loopback port, and a password
checked with scram-sha-256, as a real deployment's would be.

initdb and postgres refuse to run as root, so as root they run as the `postgres` user (which Debian's
package creates) through `runuser -u postgres --`, in a temp dir that user owns; as anyone else, as that
user. Durability is off (fsync, full-page writes): a test server need not survive a power cut, and its
writes are then as fast as memory. `pg_ctl -w` returns once the server accepts connections.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from clipfarm_fusion.devtools.embedded_s3 import free_port

USER, PASSWORD = "dagster", "dagster-test-password"
SYSTEM_USER = "postgres"  # the account the server runs as when the tests run as root
START_TIMEOUT_S = 60
LOG_TAIL_LINES = 40


def postgres_bin() -> Path | None:
    """The directory of `initdb` and `pg_ctl`: on PATH, else the newest under /usr/lib/postgresql."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def create_database(self, name: str) -> None:
        with contextlib.closing(self._connect("postgres")) as connection:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def dagster_env(self, database: str) -> dict[str, str]:
        """The environment infra/dagster.yaml reads its Postgres storage from."""
        return {
            "DAGSTER_POSTGRES_HOST": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": USER,
            "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
            "DAGSTER_POSTGRES_DB": database,
        }

    def _connect(self, database: str):
        return psycopg2.connect(
            host=self.host, port=self.port, user=USER, password=PASSWORD, dbname=database, connect_timeout=10
        )


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], log: Path) -> None:
    result = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}\n"
            + "\n".join(tail)
        )


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """initdb in a fresh temp dir, start on a free loopback port, yield; stop and delete at exit."""
    work = Path(tempfile.mkdtemp(prefix="clipfarm-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(work, SYSTEM_USER, SYSTEM_USER)
    data, log, password_file = work / "data", work / "server.log", work / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(password_file, SYSTEM_USER, SYSTEM_USER)
    port = free_port()
    options = [
        f"-c port={port}",
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={work}",  # not /var/run/postgresql, which may not exist
        "-c fsync=off",
        "-c full_page_writes=off",
        "-c synchronous_commit=off",
    ]
    started = False
    try:
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}"]
            + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
            log,
        )
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", " ".join(options)]
            + ["-w", "-t", str(START_TIMEOUT_S), "start"],
            log,
        )
        started = True
        yield PostgresServer("127.0.0.1", port)
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], log)
        shutil.rmtree(work, ignore_errors=True)
