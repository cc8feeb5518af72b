"""Each stage against the real stack, chained forward as the pipeline chains them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeops.datasets.base import load_splits
from edgeops.datasets.mat import MatDatasetRecord
from edgeops.errors import GateError, PromotionError, VerificationError
from edgeops.files import sha256_bytes, sha256_file
from edgeops.ota.keys import SigningKeyError
from edgeops.ota.release import manifest_key
from edgeops.pipeline.demo import http_get
from edgeops.runtime import Program
from edgeops.settings import BenchmarkConfig, Dataset, GateConfig, MatTrainConfig, Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import get_if_present, s3_client
from edgeops.stages.benchmark import BenchmarkReport, benchmark, slug
from edgeops.stages.export import ExportedModels, export
from edgeops.stages.ingest import ingest
from edgeops.stages.promote import promote
from edgeops.stages.train import TrainedModel, load_model, train
from edgeops.stages.verify import MODEL_FILE, PATH_METRIC, VerifiedModel, choose, verify
from tests.conftest import MAT_DATA, free_ports, on_track

MODEL = "mat-occupancy-stage-tests"


@dataclass
class Chain:
    settings: Settings
    manifest: Path
    dirs: dict[str, Path]
    dataset: MatDatasetRecord
    trained: TrainedModel
    exported: ExportedModels
    report: BenchmarkReport
    verified: VerifiedModel


@pytest.fixture(scope="module")
def chain(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    settings = on_track(
        stack_settings.model_copy(update={"benchmark": BenchmarkConfig(latency_runs=1000, warmup_runs=50)}),
        model_name=MODEL,
        experiment="stage-tests",
        train=MatTrainConfig(epochs=25),
    )
    root = tmp_path_factory.mktemp("chain")
    manifest = root / "session" / "session.json"
    shutil.copytree(MAT_DATA, manifest.parent)
    dirs = {name: root / name for name in ("ingest", "train", "export", "benchmark", "verify")}
    dataset = ingest(Dataset.mat, dirs["ingest"], settings, manifest)
    assert isinstance(dataset, MatDatasetRecord)
    trained = train(dirs["ingest"], dirs["train"], settings)
    exported = export(dirs["ingest"], dirs["train"], dirs["export"], settings)
    report = benchmark(dirs["ingest"], dirs["train"], dirs["export"], dirs["benchmark"], settings)
    verified = verify(dirs["ingest"], dirs["export"], dirs["benchmark"], dirs["verify"], settings)
    return Chain(settings, manifest, dirs, dataset, trained, exported, report, verified)


def test_a_run_resumes_whichever_experiment_the_process_last_started_a_run_in(stack_settings: Settings) -> None:
    """Stages and benchmarks resume runs of several experiments (and servers) in one process."""
    import mlflow

    with tracking.start_run(stack_settings, "resume-first", run_name="first") as run:
        first_run_id = run.info.run_id
    with tracking.start_run(stack_settings, "resume-second", run_name="second"):
        pass
    with tracking.resume_run(stack_settings, first_run_id):
        mlflow.log_metric("resumed", 1.0)
    assert tracking.client(stack_settings).get_run(first_run_id).data.metrics["resumed"] == 1.0
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ  # child processes (KFP tasks) must not inherit a stale id


def test_ingest_archives_raw_files_and_logs_the_dataset(chain: Chain) -> None:
    s3 = s3_client(chain.settings)
    for source in chain.dataset.sources:
        key = source.uri.removeprefix(f"s3://{chain.settings.raw_bucket}/")
        body = s3.get_object(Bucket=chain.settings.raw_bucket, Key=key)["Body"].read()
        assert sha256_bytes(body) == source.sha256 == sha256_bytes((chain.manifest.parent / source.file).read_bytes())
    stored = s3.get_object(Bucket="raw", Key=f"datasets/{chain.dataset.version}/dataset.json")["Body"].read()
    assert MatDatasetRecord.model_validate_json(stored).version == chain.dataset.version
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
    card = Path(client.download_artifacts(chain.dataset.run_id, "model_card.md", tempfile.mkdtemp())).read_text()
    assert "`[1, 8, 4]` [batch, frame, chamber], oldest frame first; Pa" in card
    assert "mat-mlp" in card


def test_export_writes_fp32_and_one_int8_candidate_per_strategy(chain: Chain) -> None:
    fp32, candidates = chain.exported.fp32, chain.exported.candidates
    assert list(candidates) == ["ptq_per_tensor", "ptq_per_channel", "qat"]
    tags = tracking.client(chain.settings).get_run(chain.dataset.run_id).data.tags
    for strategy, int8 in candidates.items():
        assert int8.strategy == strategy and int8.size_bytes < fp32.size_bytes
        assert int8.delegated_ops > 0 and int8.seconds > 0
        assert tags[f"{strategy}_sha256"] == int8.sha256
    assert len({int8.sha256 for int8 in candidates.values()}) == 3  # three different programs
    for program in (fp32, *candidates.values()):
        path = chain.dirs["export"] / program.file
        assert sha256_file(path) == program.sha256
        assert Program(path).signature() == ([1, 8, 4], [1, 2])


def test_benchmark_is_consistent_and_logged(chain: Chain) -> None:
    y_test = load_splits(chain.dirs["ingest"])["test"][1]
    for name, result in chain.report.results.items():
        confusion = np.array(result.confusion)
        assert confusion.sum() == len(y_test) == chain.report.test_samples, name
        assert result.accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
        assert result.latency.runs == 1000
        assert 0 < result.latency.p50_ms <= result.latency.p95_ms <= result.latency.p99_ms
    metrics = tracking.client(chain.settings).get_run(chain.dataset.run_id).data.metrics
    for strategy in chain.exported.candidates:
        result = chain.report.results[f"int8_{strategy}"]
        assert metrics[f"int8_{strategy}_accuracy"] == result.accuracy
        assert metrics[f"int8_{strategy}_latency_p95_ms"] == result.latency.p95_ms
        assert set(chain.report.offset_accuracy[strategy]) == {"-1000 Pa", "+1000 Pa"}
    assert (chain.dirs["benchmark"] / "report.md").read_text().startswith("# Benchmark")


def test_benchmark_measures_every_candidate_on_every_kernel_path(chain: Chain) -> None:
    """Natively and under emulation (aarch64 always: `make kernel-paths` installs its runtime); a path that
    cannot run here is named with the reason, and the release carries every measured path's figure."""
    report, config = chain.report, chain.settings.kernel_paths
    paths = report.kernel_paths
    assert next(iter(paths)) == report.native_path and not paths[report.native_path].emulated
    assert any(path.emulated and name.startswith("aarch64") for name, path in paths.items()), report.skipped_paths
    assert len(paths) + len(report.skipped_paths) == 1 + len(config.emulated)
    keys = {f"int8_{strategy}" for strategy in chain.exported.candidates}
    for name, path in paths.items():
        assert set(path.candidates) == keys, name
        if path.emulated:
            assert path.samples == min(config.samples, report.test_samples) and path.seconds > 0
    # Integer kernels differ at most in requantization rounding: near-ties only, never a broken program.
    for path in paths.values():
        assert all(m.disagreements <= 0.01 * path.samples for m in path.candidates.values()), path
    for key in keys:
        graph = report.fake_quant[key]
        assert abs(graph.accuracy - report.results[key].accuracy) <= graph.disagreements / report.test_samples
    metrics = chain.verified.metrics
    assert {key for key in metrics if key.startswith(PATH_METRIC)} == {PATH_METRIC + slug(name) for name in paths}
    assert metrics["int8_accuracy_worst_path"] == min(report.path_accuracy(chain.verified.strategy).values())
    assert "## INT8 accuracy on each CPU kernel path" in (chain.dirs["benchmark"] / "report.md").read_text()


