"""Benchmarks beside the pipeline; they measure and print, and gate nothing.

- `production` (`make bench`): the production model under ExecuTorch, ONNX Runtime (`onnx`) and eager
  PyTorch, compared by `peer` and reported by `peer_report`;
- `loso` (`make bench-loso`): leave-one-subject-out on PMD;
- `ota` (`make bench-ota`): seconds from a promotion to the new model running on a polling agent.
"""
