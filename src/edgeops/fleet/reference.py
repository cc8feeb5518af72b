"""The training data's input distribution per chamber, binned as agents bin what their mats measure.

Drift is the population stability index between the fleet's recent inputs and these, per chamber:
PSI = sum over bins of (fleet - training) * ln(fleet / training), on bin fractions with empty bins
floored at `EPSILON`. Below 0.1 is usually read as no shift, above 0.2 (the default threshold) as a shift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeops.datasets.mat import read_recording
from edgeops.errors import InputError
from edgeops.settings import FleetConfig, MatDataConfig

EPSILON = 1e-4


def bin_edges(config: FleetConfig) -> list[float]:
    return [float(edge) for edge in np.linspace(config.drift_low_pa, config.drift_high_pa, config.drift_bins + 1)]


def recorded_pressures(manifest: Path, data: MatDataConfig) -> np.ndarray:
    """Every frame of a session's recordings, in order, [frames, chambers] in Pa."""
    try:
        recordings = json.loads(manifest.read_text())["recordings"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError([f"cannot read the training recordings' manifest {manifest}: {error}"]) from None
    return np.concatenate(
        [read_recording(manifest.parent / entry["file"], entry["label"], data).pressures for entry in recordings]
    )


def training_histograms(manifest: Path, data: MatDataConfig, config: FleetConfig) -> dict[str, list[float]]:
    """Per chamber, the fraction of the recordings' frames in each bin (values outside count in the end bins)."""
    pressures = recorded_pressures(manifest, data)
    edges = np.asarray(bin_edges(config))
    found = {}
    for index, name in enumerate(data.channel_columns):
        counts, _ = np.histogram(np.clip(pressures[:, index], edges[0], edges[-1]), bins=edges)
        found[name] = [float(c) / max(1, int(counts.sum())) for c in counts]
    return found


def psi(fleet: Sequence[float], training: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins (fractions or counts)."""
    fleet_total, training_total = sum(fleet) or 1.0, sum(training) or 1.0
    total = 0.0
    for observed, expected in zip(fleet, training, strict=True):
        p, q = max(observed / fleet_total, EPSILON), max(expected / training_total, EPSILON)
        total += (p - q) * math.log(p / q)
    return total