def test_benchmark_records_the_export_and_the_bytes_it_measured(chain: Chain) -> None:
    exported = {"fp32": chain.exported.fp32, **{f"int8_{s}": p for s, p in chain.exported.candidates.items()}}
    recorded = BenchmarkReport.load(chain.dirs["benchmark"])
    assert {name: (m.file, m.sha256) for name, m in recorded.programs.items()} == {
        name: (p.file, p.sha256) for name, p in exported.items()
    }
    assert (recorded.run_id, recorded.dataset_version) == (chain.exported.run_id, chain.exported.dataset_version)


def test_verify_promotes_the_smallest_fastest_passing_candidate_and_says_why(chain: Chain) -> None:
    verified = chain.verified
    assert all(gate.passed for gate in verified.gates)
    chosen = chain.exported.candidates[verified.strategy]
    assert sha256_file(chain.dirs["verify"] / MODEL_FILE) == chosen.sha256 == verified.sha256
    verdicts = {verdict.strategy: verdict for verdict in verified.candidates}
    assert [v.strategy for v in verified.candidates if v.chosen] == [verified.strategy]
    assert all(verdict.reason for verdict in verdicts.values())
    tolerance = chain.settings.quantize.size_tolerance
    passing = [v for v in verdicts.values() if v.passed]
    smallest = min(v.size_bytes for v in passing)
    assert chosen.size_bytes <= smallest * (1 + tolerance)
    for verdict in passing:
        if verdict.size_bytes <= smallest * (1 + tolerance):
            assert verdicts[verified.strategy].p50_ms <= verdict.p50_ms
    metrics = tracking.client(chain.settings).get_run(chain.dataset.run_id).data.metrics
    assert metrics["int8_accuracy"] == chain.report.results[f"int8_{verified.strategy}"].accuracy
    assert tracking.client(chain.settings).get_run(chain.dataset.run_id).data.tags["int8_strategy"] == verified.strategy


