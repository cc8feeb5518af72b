"""The mat-occupancy pipeline: ingest -> train -> export -> benchmark -> verify -> promote.

`make compile` (`python -m pipelines.mat_occupancy`) writes `mat_occupancy.yaml`
beside this file; the local runner and a Kubeflow cluster both run that YAML.
"""

from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Artifact

from components import stages
from edgeops.settings import GateConfig, Settings

DEFAULTS = Settings()
GATES = GateConfig()


@dsl.pipeline(
    name="mat-occupancy",
    description="Haptic-mat recordings to a verified INT8 ExecuTorch model in the OTA bucket.",
)
def mat_occupancy(
    session_manifest: str = str(DEFAULTS.session_manifest),
    model_name: str = DEFAULTS.model_name,
    min_int8_accuracy: float = GATES.min_int8_accuracy,
    max_int8_accuracy_drop: float = GATES.max_int8_accuracy_drop,
    max_int8_p95_ms: float = GATES.max_int8_p95_ms,
    max_int8_size_bytes: int = GATES.max_int8_size_bytes,
) -> Artifact:
    ingested = stages.ingest(session_manifest=session_manifest, model_name=model_name)
    trained = stages.train(dataset=ingested.outputs["dataset"])
    exported = stages.export(dataset=ingested.outputs["dataset"], model=trained.outputs["model"])
    measured = stages.benchmark(
        dataset=ingested.outputs["dataset"],
        model=trained.outputs["model"],
        executorch=exported.outputs["executorch"],
    )
    verified = stages.verify(
        dataset=ingested.outputs["dataset"],
        executorch=exported.outputs["executorch"],
        results=measured.outputs["results"],
        min_int8_accuracy=min_int8_accuracy,
        max_int8_accuracy_drop=max_int8_accuracy_drop,
        max_int8_p95_ms=max_int8_p95_ms,
        max_int8_size_bytes=max_int8_size_bytes,
    )
    promoted = stages.promote(verified=verified.outputs["verified"], model_name=model_name)
    for task in (ingested, trained, exported, measured, verified, promoted):
        task.set_caching_options(False)  # every stage talks to MLflow and S3: never replay a cached result
    return promoted.outputs["promotion"]


PACKAGE = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    compiler.Compiler().compile(mat_occupancy, str(PACKAGE))
    print(f"wrote {PACKAGE}")
