"""edgeops: pressure-mat recordings to a verified INT8 ExecuTorch model, delivered over the air.

Wings, from the edge of the system inwards (docs/architecture.md draws them):

- `cli`: the `edgeops` command, one module per command group.
- `bench`: benchmarks beside the pipeline (ExecuTorch vs ONNX Runtime, leave-one-subject-out, OTA latency).
- `pipeline`: running the compiled KFP pipeline (local runner, cluster) and `make demo`.
- `stages`: ingest -> train -> export -> benchmark -> verify -> promote, plain functions KFP wraps.
- `device`: the edge agent and the mat's BLE side; never imports the training side.
- `quantize`: PTQ, QAT and lowering to XNNPACK.  `ota`: signed releases (TUF).
- `models`: the networks and how they are fitted.  `datasets`: the mat and PMD tracks.
- `stack`: the local S3 + MLflow services and access to them.

Shared by all: `settings` (every knob, the track table), `errors`, `files` (hashes, atomic writes),
`records` (what a stage leaves behind), `runtime` (the ExecuTorch runtime), `latency` (measurement).
"""
