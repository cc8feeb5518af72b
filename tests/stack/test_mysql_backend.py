"""MLflow on a real MariaDB backend store: the pipeline's own stage code, read back through MLflow and SQL.

A throwaway MariaDB server (`scripts/mariadb.py`) and a separate stack (SeaweedFS + MLflow
with `--backend-store-uri mysql+pymysql://…`) run on free loopback ports for this module.
Without MariaDB installed the module is skipped, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from edgeops.datasets.base import DatasetRecord
from edgeops.settings import BenchmarkConfig, Dataset, GateConfig, MatTrainConfig, Settings
from edgeops.stack import tracking
from edgeops.stages.benchmark import benchmark
from edgeops.stages.export import export
from edgeops.stages.ingest import ingest
from edgeops.stages.promote import Promotion, promote
from edgeops.stages.train import train
from edgeops.stages.verify import VerifiedModel, verify
from scripts import mariadb
from tests.conftest import MAT_DATA, free_ports, on_track, throwaway_stack

MODEL = "mat-occupancy-mysql"
EXPERIMENT = "mysql-backend"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@dataclass
class MySQLStack:
    settings: Settings
    server: mariadb.Server


@pytest.fixture(scope="module")
def mysql_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLStack]:
    """MariaDB on a free port, then SeaweedFS + MLflow using it; stopped in reverse order."""
    if not mariadb.installed():
        message = "MariaDB is not installed (no mariadbd/mysqld); run `make mysql-server`"
        if _in_ci():
            pytest.fail(f"{message} (CI is set, so this test must not be skipped)", pytrace=False)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("mysql")
    (db_port,) = free_ports(1)
    server = mariadb.start(root / "mariadb" / "data", db_port)
    try:
        with throwaway_stack(root, mlflow_backend_store_uri=SecretStr(server.uri)) as settings:
            yield MySQLStack(settings, server)
    finally:
        mariadb.stop(server)


@dataclass
class Promoted:
    settings: Settings
    server: mariadb.Server
    dataset: DatasetRecord
    verified: VerifiedModel
    promotion: Promotion


@pytest.fixture(scope="module")
def promoted(mysql_stack: MySQLStack, tmp_path_factory: pytest.TempPathFactory) -> Promoted:
    """ingest -> train -> export -> benchmark -> verify -> promote, all tracked in MariaDB."""
    settings = on_track(
        mysql_stack.settings.model_copy(update={"benchmark": BenchmarkConfig(latency_runs=200, warmup_runs=20)}),
        model_name=MODEL,
        experiment=EXPERIMENT,
        train=MatTrainConfig(epochs=3),
        gates=GateConfig(min_int8_accuracy=0.0, max_int8_accuracy_drop=1.0),
    )
    root = tmp_path_factory.mktemp("mysql-chain")
    manifest = root / "session" / "session.json"
    shutil.copytree(MAT_DATA, manifest.parent)
    dirs = {name: root / name for name in ("ingest", "train", "export", "benchmark", "verify", "promote")}
    dataset = ingest(Dataset.mat, dirs["ingest"], settings, manifest)
    train(dirs["ingest"], dirs["train"], settings)
    export(dirs["ingest"], dirs["train"], dirs["export"], settings)
    benchmark(dirs["ingest"], dirs["train"], dirs["export"], dirs["benchmark"], settings)
    verified = verify(dirs["ingest"], dirs["export"], dirs["benchmark"], dirs["verify"], settings)
    promotion = promote(dirs["verify"], dirs["promote"], settings)
    return Promoted(settings, mysql_stack.server, dataset, verified, promotion)


def test_the_mlflow_server_uses_the_mariadb_backend(mysql_stack: MySQLStack) -> None:
    backend = mysql_stack.settings.mlflow_backend_store_uri
    assert backend is not None and backend.get_secret_value().startswith("mysql+pymysql://")
    assert not (mysql_stack.settings.state_dir / "mlflow" / "mlflow.db").exists()
    with mysql_stack.server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = {row[0] for row in cursor.fetchall()}
    assert {"experiments", "runs", "metrics", "params", "tags", "model_versions", "registered_model_aliases"} <= tables


def test_run_reads_back_through_mlflow(promoted: Promoted) -> None:
    run = tracking.client(promoted.settings).get_run(promoted.dataset.run_id)
    assert run.info.run_id == promoted.verified.run_id
    assert run.data.params["dataset.window"] == "8"
    assert run.data.metrics["int8_accuracy"] == pytest.approx(promoted.verified.metrics["int8_accuracy"])
    assert run.data.tags["int8_sha256"] == promoted.verified.sha256
    assert run.data.tags["promoted_version"] == str(promoted.promotion.version)
    assert len(tracking.client(promoted.settings).get_metric_history(run.info.run_id, "val_loss")) == 3


def test_registry_alias_reads_back_through_mlflow(promoted: Promoted) -> None:
    client = tracking.client(promoted.settings)
    alias = client.get_model_version_by_alias(MODEL, "production")
    assert alias.version == str(promoted.promotion.version)
    assert alias.run_id == promoted.dataset.run_id
    assert alias.tags["sha256"] == promoted.verified.sha256


def test_run_and_alias_are_rows_in_mariadb(promoted: Promoted) -> None:
    run_id = promoted.dataset.run_id
    with promoted.server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.status, e.name FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE r.run_uuid = %s",
            (run_id,),
        )
        assert cursor.fetchall() == (("FINISHED", EXPERIMENT),)
        cursor.execute("SELECT value FROM params WHERE run_uuid = %s AND `key` = 'dataset.window'", (run_id,))
        assert cursor.fetchall() == (("8",),)
        cursor.execute("SELECT value FROM tags WHERE run_uuid = %s AND `key` = 'int8_sha256'", (run_id,))
        assert cursor.fetchall() == ((promoted.verified.sha256,),)
        cursor.execute("SELECT value FROM latest_metrics WHERE run_uuid = %s AND `key` = 'int8_accuracy'", (run_id,))
        (accuracy,) = cursor.fetchone()
        assert accuracy == pytest.approx(promoted.verified.metrics["int8_accuracy"])
        cursor.execute(
            "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'production'", (MODEL,)
        )
        assert cursor.fetchall() == ((promoted.promotion.version,),)
        cursor.execute(
            "SELECT run_id FROM model_versions WHERE name = %s AND version = %s", (MODEL, promoted.promotion.version)
        )
        assert cursor.fetchall() == ((run_id,),)
