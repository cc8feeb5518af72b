"""Each stage against the real stack, chained forward as the pipeline chains them."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeops import tracking
from edgeops.benchmark import BenchmarkReport, benchmark
from edgeops.demo import http_get
from edgeops.errors import GateError, PromotionError, VerificationError
from edgeops.export import ExportedModels, export
from edgeops.ingest import DatasetInfo, ingest, load_splits
from edgeops.promote import manifest_key, promote
from edgeops.release import SigningKeyError
from edgeops.runtime import Program
from edgeops.settings import BenchmarkConfig, GateConfig, Settings, TrainConfig
from edgeops.storage import s3_client, sha256_bytes, sha256_file
from edgeops.train import TrainedModel, load_model, train
from edgeops.verify import MODEL_FILE, VerifiedModel, verify

from .conftest import free_ports

MODEL = "mat-occupancy-stage-tests"


@dataclass
class Chain:
    settings: Settings
    manifest: Path
    dirs: dict[str, Path]
    dataset: DatasetInfo
    trained: TrainedModel
    exported: ExportedModels
    report: BenchmarkReport
    verified: VerifiedModel


@pytest.fixture(scope="module")
def chain(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    settings = stack_settings.model_copy(
        update={
            "model_name": MODEL,
            "experiment": "stage-tests",
            "train": TrainConfig(epochs=25),
            "benchmark": BenchmarkConfig(latency_runs=1000, warmup_runs=50),
        }
    )
    root = tmp_path_factory.mktemp("chain")
    manifest = root / "session" / "session.json"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "seroton-mat", manifest.parent)
    dirs = {name: root / name for name in ("ingest", "train", "export", "benchmark", "verify")}
    dataset = ingest(manifest, dirs["ingest"], settings)
    trained = train(dirs["ingest"], dirs["train"], settings)
    exported = export(dirs["ingest"], dirs["train"], dirs["export"], settings)
    report = benchmark(dirs["ingest"], dirs["train"], dirs["export"], dirs["benchmark"], settings)
    verified = verify(dirs["ingest"], dirs["export"], dirs["benchmark"], dirs["verify"], settings)
    return Chain(settings, manifest, dirs, dataset, trained, exported, report, verified)


def test_ingest_archives_raw_files_and_logs_the_dataset(chain: Chain) -> None:
    s3 = s3_client(chain.settings)
    for source in chain.dataset.sources:
        key = source.uri.removeprefix(f"s3://{chain.settings.raw_bucket}/")
        body = s3.get_object(Bucket=chain.settings.raw_bucket, Key=key)["Body"].read()
        assert sha256_bytes(body) == source.sha256 == sha256_bytes((chain.manifest.parent / source.file).read_bytes())
    stored = s3.get_object(Bucket="raw", Key=f"datasets/{chain.dataset.version}/dataset.json")["Body"].read()
    assert DatasetInfo.model_validate_json(stored).version == chain.dataset.version
    run = tracking.client(chain.settings).get_run(chain.dataset.run_id)
    inputs = {d.dataset.name: d.tags[0].value for d in run.inputs.dataset_inputs}
    version = chain.dataset.version
    assert inputs == {f"{version}-train": "training", f"{version}-val": "validation", f"{version}-test": "testing"}
    assert run.data.params["dataset.window"] == "8"


def test_train_normalises_with_training_statistics_and_logs_epochs(chain: Chain) -> None:
    _, model = load_model(chain.dirs["train"])
    x_train = torch.from_numpy(load_splits(chain.dirs["ingest"])["train"][0])
    features = model.features.differences(x_train).reshape(-1, 8)
    torch.testing.assert_close(model.features.mean, features.mean(dim=0))
    client = tracking.client(chain.settings)
    assert len(client.get_metric_history(chain.dataset.run_id, "val_loss")) == 25
    assert chain.trained.val_accuracy >= 0.9
    card = client.download_artifacts(chain.dataset.run_id, "model_card.md", tempfile.mkdtemp())
    assert "raw pressure in Pa" in Path(card).read_text()


def test_export_writes_two_programs_lowered_to_xnnpack(chain: Chain) -> None:
    fp32, int8 = chain.exported.fp32, chain.exported.int8
    assert int8.size_bytes < fp32.size_bytes
    assert int8.delegated_ops > 0 and fp32.delegated_ops > 0
    for program in (fp32, int8):
        path = chain.dirs["export"] / program.file
        assert sha256_file(path) == program.sha256
        assert Program(path).signature() == ([1, 8, 4], [1, 2])
    tags = tracking.client(chain.settings).get_run(chain.dataset.run_id).data.tags
    assert tags["int8_sha256"] == int8.sha256


def test_benchmark_is_consistent_and_logged(chain: Chain) -> None:
    y_test = load_splits(chain.dirs["ingest"])["test"][1]
    for name, result in chain.report.results.items():
        confusion = np.array(result.confusion)
        assert confusion.sum() == len(y_test) == chain.report.test_windows, name
        assert result.accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
        assert result.latency.runs == 1000
        assert 0 < result.latency.p50_ms <= result.latency.p95_ms <= result.latency.p99_ms
    metrics = tracking.client(chain.settings).get_run(chain.dataset.run_id).data.metrics
    assert metrics["int8_accuracy"] == chain.report.results["int8"].accuracy
    assert metrics["int8_latency_p95_ms"] == chain.report.results["int8"].latency.p95_ms
    assert (chain.dirs["benchmark"] / "report.md").read_text().startswith("# Benchmark")


def test_verify_passes_the_real_model(chain: Chain) -> None:
    assert all(gate.passed for gate in chain.verified.gates)
    assert sha256_file(chain.dirs["verify"] / MODEL_FILE) == chain.exported.int8.sha256


def test_verify_names_the_failed_gate_and_the_margin(chain: Chain, tmp_path: Path) -> None:
    strict = chain.settings.model_copy(update={"gates": GateConfig(min_int8_accuracy=1.5, max_int8_size_bytes=100)})
    with pytest.raises(GateError) as error:
        verify(chain.dirs["ingest"], chain.dirs["export"], chain.dirs["benchmark"], tmp_path, strict)
    accuracy, size = chain.report.results["int8"].accuracy, chain.exported.int8.size_bytes
    message = str(error.value)
    assert f"min_int8_accuracy: {accuracy:.4g} (must be >= 1.5) FAILED by {1.5 - accuracy:.4g}" in message
    assert f"max_int8_size_bytes: {size:.4g} (must be <= 100) FAILED by {size - 100:.4g}" in message
    assert "max_int8_p95_ms" not in message
    assert not (tmp_path / MODEL_FILE).exists()


def test_verify_catches_an_artifact_tampered_in_the_store(chain: Chain, tmp_path: Path) -> None:
    import mlflow

    original = chain.dirs["export"] / chain.exported.int8.file
    tampered = tmp_path / "model_int8.pte"
    data = bytearray(original.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with tracking.resume_run(chain.settings, chain.dataset.run_id):
        mlflow.log_artifact(str(tampered), "executorch")
    try:
        with pytest.raises(VerificationError, match=r"executorch/model_int8\.pte from MLflow has sha256"):
            verify(
                chain.dirs["ingest"], chain.dirs["export"], chain.dirs["benchmark"], tmp_path / "out", chain.settings
            )
    finally:
        with tracking.resume_run(chain.settings, chain.dataset.run_id):
            mlflow.log_artifact(str(original), "executorch")


def read_manifest_http(settings: Settings) -> dict[str, object]:
    return dict(json.loads(http_get(settings.ota_url(manifest_key(MODEL)))))


def test_promote_publishes_object_then_manifest_and_moves_the_alias(chain: Chain, tmp_path: Path) -> None:
    first = promote(chain.dirs["verify"], tmp_path / "first", chain.settings)
    second = promote(chain.dirs["verify"], tmp_path / "second", chain.settings)
    assert second.version == first.version + 1
    assert second.release_version == first.release_version + 1
    assert second.model_key == first.model_key == f"{MODEL}/models/{chain.verified.sha256}.pte"
    manifest = read_manifest_http(chain.settings)
    assert manifest["version"] == second.release_version and manifest["registry_version"] == second.version
    assert manifest["sha256"] == chain.verified.sha256
    assert manifest["labels"] == ["empty_or_cat", "occupied"]
    assert manifest["input"] == {
        "shape": [1, 8, 4],
        "dtype": "float32",
        "units": "Pa",
        "layout": "[batch, frame, chamber], oldest frame first",
    }
    assert sha256_bytes(http_get(chain.settings.ota_url(second.model_key))) == chain.verified.sha256
    alias = tracking.client(chain.settings).get_model_version_by_alias(MODEL, "production")
    assert alias.version == str(second.version) and alias.tags["sha256"] == chain.verified.sha256


def test_failed_promotion_leaves_the_previous_release_live(chain: Chain, tmp_path: Path) -> None:
    promote(chain.dirs["verify"], tmp_path / "live", chain.settings)
    before = read_manifest_http(chain.settings)
    (port,) = free_ports(1)
    unreachable = chain.settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(PromotionError, match="nothing was published"):
        promote(chain.dirs["verify"], tmp_path / "failed", unreachable)
    assert read_manifest_http(chain.settings) == before
    assert not (tmp_path / "failed").exists()


def test_promotion_without_signing_keys_changes_nothing(chain: Chain, tmp_path: Path) -> None:
    before = read_manifest_http(chain.settings)
    alias = tracking.client(chain.settings).get_model_version_by_alias(MODEL, "production").version
    keyless = chain.settings.model_copy(
        update={"release": chain.settings.release.model_copy(update={"keys_dir": tmp_path / "no-keys"})}
    )
    with pytest.raises(SigningKeyError, match="edgeops keys init"):
        promote(chain.dirs["verify"], tmp_path / "out", keyless)
    assert read_manifest_http(chain.settings) == before
    assert tracking.client(chain.settings).get_model_version_by_alias(MODEL, "production").version == alias


def test_promote_refuses_a_file_that_changed_after_verify(chain: Chain, tmp_path: Path) -> None:
    copy = tmp_path / "verified"
    shutil.copytree(chain.dirs["verify"], copy)
    (copy / MODEL_FILE).write_bytes(b"not the verified model")
    with pytest.raises(PromotionError, match="does not match the verified sha256"):
        promote(copy, tmp_path / "out", chain.settings)
