"""A throwaway MariaDB server on 127.0.0.1 for the MySQL backend-store test.

`python3 scripts/mariadb.py install` installs the Debian package `mariadb-server`
when neither `mariadbd` nor `mysqld` is present (stdlib only, any python3).
`start(datadir, port)` and `stop(handle)` are for the test: a fresh data dir, a
server that only this process owns, a database `mlflow` and a user with a random
password. The password is never printed; the handle's repr leaves the URI out.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.system import apt_install, find

PACKAGE = "mariadb-server"
SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_DB_NAMES = ("mariadb-install-db", "mysql_install_db")
DATABASE = "mlflow"
USER = "mlflow"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


class MariaDBError(RuntimeError):
    pass


def installed() -> bool:
    return find(*SERVER_NAMES) is not None


def install() -> int:
    """Install mariadb-server with apt-get unless a server binary is already there."""
    present = find(*SERVER_NAMES)
    if present:
        print(f"MariaDB/MySQL server already installed: {present}")
        return 0
    status = apt_install(PACKAGE)
    if status != 0:
        return status
    present = find(*SERVER_NAMES)
    if not present:
        print(f"error: {PACKAGE} installed, but neither {' nor '.join(SERVER_NAMES)} was found", file=sys.stderr)
        return 1
    print(f"installed {PACKAGE}: {present}")
    return 0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    datadir: Path
    port: int
    socket: Path
    error_log: Path
    password: str = field(repr=False)
    scratch: Path | None = None  # a short socket dir, when the data dir path is too long

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def uri(self) -> str:
        """SQLAlchemy URI for MLflow's backend store. Contains the password: do not print it."""
        return f"mysql+pymysql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self) -> Any:
        """A pymysql connection to the `mlflow` database as the `mlflow` user, over TCP."""
        import pymysql

        return pymysql.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, database=DATABASE, connect_timeout=5
        )


def _tail(*paths: Path, lines: int = 25) -> str:
    parts = []
    for path in paths:
        if path.exists():
            text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"--- {path}\n{text}")
    return "\n".join(parts) or "(no log written)"


def _as_root() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


def _initialise(datadir: Path, log: Path) -> None:
    install_db = find(*INSTALL_DB_NAMES)
    if not install_db:
        raise MariaDBError(
            f"{' / '.join(INSTALL_DB_NAMES)} not found: this helper needs MariaDB's tools (Oracle MySQL 8 alone is "
            f"not supported); install {PACKAGE} (`python3 scripts/mariadb.py install` when no mysqld is present)"
        )
    datadir.mkdir(parents=True, exist_ok=True)
    command = [
        install_db,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",  # root@localhost, no password, socket only
        "--skip-test-db",
        *_as_root(),
    ]
    with log.open("ab") as handle:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise MariaDBError(f"{Path(install_db).name} failed with exit code {result.returncode}:\n{_tail(log)}")


def _connect_root(server: Server, timeout_s: float) -> Any:
    """Wait until the server accepts a root connection on its socket."""
    import pymysql

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise MariaDBError(
                f"mariadbd exited with code {server.process.returncode} during start-up:\n"
                f"{_tail(server.error_log, server.datadir.parent / 'mariadbd.out')}"
            )
        if server.socket.exists():
            try:
                return pymysql.connect(unix_socket=str(server.socket), user="root", connect_timeout=2)
            except pymysql.err.OperationalError as error:
                last = error
        time.sleep(0.2)
    raise MariaDBError(
        f"mariadbd did not accept connections within {timeout_s:.0f} s (last error: {last}):\n{_tail(server.error_log)}"
    )


def start(datadir: Path, port: int, timeout_s: float = 60.0) -> Server:
    """Initialise `datadir`, start mariadbd on 127.0.0.1:`port`, create the mlflow database and user.

    `datadir` must not hold a database yet. Logs go next to it. On any failure the
    server is stopped again before the error propagates.
    """
    binary = find(*SERVER_NAMES)
    if not binary:
        raise MariaDBError("no mariadbd/mysqld found; run `python3 scripts/mariadb.py install`")
    datadir = Path(datadir).resolve()
    if datadir.exists() and any(datadir.iterdir()):
        raise MariaDBError(f"{datadir} is not empty; start() needs a fresh data dir")
    logs = datadir.parent
    console_log = logs / "mariadbd.out"
    _initialise(datadir, console_log)

    scratch = None
    socket_path = datadir / "mariadbd.sock"
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        scratch = Path(tempfile.mkdtemp(prefix="mdb-"))
        socket_path = scratch / "mariadbd.sock"
    error_log = logs / "mariadbd.err"
    command = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={socket_path}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-name-resolve",
        f"--pid-file={datadir / 'mariadbd.pid'}",
        f"--log-error={error_log}",
        # Throwaway data: trade durability for speed (MLflow's migrations are many small DDLs).
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
        "--innodb-buffer-pool-size=64M",
        *_as_root(),
    ]
    with console_log.open("ab") as handle:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(
        process=process,
        datadir=datadir,
        port=port,
        socket=socket_path,
        error_log=error_log,
        password=secrets.token_urlsafe(24),
        scratch=scratch,
    )
    try:
        root = _connect_root(server, timeout_s)
        with root, root.cursor() as cursor:
            # mariadb-install-db also creates password-less root accounts for TCP; keep root on the socket only.
            cursor.execute("SELECT user, host FROM mysql.user WHERE user = 'root' AND host <> 'localhost'")
            for user, host in cursor.fetchall():
                cursor.execute("DROP USER %s@%s", (user, host))
            # Case-sensitive like MLflow's sqlite store (keys "Loss" and "loss" are different).
            cursor.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            cursor.execute(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY %s", (server.password,))
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'127.0.0.1'")
        server.connect().close()  # the account MLflow will use, over TCP as MLflow connects
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, SIGKILL after `timeout_s`, reap. Stopping twice is fine."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if server.scratch is not None:
        shutil.rmtree(server.scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv == ["install"]:
        return install()
    print(f"usage: {Path(sys.argv[0]).name} install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
