"""The smoke test: a new model must load in the ExecuTorch runtime and reproduce the output it was released with."""

from __future__ import annotations

from pathlib import Path

from edgeops.errors import EdgeopsError
from edgeops.ota.release import Release


class SmokeTestError(EdgeopsError):
    """The model loads but does not compute what was released."""


def smoke_test(path: Path, release: Release, tolerance: float) -> None:
    """Raise unless the program at `path` has the release's shapes and, on its reference input,
    gives its reference output to within `tolerance` (INT8 kernels differ a little across CPUs)."""
    from edgeops.runtime import reproduction_error

    difference = reproduction_error(
        path, release.input["shape"], release.output["shape"], release.reference_input, release.reference_output
    )
    if difference > tolerance:
        raise SmokeTestError(
            f"output on the reference input differs from the released output by {difference:.4g} "
            f"(tolerance {tolerance})"
        )
