"""A fresh MariaDB in the container's tmpfs, set up the way the official mysql image sets itself up.

MYSQL_ROOT_PASSWORD (root@localhost and root@%), MYSQL_DATABASE, MYSQL_USER and MYSQL_PASSWORD (that user,
all privileges on that database), MYSQL_TCP_PORT (default 3306) and MYSQL_BIND_ADDRESS (default 127.0.0.1).
Extra arguments go to mariadbd. The accounts are created by an init file on the tmpfs /run/mysqld, so no
password appears in a process argument list.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

DATADIR = Path("/var/lib/mysql/data")
RUNDIR = Path("/run/mysqld")
IDENTIFIER = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(name: str, variable: str) -> str:
    if not IDENTIFIER.match(name):
        sys.exit(f"{variable}={name!r}: letters, digits, _, $ and - only")
    return f"`{name}`"


def init_sql() -> str:
    env = os.environ
    root_password = env.get("MYSQL_ROOT_PASSWORD") or sys.exit("MYSQL_ROOT_PASSWORD is required")
    statements = [
        # mariadb-install-db also makes password-less root accounts for 127.0.0.1, ::1 and the host name.
        "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost'",
        "FLUSH PRIVILEGES",
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY {literal(root_password)}",
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY {literal(root_password)}",
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION",
    ]
    database = env.get("MYSQL_DATABASE")
    if database:
        # utf8mb4_bin: case-sensitive, as MLflow's own stores are (scripts/mariadb.py does the same).
        statements.append(
            f"CREATE DATABASE IF NOT EXISTS {identifier(database, 'MYSQL_DATABASE')} "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    user, password = env.get("MYSQL_USER"), env.get("MYSQL_PASSWORD")
    if user:
        if not password:
            sys.exit("MYSQL_USER needs MYSQL_PASSWORD")
        statements.append(f"CREATE USER IF NOT EXISTS {literal(user)}@'%' IDENTIFIED BY {literal(password)}")
        if database:
            statements.append(
                f"GRANT ALL PRIVILEGES ON {identifier(database, 'MYSQL_DATABASE')}.* TO {literal(user)}@'%'"
            )
    return "".join(f"{statement};\n" for statement in statements)


def main() -> None:
    if not (DATADIR / "mysql").is_dir():
        DATADIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={DATADIR}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"mariadb-install-db failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    init_file = RUNDIR / "init.sql"
    descriptor = os.open(init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(init_sql())
    command = [
        "mariadbd",
        "--no-defaults",
        f"--datadir={DATADIR}",
        f"--socket={RUNDIR / 'mariadbd.sock'}",
        f"--pid-file={RUNDIR / 'mariadbd.pid'}",
        f"--port={os.environ.get('MYSQL_TCP_PORT', '3306')}",
        f"--bind-address={os.environ.get('MYSQL_BIND_ADDRESS', '127.0.0.1')}",
        "--skip-name-resolve",
        "--tmpdir=/tmp",
        f"--init-file={init_file}",
        # Throwaway data: durability traded for speed (MLflow's migrations are many small DDLs).
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
        "--innodb-buffer-pool-size=64M",
        *sys.argv[1:],
    ]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
