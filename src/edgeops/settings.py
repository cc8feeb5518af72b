"""Every knob of edgeops in one typed place.

Values come from defaults here, then environment variables (`EDGEOPS_*`, nested
groups with `__`, e.g. `EDGEOPS_MAT__GATES__MIN_INT8_ACCURACY=0.97`), then CLI flags.
KFP components read the same object from their environment, so the local runner
and a cluster differ only in the environment they hand to each task.

The two tracks (mat, pmd) are rows of one table: `settings.mat` and `settings.pmd`
hold each track's model name, MLflow experiment, architecture, gates, data and
training recipe, and `settings.track(dataset)` picks the row a run uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeops.errors import InputError
from edgeops.images import COMPONENT_IMAGE

CREDENTIALS_FILE = "credentials.json"


class Dataset(StrEnum):
    """The tracks: which data a pipeline run reads."""

    mat = "mat"  # BLE recordings of the haptic mat
    pmd = "pmd"  # PhysioNet pressure maps


class Architecture(StrEnum):
    """The networks a track trains."""

    mat_mlp = "mat-mlp"
    mobilenet_v2 = "mobilenet_v2"


class Strategy(StrEnum):
    """Quantization strategies the export stage can produce; verify promotes one of them."""

    ptq_per_tensor = "ptq_per_tensor"
    ptq_per_channel = "ptq_per_channel"
    qat = "qat"


Choice = TypeVar("Choice", bound=StrEnum)
CHOICE_NAMES: dict[type[StrEnum], tuple[str, str]] = {
    Dataset: ("dataset", "datasets"),
    Architecture: ("model", "models"),
    Strategy: ("quantization strategy", "strategies"),
}


def parse_choice(kind: type[Choice], value: str) -> Choice:
    """`value` as a member of `kind`, or an InputError naming every choice.

    For strings from outside the CLI (KFP parameters, files); typer checks its own Enum options.
    """
    try:
        return kind(value)
    except ValueError:
        name, names = CHOICE_NAMES[kind]
        raise InputError([f"unknown {name} '{value}' ({names}: {', '.join(kind)})"]) from None


# Model names and channels become S3 keys, TUF target paths and directory names: one safe shape for all.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def check_name(field: str, value: str) -> str:
    """`value` if it is a valid model name or channel, else an InputError naming `field`."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InputError(
            [
                f"{field} {value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
                "starting with a letter or digit"
            ]
        )
    return value


def check_sha256(field: str, value: str) -> str:
    """`value` if it is 64 lowercase hex digits (safe as a file name), else an InputError naming `field`."""
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise InputError([f"{field} {value!r} is not a sha256 (64 lowercase hex digits)"])
    return value


