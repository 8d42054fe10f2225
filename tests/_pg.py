"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary folder, a server on its
own Unix socket and port (no TCP), stopped and deleted at the end. Never a mock.

The server binaries are Debian's (``pg_config --bindir``, else ``/usr/lib/postgresql/*/bin``).
PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user (made by
Debian's package) and its commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: The role whose connections need a password (``Cluster.password_url``).
GUARDED = "guarded"


def bindir() -> Path | None:
    """Folder of initdb and pg_ctl, or None."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        found = Path(out.stdout.strip())
        if out.returncode == 0 and (found / "initdb").exists():
            return found
    except (OSError, subprocess.SubprocessError):
        pass
    hits = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(hits[-1]).parent if hits else None


def problem() -> str | None:
    """Why no cluster can start here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'dal-widgets[team]')"
    if bindir() is None:
        return "no PostgreSQL server binaries (apt-get install -y postgresql)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster: ``start()``, ``url(db)``, ``stop(mode)``, ``restart()``, ``destroy()``."""

    def __init__(self) -> None:
        found = bindir()
        assert found is not None
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix="dal-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
            shutil.chown(self.socket_dir, self.user)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        # One role must give its password (the bad-credentials tests); the rest is trusted.
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"local all {GUARDED} scram-sha-256\n" + hba.read_text())

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def start(self) -> None:
        opts = f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=on"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, pause: float = 0.0) -> None:
        self.stop("immediate")
        time.sleep(pause)
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.socket_dir}&port={self.port}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def password_url(self, db: str, password: str) -> str:
        """The URL of ``db`` as the role that must give a password (made with ``password``
        on first use, allowed to create schemas in ``db`` and in its ``public`` schema)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GUARDED,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(GUARDED), sql.Literal(password)
                    )
                )
            conn.execute(
                sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                    sql.Identifier(db), sql.Identifier(GUARDED)
                )
            )
        with psycopg.connect(self.url(db), autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(GUARDED))
            )
        return f"postgresql://{GUARDED}:{password}@/{db}?host={self.socket_dir}&port={self.port}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def annotate(url: str, project: str, name: str, log: str, think_ms: float, hang: bool) -> None:
    """One annotator process of the concurrency test: claim batches of 10 and label them (the
    label is a function of the item, so the test can check it), appending each label that
    ``label()`` acknowledged to ``log``, until no item needs labels. ``hang``: claim one batch,
    say so in the log, and wait to be killed mid-batch."""
    import json
    import random

    from dal_widgets.team import LeaseLostError, TeamQueue

    rng = random.Random(name)
    q = TeamQueue(
        url, project=project, annotator=name, overlap=2, lease_seconds=3, reconnect_seconds=90
    )
    with open(log, "a") as out:
        while True:
            ids = q.claim(10)
            if hang and ids:
                out.write(json.dumps(["claimed", ids]) + "\n")
                out.flush()
                time.sleep(3600)
            if not ids:
                if q.remaining() == 0:
                    break
                time.sleep(0.05)
                continue
            for item in ids:
                time.sleep(rng.uniform(0, think_ms) / 1000)
                try:
                    q.label(item, f"c{item % 7}")
                except LeaseLostError:
                    continue
                out.write(json.dumps([item, f"c{item % 7}"]) + "\n")
                out.flush()
    q.close()


def ranked(url: str) -> bool:
    """Whether a team's trainer has ranked the queue (its priorities are times; new items'
    are below 1): claims made after it follow one order."""
    import psycopg

    with psycopg.connect(url) as conn:
        top = conn.execute("SELECT max(priority) FROM dal_items").fetchone()[0]
    return top is not None and top > 1