def set_accuracy(report: BenchmarkReport, strategy: str, accuracy: float) -> None:
    """The candidate's accuracy, natively and on every kernel path."""
    report.results[f"int8_{strategy}"].accuracy = accuracy
    for path in report.kernel_paths.values():
        path.candidates[f"int8_{strategy}"].estimated_accuracy = accuracy


def test_choose_takes_the_smallest_then_the_fastest_and_skips_failures(chain: Chain) -> None:
    """The selection rule on the real records, with sizes, latencies and one accuracy set by hand."""
    exported, report = chain.exported.model_copy(deep=True), chain.report.model_copy(deep=True)
    sizes = {"ptq_per_tensor": 10_000, "ptq_per_channel": 10_100, "qat": 10_150}
    p50 = {"ptq_per_tensor": 0.5, "ptq_per_channel": 0.3, "qat": 0.2}
    for strategy in sizes:
        exported.candidates[strategy].size_bytes = sizes[strategy]
        report.results[f"int8_{strategy}"].latency.p50_ms = p50[strategy]
        set_accuracy(report, strategy, report.results["fp32"].accuracy)
    lenient = GateConfig(min_int8_accuracy=0.0, max_int8_accuracy_drop=1.0, max_int8_p95_ms=1e9, min_int8_size_ratio=0)

    verdicts = {v.strategy: v for v in choose(report, exported, lenient, size_tolerance=0.0)}
    assert [s for s, v in verdicts.items() if v.chosen] == ["ptq_per_tensor"]
    assert verdicts["qat"].reason == "passed, but larger: 10,150 bytes vs 10,000"

    # Within 1 % per-tensor and per-channel are equally small; per-channel is faster.
    verdicts = {v.strategy: v for v in choose(report, exported, lenient, size_tolerance=0.01)}
    assert [s for s, v in verdicts.items() if v.chosen] == ["ptq_per_channel"]
    assert verdicts["ptq_per_tensor"].reason == "passed, as small, but slower: p50 0.500 ms vs 0.300 ms"

    # Within 2 % QAT is as small and fastest, unless it fails a gate.
    set_accuracy(report, "qat", 0.5)
    strict = lenient.model_copy(update={"min_int8_accuracy": 0.9})
    verdicts = {v.strategy: v for v in choose(report, exported, strict, size_tolerance=0.02)}
    assert [s for s, v in verdicts.items() if v.chosen] == ["ptq_per_channel"]
    assert verdicts["qat"].reason.startswith("failed min_int8_accuracy: 0.5 on ")
    assert "(must be >= 0.9)" in verdicts["qat"].reason