class MatDataConfig(BaseModel):
    """How mat recordings become windows. Part of the dataset version hash."""

    labels: list[str] = ["empty_or_cat", "occupied"]
    timestamp_column: str = "Timestamp"
    channel_columns: list[str] = ["Float1", "Float2", "Float3", "Float4"]
    timestamp_format: str = "%Y-%m-%d %H:%M:%S.%f"
    min_pa: float = 80_000.0
    max_pa: float = 120_000.0
    window: int = Field(8, ge=2, description="consecutive frames per sample (~1.3 s at 6.3 Hz)")
    stride: int = Field(1, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class PmdDataConfig(BaseModel):
    """PhysioNet PMD experiment-i, the in-bed pressure maps. The data stays outside the repository."""

    root: Path = Path("../shared/data/pmd")
    experiment: str = "experiment-i"
    release_url: str = "https://physionet.org/files/pmd/1.0.0/"
    # Where `edgeops data upload pmd` puts a copy of `root` in the raw bucket (the same layout, SHA256SUMS.txt
    # last), and where ingest fetches the chosen subjects from when `root` holds no data, as in a cluster pod.
    bucket_prefix: str = "sources/pmd"
    rows: int = 64
    cols: int = 32
    # Sensor full scale: the PhysioNet README says 0-1000, but the files are 12-bit (69 % of frames
    # exceed 1000; 820 cells sit at 4095). The exported model takes raw values and normalises inside.
    max_value: float = 4095.0
    label_set: Literal["posture3", "posture17"] = "posture3"
    subjects: list[str] = [f"S{n}" for n in range(1, 11)]
    test_subjects: list[str] = ["S9", "S10"]
    # None: the recipe keeps the last epoch, so a validation subject would choose nothing and only
    # cost the network a person to learn from. Name one to watch validation loss (or to choose by it).
    val_subjects: list[str] = []


class GateConfig(BaseModel):
    """Thresholds verify enforces before anything may be promoted (the mat track's defaults)."""

    min_int8_accuracy: float = 0.98
    max_int8_accuracy_drop: float = 0.005
    max_int8_p95_ms: float = 5.0
    max_int8_size_bytes: int = 1_000_000
    min_int8_size_ratio: float = Field(1.0, description="FP32 .pte bytes / INT8 .pte bytes")
    max_int8_bytes_per_param: float = Field(0.0, ge=0, description="INT8 .pte bytes per parameter; 0 = unchecked")

    def overridden(self, overrides: Mapping[str, Any]) -> Self:
        """These gates with some replaced by name (a pipeline parameter); an unknown name or a bad value is an
        InputError, never silently ignored."""
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            known = ", ".join(type(self).model_fields)
            raise InputError([f"unknown gate '{name}' (gates: {known})" for name in unknown])
        try:
            return self.model_validate(self.model_dump() | dict(overrides))
        except ValidationError as error:
            raise InputError([f"gate {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]) from None


class PmdGateConfig(GateConfig):
    """The pressure-image track's gates. A class of its own, so overriding one field keeps the others' defaults."""

    # Stern & Fekr (2023) report 97.8 % leave-one-subject-out; INT8 must be >= 3.5x smaller than FP32
    # and lose at most 0.3 points to it on any CPU kernel path measured.
    min_int8_accuracy: float = 0.978
    max_int8_accuracy_drop: float = 0.003
    max_int8_p95_ms: float = 20.0
    max_int8_size_bytes: int = 4_000_000
    min_int8_size_ratio: float = 3.5
    max_int8_bytes_per_param: float = 1.15


class MatTrainConfig(BaseModel):
    """The mat MLP's recipe."""

    seed: int = 7
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    hidden: int = Field(32, ge=2)
    threads: int = Field(0, ge=0, description="torch threads while training; 0 = torch's default")


class PostureTrainConfig(BaseModel):
    """MobileNetV2 on pressure maps, from scratch. Augmentation touches the training split only."""

    seed: int = 7
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0, description="peak of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    # torchvision's width multiplier. 0.5 (0.69 M parameters) generalised to unseen subjects better than
    # 1.0 (2.2 M) in our runs and trains in under half the time.
    width_mult: float = Field(0.5, gt=0)
    # Consecutive frames of one posture file are near-duplicates: each epoch trains on every k-th,
    # starting one frame further along each time, so the run still sees every frame.
    train_stride: int = Field(3, ge=1)
    # Sensor-respecting augmentation: a person lies a little up/down/sideways, heavier or lighter.
    max_shift_rows: int = Field(3, ge=0)
    max_shift_cols: int = Field(2, ge=0)
    min_scale: float = Field(0.8, gt=0)
    max_scale: float = Field(1.25, gt=0)
    noise_std: float = Field(20.0, ge=0, description="sensor units, on loaded cells only")
    mirror: bool = True  # half the samples mirrored left-right, 'right' and 'left' labels swapped
    # A band of this many rows across the mat reads empty on `band_share` of the samples: knees drawn up,
    # the head on a pillow, legs off the edge. The network must then read the posture from the rest of the body.
    band_rows: int = Field(24, ge=0)
    band_share: float = Field(0.5, ge=0, le=1)
    # The last epochs train with batch norm on its running statistics (edgeops.models.training.Recipe).
    # Off until leave-one-subject-out says it helps new subjects (docs/pmd.md); S9/S10 must not decide it.
    frozen_norm_epochs: int = Field(0, ge=0)
    # Keep the last epoch of the one-cycle schedule; False keeps the epoch with the lowest validation loss.
    # Leave-one-subject-out chose it (docs/pmd.md): the validation subject's favourite epoch cost new subjects.
    keep_last_epoch: bool = True
    threads: int = Field(0, ge=0, description="torch threads while training; 0 = torch's default")


class TrackConfig(BaseModel):
    """One row of the track table: what a run of the track is called, which network it trains, what it must pass.

    Each track is a subclass with its own defaults, so overriding one field (by environment
    variable or pipeline parameter) keeps the others of the same track, never another track's.
    """

    dataset: Dataset
    model_name: str  # registered model and OTA prefix
    experiment: str  # MLflow experiment of the track's runs
    architecture: Architecture
    gates: GateConfig
    held_out: str  # what the test split holds, for summaries
    data: MatDataConfig | PmdDataConfig
    train: MatTrainConfig | PostureTrainConfig
    # The INT8 candidates export builds (plus the pruned one for MobileNetV2, settings.quantize.prune_keep).
    strategies: list[Strategy] = list(Strategy)


class MatTrack(TrackConfig):
    dataset: Literal[Dataset.mat] = Dataset.mat
    model_name: str = "mat-occupancy"
    experiment: str = "mat-occupancy"
    architecture: Architecture = Architecture.mat_mlp
    gates: GateConfig = GateConfig()
    held_out: str = "the newest time block of each recording"
    data: MatDataConfig = MatDataConfig()
    train: MatTrainConfig = MatTrainConfig()
    session_manifest: Path = Path("data/seroton-mat/session.json")  # the recordings `make demo` ingests


class PmdTrack(TrackConfig):
    dataset: Literal[Dataset.pmd] = Dataset.pmd
    model_name: str = "pmd-posture"
    experiment: str = "pmd-posture"
    architecture: Architecture = Architecture.mobilenet_v2
    gates: PmdGateConfig = PmdGateConfig()
    held_out: str = "subjects never seen in training"
    data: PmdDataConfig = PmdDataConfig()
    train: PostureTrainConfig = PostureTrainConfig()
    # Per-tensor PTQ only (and the pruned network). Leave-one-subject-out with nine training subjects chose it:
    # on the same ten networks PTQ kept FP32's accuracy on every subject (mean 0.9964), while QAT's fine-tuning
    # lost up to 2.2 points on some (mean 0.9911). Per-channel PTQ's 8 bytes of scales per output channel put
    # MobileNetV2 at 1.25 bytes per parameter, which verify refuses (docs/pmd.md).
    strategies: list[Strategy] = [Strategy.ptq_per_tensor]


class BenchmarkConfig(BaseModel):
    latency_runs: int = Field(1000, ge=1)
    warmup_runs: int = Field(100, ge=0)


class QuantizeConfig(BaseModel):
    """Which INT8 candidates export builds and how; verify promotes the smallest, fastest that passes the gates."""

    # PTQ's observers keep the min/max seen, so a new person's activations beyond the calibration frames'
    # range clip: on PMD, 1,000 frames lost 0.9 points on new subjects where every training frame lost 0.2.
    calibration_samples: int = Field(0, ge=0, description="training samples PTQ observes, evenly spaced; 0 = all")
    qat_epochs: int = Field(2, ge=1)
    qat_learning_rate: float = Field(1e-4, gt=0, description="peak, under qat_one_cycle")
    # Warm up to qat_learning_rate and anneal to zero, as the network was trained; a constant rate walked
    # the annealed weights off their minimum (one held-out subject: FP32 1.00, INT8 0.97 constant, 0.99 annealed).
    qat_one_cycle: bool = True
    qat_samples: int = Field(2400, ge=1, description="training samples per QAT epoch, evenly spaced")
    # Per-tensor QAT weights: XNNPACK stores 12 bytes of scale and zero point per channel, which at
    # MobileNetV2 width 0.5 costs 0.15 bytes per parameter; QAT recovers the accuracy per-tensor PTQ loses.
    qat_per_channel: bool = False
    qat_freeze_norm: bool = True  # fine-tune with batch norm on its running statistics
    # Per-channel weights for depthwise convolutions under the per-tensor strategies (edgeops.quantize.pt2e).
    depthwise_per_channel: bool = False
    # The pruned candidate (PMD's MobileNetV2 only): keep this share of each block's hidden channels
    # (0 = no pruned candidate), fine-tune, then quantize by `prune_strategy`.
    prune_keep: float = Field(0.75, ge=0, le=1)
    prune_strategy: Strategy = Strategy.ptq_per_tensor  # as PMD's own candidates (PmdTrack.strategies)
    prune_epochs: int = Field(2, ge=1, description="FP32 fine-tuning epochs after pruning")
    prune_learning_rate: float = Field(1e-3, gt=0, description="peak of the fine-tuning one-cycle schedule")
    # Export builds the candidates in parallel processes; 0 = one per CPU core.
    workers: int = Field(0, ge=0)
    # Candidates within this fraction of the smallest size count as equally small; the faster wins.
    size_tolerance: float = Field(0.02, ge=0)

    def calibration_count(self, available: int) -> int:
        """How many training samples PTQ observes, of `available`."""
        return min(available, self.calibration_samples or available)


KERNEL_PATH_ARCHES = ("aarch64", "x86_64")


class KernelPathConfig(BaseModel):
    """Which emulated CPU kernel paths the benchmark measures INT8 accuracy on (edgeops.quantize.kernel_paths)."""

    # Where `make kernel-paths` installs qemu's aarch64 python and wheels: outside the repository, shared by clones.
    runtime_dir: Path = Path.home() / ".cache" / "edgeops" / "emulated-runtime"
    # ARCH:QEMU_CPU_MODEL. cortex-a76 has a phone's NEON dotprod kernels; Haswell x86's AVX2 ones (only run
    # where the native CPU has AVX-512, else the native path is that path already).
    emulated: list[str] = ["aarch64:cortex-a76", "x86_64:Haswell"]
    samples: int = Field(400, ge=1, description="size of the fixed stratified test subset run under emulation")
    timeout_s: float = Field(1800.0, gt=0, description="for all emulated runs together, imports included")

    @field_validator("runtime_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("emulated")
    @classmethod
    def _arch_and_model(cls, value: list[str]) -> list[str]:
        for spec in value:
            arch, _, model = spec.partition(":")
            if arch not in KERNEL_PATH_ARCHES or not re.fullmatch(r"[A-Za-z0-9._-]+", model):
                raise ValueError(
                    f"{spec!r}: expected ARCH:QEMU_CPU_MODEL with ARCH one of {', '.join(KERNEL_PATH_ARCHES)}"
                )
        return value


class BleConfig(BaseModel):
    """The mat's BLE protocol (docs/ble-protocol.md) and how patiently we speak it."""

    tx_uuid: str = "6e400002-c352-11e5-953d-0002a5d5c51b"
    rx_uuid: str = "6e400003-c352-11e5-953d-0002a5d5c51b"
    start_command: str = "01d001"  # hex, written once after connecting
    poll_command: str = "01c001"  # hex, written every poll_interval_s
    poll_interval_s: float = Field(0.1, gt=0)
    start_delay_s: float = Field(1.0, ge=0)
    connect_timeout_s: float = Field(20.0, gt=0)
    # A session with no valid frame for this long has lost the mat.
    silence_timeout_s: float = Field(10.0, gt=0)
    record_duration_s: float = Field(60.0, gt=0)  # `edgeops record` default, like the original captures


class ReleaseConfig(BaseModel):
    """TUF metadata the publisher signs. Keys live outside the repository."""

    keys_dir: Path = Path.home() / ".config" / "edgeops" / "tuf-keys"
    # Who signs: `promote` itself (one machine), or the release signer (`edgeops release sign-requests`)
    # in a namespace of its own on a cluster, so that no pipeline task holds a key.
    signed_by: Literal["promote", "signer"] = "promote"
    # The root key, apart from the online keys: move it offline after `edgeops keys init`.
    root_key_dir: Path = Path.home() / ".config" / "edgeops" / "tuf-root-key"
    channels: list[str] = ["stable", "canary"]
    channel: str = "stable"
    # The share of the channel's devices promote publishes for: below 100, a staged rollout that
    # `edgeops rollout start` then widens step by step while the devices stay healthy (docs/fleet.md).
    rollout_percent: int = Field(100, ge=1, le=100)
    # Short timestamp expiry limits how long a frozen repository can fool a device;
    # `edgeops release heartbeat` re-signs it (run it from cron or a CronJob).
    timestamp_expiry_s: int = Field(86_400, ge=1)
    snapshot_expiry_s: int = Field(30 * 86_400, ge=1)
    targets_expiry_s: int = Field(90 * 86_400, ge=1)
    root_expiry_s: int = Field(365 * 86_400, ge=1)
    # `release heartbeat --all` re-signs a role once less than this share of its lifetime is left;
    # `release status` warns below `warn_remaining` of it (the heartbeat is not running), and for
    # the root, which only the offline key can renew, `root_warn_s` ahead.
    renew_remaining: float = Field(0.5, gt=0, lt=1)
    warn_remaining: float = Field(0.25, gt=0, lt=1)
    root_warn_s: int = Field(60 * 86_400, ge=0)


class AgentConfig(BaseModel):
    """The edge agent's defaults: a device beside the local stack, running the default model."""

    state_dir: Path = Path(".edgeops/agent")
    poll_interval_s: float = Field(10.0, gt=0)
    # Bounds a whole cycle: a trickling server cannot hold the agent (socket timeouts bound only gaps).
    cycle_deadline_s: float = Field(120.0, gt=0)
    socket_timeout_s: float = Field(10.0, gt=0)
    # Largest allowed difference between the new model's logits on the published
    # reference input and the logits recorded at release (INT8 kernels differ a little across CPUs).
    smoke_tolerance: float = Field(0.25, ge=0)


class FleetConfig(BaseModel):
    """Device telemetry: the MQTT broker, what agents report and how often, and the fleet service that stores it.

    On one machine the broker and the service are part of the local stack and bind `Settings.host`; a cluster
    sets `mqtt_host`, `http_host` and `database_url` (the chart's Mosquitto and MySQL).
    """

    mqtt_host: str = ""  # empty: Settings.host
    mqtt_port: int = 1883
    http_host: str = ""  # empty: Settings.host
    http_port: int = 8088
    # Empty: SQLite under the state dir; a cluster (or the MariaDB test) sets mysql+pymysql://…
    database_url: SecretStr | None = None
    # The fleet service's own broker identity; empty password: generated into the state dir by `edgeops up`.
    mqtt_username: str = "edgeops-fleet"
    mqtt_password: SecretStr | None = None
    # Who may write to the service's API (the rollout controller reporting its state); empty: generated into the
    # state dir (fleet/api-token.json, 0600), which the controller on the same machine reads too.
    api_token: SecretStr | None = None
    # Where `edgeops fleet add-device` writes a device's credentials (0600) and the agent looks for them;
    # empty: <state_dir>/fleet/devices.
    credentials_dir: Path | None = None
    # Agents: a heartbeat and inference statistics every `report_interval_s`; at most `queue_limit` messages
    # wait on disk while the broker is away (the oldest are dropped, and counted, beyond it).
    report_interval_s: float = Field(10.0, gt=0)
    queue_limit: int = Field(10_000, ge=1)
    in_flight: int = Field(100, ge=1, description="unacknowledged QoS 1 messages per device")
    keepalive_s: int = Field(30, ge=5)
    drain_timeout_s: float = Field(10.0, ge=0, description="an agent that stops waits this long to send its outbox")
    # The service refuses larger messages (the broker's own limit, message_size_limit, is 4x this).
    max_message_bytes: int = Field(65_536, ge=1024)
    # A message sent longer ago than this (by its own clock) is stale; later than this ahead is refused too.
    max_clock_skew_s: float = Field(300.0, gt=0)
    online_after_s: float = Field(30.0, gt=0, description="a device silent longer than this shows offline")
    rate_limit: str = "600/minute"  # per client address, on the HTTP API
    class_mix_bucket_s: int = Field(60, ge=1)
    class_mix_buckets: int = Field(60, ge=1)
    # Drift: each chamber's inputs in `drift_bins` equal bins over [drift_low_pa, drift_high_pa] (values outside
    # count in the end bins), compared with the training recordings' by the population stability index.
    drift_low_pa: float = 95_000.0
    drift_high_pa: float = 105_000.0
    drift_bins: int = Field(20, ge=2)
    drift_threshold: float = Field(0.2, gt=0, description="PSI above which a chamber is flagged")
    drift_min_samples: int = Field(2000, ge=1, description="fleet inputs in the window before a chamber is flagged")
    # Drift that starts a training run on the newest session in the raw bucket, at most once per cool-down; the
    # fleet service checks every `drift_check_s`. `local`: `edgeops pipeline run` beside the service (one machine);
    # `cluster`: the cluster pipeline submitted to Kubeflow Pipelines at `cluster.kfp_host`.
    retrain_on_drift: bool = True
    retrain_runner: Literal["local", "cluster"] = "local"
    retrain_cooldown_s: float = Field(6 * 3600.0, ge=0)
    drift_check_s: float = Field(30.0, gt=0)
    # `edgeops fleet simulate`: worker processes (0 = one per core) and each device's own noise, in Pa.
    simulate_workers: int = Field(0, ge=0)
    simulate_noise_pa: float = Field(5.0, ge=0)
    simulate_poll_interval_s: float = Field(60.0, gt=0)


class ClusterConfig(BaseModel):
    """How pipeline tasks are wired on a Kubeflow cluster (see manifests/ and helm/)."""

    kfp_host: str = "http://127.0.0.1:8080"  # `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`
    kfp_namespace: str = "kubeflow"
    pipeline_package: Path = Path("pipelines/edgeops_cluster.yaml")  # `edgeops pipeline submit`, drift retraining
    kind_cluster: str = "edgeops"
    helm_release: str = "edgeops"
    helm_namespace: str = "edgeops"
    # S3 identities (keys access_key, secret_key), copied by `make kfp-install` from the chart's
    # per-workload MinIO users, never its root user (docs/cluster-security.md):
    # `s3_secret`, the pipeline identity in kfp_namespace, reads and writes objects in the raw bucket (ingest;
    # which task gets it is `edgeops.pipeline.cluster.TASK_S3_IDENTITY`); `publisher_s3_secret` reads and
    # writes objects in the OTA bucket, for the release signer and heartbeat CronJobs in `edgeops-release`.
    s3_secret: str = "edgeops-s3-pipeline"
    publisher_s3_secret: str = "edgeops-s3-publisher"
    settings_config_map: str = "edgeops-settings"
    # The online TUF keys (targets, snapshot, timestamp) and the public roots, never the root key
    # (`make release-keys-secret`), mounted only by the release signer and the heartbeat in `edgeops-release`.
    release_keys_secret: str = "edgeops-release-keys"
    release_keys_mount: str = "/var/run/edgeops/release-keys"
    task_cpu_request: str = "500m"
    task_cpu_limit: str = "2"
    task_memory_request: str = "2Gi"
    task_memory_limit: str = "6Gi"


class Runner(StrEnum):
    subprocess = "subprocess"
    docker = "docker"


class LocalRunnerConfig(BaseModel):
    """How `edgeops pipeline run` and `edgeops demo` run the compiled pipeline on this machine.

    `subprocess`: every task in this virtualenv. `docker`: every task in the component image through
    KFP's DockerRunner, as the image's non-root user, read-only root filesystem, a tmpfs at /tmp,
    no capabilities, host networking to reach the local stack on 127.0.0.1. Containerized tasks
    hold no signing key: promote requests the release and this machine signs it, as on a cluster.
    """

    runner: Runner = Runner.subprocess
    tmpfs_size: str = "4g"  # /tmp in each task container: the state and out dirs, MLflow downloads
    shm_size: str = "1g"  # torch's shared memory


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEOPS_", env_nested_delimiter="__", extra="ignore")

    # Where things live on this machine.
    state_dir: Path = Path(".edgeops")
    out_dir: Path = Path("out")

    # Local stack: every service binds `host`.
    host: str = "127.0.0.1"
    s3_port: int = 9000
    mlflow_port: int = 5000
    seaweed_master_port: int = 9333
    seaweed_volume_port: int = 9340
    seaweed_filer_port: int = 9350
    minio_console_port: int = 9001
    mlflow_workers: int = 1
    # Empty means sqlite under the state dir; a cluster or the MySQL test sets mysql+pymysql://…
    mlflow_backend_store_uri: SecretStr | None = None
    startup_timeout_s: float = 180.0
    stop_timeout_s: float = 45.0

    # Endpoints; empty means "the local stack". A cluster sets both.
    s3_endpoint: str = ""
    mlflow_tracking_uri: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None

    raw_bucket: str = "raw"
    staging_bucket: str = "mlflow"
    ota_bucket: str = "ota"

    registry_alias: str = "production"
    pipeline_package: Path = Path("pipelines/edgeops.yaml")
    component_image: str = COMPONENT_IMAGE
    local_runner: LocalRunnerConfig = LocalRunnerConfig()

    # The track table.
    mat: MatTrack = MatTrack()
    pmd: PmdTrack = PmdTrack()

    quantize: QuantizeConfig = QuantizeConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    kernel_paths: KernelPathConfig = KernelPathConfig()
    cluster: ClusterConfig = ClusterConfig()
    ble: BleConfig = BleConfig()
    release: ReleaseConfig = ReleaseConfig()
    agent: AgentConfig = AgentConfig()
    fleet: FleetConfig = FleetConfig()

    def track(self, dataset: Dataset | str) -> MatTrack | PmdTrack:
        """The row of the track table a run of `dataset` uses."""
        return self.pmd if parse_choice(Dataset, dataset) == Dataset.pmd else self.mat

    def track_of(self, model_name: str) -> Dataset | None:
        """The track whose row names `model_name`, if any: that name publishes only that track's models."""
        return next((row.dataset for row in (self.mat, self.pmd) if row.model_name == model_name), None)

    @property
    def s3_url(self) -> str:
        return self.s3_endpoint or f"http://{self.host}:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @cached_property
    def credentials(self) -> tuple[str, str]:
        """S3 access key and secret: from the environment, else from the local stack's state."""
        if self.s3_access_key and self.s3_secret_key:
            return self.s3_access_key.get_secret_value(), self.s3_secret_key.get_secret_value()
        path = self.state_dir / CREDENTIALS_FILE
        if not path.exists():
            raise RuntimeError(
                f"no S3 credentials: set EDGEOPS_S3_ACCESS_KEY and EDGEOPS_S3_SECRET_KEY, "
                f"or start the local stack (`make up`), which writes {path}"
            )
        stored = json.loads(path.read_text())
        return stored["access_key"], stored["secret_key"]

    @property
    def mqtt_host(self) -> str:
        return self.fleet.mqtt_host or self.host

    @property
    def device_credentials_dir(self) -> Path:
        return self.fleet.credentials_dir or self.state_dir / "fleet" / "devices"

    @property
    def fleet_url(self) -> str:
        return f"http://{self.fleet.http_host or self.host}:{self.fleet.http_port}"

    def ota_url(self, key: str = "") -> str:
        """Plain-HTTP address a device uses for an object in the OTA bucket."""
        return f"{self.s3_url}/{self.ota_bucket}/{key}"