def test_verify_names_the_failed_gate_and_the_margin(chain: Chain, tmp_path: Path) -> None:
    strict = GateConfig(min_int8_accuracy=1.5, max_int8_size_bytes=100)
    with pytest.raises(GateError) as error:
        verify(chain.dirs["ingest"], chain.dirs["export"], chain.dirs["benchmark"], tmp_path, chain.settings, strict)
    message = str(error.value)
    assert message.startswith("no INT8 candidate passed the quality gates")
    for strategy, program in chain.exported.candidates.items():
        (path, accuracy), size = chain.report.worst_path(strategy), program.size_bytes
        assert (
            f"  - {strategy}: failed min_int8_accuracy: {accuracy:.4g} on {path} (must be >= 1.5) "
            f"FAILED by {1.5 - accuracy:.4g}" in message
        )
        assert f"max_int8_size_bytes: {size:.4g} (must be <= 100) FAILED by {size - 100:.4g}" in message
    assert "max_int8_p95_ms" not in message
    assert not (tmp_path / MODEL_FILE).exists()


def test_verify_catches_an_artifact_tampered_in_the_store(chain: Chain, tmp_path: Path) -> None:
    import mlflow

    original = chain.dirs["export"] / chain.exported.candidates[chain.verified.strategy].file
    tampered = tmp_path / original.name
    data = bytearray(original.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with tracking.resume_run(chain.settings, chain.dataset.run_id):
        mlflow.log_artifact(str(tampered), "executorch")
    try:
        with pytest.raises(VerificationError, match=rf"executorch/{original.name} from MLflow has sha256"):
            verify(
                chain.dirs["ingest"], chain.dirs["export"], chain.dirs["benchmark"], tmp_path / "out", chain.settings
            )
    finally:
        with tracking.resume_run(chain.settings, chain.dataset.run_id):
            mlflow.log_artifact(str(original), "executorch")


def edited_benchmark(chain: Chain, directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the chain's benchmark directory with its record edited."""
    shutil.copytree(chain.dirs["benchmark"], directory)
    record = json.loads((directory / "benchmark.json").read_text())
    edit(record)
    (directory / "benchmark.json").write_text(json.dumps(record))
    return directory


def verify_refuses(chain: Chain, benchmark_dir: Path, out: Path) -> str:
    """Verify's refusal of `benchmark_dir`, checked to have written nothing."""
    tracker = tracking.client(chain.settings)
    gate_metric = "gate_int8_qat_min_int8_accuracy_passed"
    tags = tracker.get_run(chain.dataset.run_id).data.tags
    logged = len(tracker.get_metric_history(chain.dataset.run_id, gate_metric))
    with pytest.raises(VerificationError) as error:
        verify(chain.dirs["ingest"], chain.dirs["export"], benchmark_dir, out, chain.settings)
    assert not out.exists()
    assert tracker.get_run(chain.dataset.run_id).data.tags == tags
    assert len(tracker.get_metric_history(chain.dataset.run_id, gate_metric)) == logged
    return str(error.value)


@pytest.mark.parametrize(
    ("field", "stale"),
    [
        ("programs.int8_qat.sha256", "0" * 64),
        ("programs.fp32.sha256", "1" * 64),
        ("run_id", "run-of-another-export"),
        ("dataset_version", "another-dataset-version"),
    ],
)
def test_verify_refuses_a_benchmark_of_another_export(chain: Chain, tmp_path: Path, field: str, stale: str) -> None:
    """A benchmark left from another export must not judge this one, whatever differs."""
    *parents, key = field.split(".")
    current: list[str] = []

    def edit(record: dict[str, Any]) -> None:
        for parent in parents:
            record = record[parent]
        current.append(record[key])
        record[key] = stale

    benchmark_dir = edited_benchmark(chain, tmp_path / "benchmark", edit)
    message = verify_refuses(chain, benchmark_dir, tmp_path / "out")
    export_dir = chain.dirs["export"]
    assert message == (
        f"the benchmark in {benchmark_dir} did not measure the export in {export_dir}:\n"
        f"  - {field} differs: {stale} in {benchmark_dir / 'benchmark.json'}, "
        f"{current[0]} in {export_dir / 'export.json'}\n"
        f"Re-run benchmark on this export ({export_dir}), then verify again."
    )


def test_verify_refuses_a_benchmark_that_did_not_measure_a_candidate(chain: Chain, tmp_path: Path) -> None:
    benchmark_dir = edited_benchmark(chain, tmp_path / "benchmark", lambda record: record["programs"].pop("int8_qat"))
    message = verify_refuses(chain, benchmark_dir, tmp_path / "out")
    assert f"  - programs.int8_qat.sha256 differs: (not measured) in {benchmark_dir / 'benchmark.json'}" in message


def test_verify_refuses_a_benchmark_record_that_predates_hashes(chain: Chain, tmp_path: Path) -> None:
    benchmark_dir = edited_benchmark(chain, tmp_path / "benchmark", lambda record: record.pop("programs"))
    message = verify_refuses(chain, benchmark_dir, tmp_path / "out")
    assert message == (
        f"{benchmark_dir / 'benchmark.json'} has no programs: it was written before benchmarks recorded which "
        f"export they measured, so its numbers cannot be tied to {chain.dirs['export']}. "
        f"Re-run benchmark on this export ({chain.dirs['export']}), then verify again."
    )


def test_benchmark_hashes_the_bytes_it_loads_so_verify_refuses_a_swapped_program(chain: Chain, tmp_path: Path) -> None:
    """A `.pte` replaced after export is benchmarked under its own hash, not the one export recorded."""
    export_dir = tmp_path / "export"
    shutil.copytree(chain.dirs["export"], export_dir)
    qat, per_tensor = chain.exported.candidates["qat"], chain.exported.candidates["ptq_per_tensor"]
    shutil.copyfile(export_dir / per_tensor.file, export_dir / qat.file)
    # A run of its own, so this benchmark's metrics do not overwrite the chain's.
    with tracking.start_run(chain.settings, "stage-tests", run_name="swapped-program") as run:
        chain.exported.model_copy(update={"run_id": run.info.run_id}).save(export_dir)
    quick = chain.settings.model_copy(update={"benchmark": BenchmarkConfig(latency_runs=10, warmup_runs=1)})
    report = benchmark(chain.dirs["ingest"], chain.dirs["train"], export_dir, tmp_path / "benchmark", quick)
    assert report.programs["int8_qat"].sha256 == per_tensor.sha256 != qat.sha256
    with pytest.raises(VerificationError) as error:
        verify(chain.dirs["ingest"], export_dir, tmp_path / "benchmark", tmp_path / "out", quick)
    assert f"  - programs.int8_qat.sha256 differs: {per_tensor.sha256} in " in str(error.value)
    assert f", {qat.sha256} in {export_dir / 'export.json'}" in str(error.value)
    assert not (tmp_path / "out").exists()


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


def test_promote_refuses_a_model_under_another_tracks_name(chain: Chain, tmp_path: Path) -> None:
    other = chain.settings.pmd.model_name
    with pytest.raises(PromotionError, match=f"{other} is the pmd track's model name; refusing to publish a mat model"):
        promote(chain.dirs["verify"], tmp_path / "out", chain.settings, model_name=other)
    s3 = s3_client(chain.settings)
    assert get_if_present(s3, chain.settings.ota_bucket, f"{other}/metadata/timestamp.json") is None
    assert not (tmp_path / "out").exists()
