"""The network's own normalisation: raw Pa in, training-split statistics inside, weather-proof."""

from __future__ import annotations

import torch

from edgeops.models.nets import MatOccupancyNet, ModelSpec

SPEC = ModelSpec(
    architecture="mat-mlp",
    dataset="mat",
    labels=["empty_or_cat", "occupied"],
    input_shape=[1, 8, 4],
    input_units="Pa",
    input_layout="[batch, frame, chamber]",
    hidden=16,
)
WINDOW, CHANNELS = SPEC.input_shape[1:]


def pressures(n: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 98_000 + 500 * torch.rand(n, WINDOW, CHANNELS, generator=generator)


def test_statistics_come_from_the_data_they_are_fitted_on() -> None:
    model = MatOccupancyNet(SPEC)
    x = pressures()
    model.features.fit(x)
    features = model.features(x).reshape(-1, 2 * CHANNELS)
    torch.testing.assert_close(features.mean(dim=0), torch.zeros(2 * CHANNELS), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(dim=0), torch.ones(2 * CHANNELS), atol=1e-3, rtol=0)
    assert {"features.mean", "features.std"} <= set(model.state_dict())  # exported with the weights


def test_common_pressure_offset_does_not_change_the_output() -> None:
    model = MatOccupancyNet(SPEC).eval()
    x = pressures()
    model.features.fit(x)
    with torch.inference_mode():
        for offset in (-1500.0, 800.0):
            torch.testing.assert_close(model(x + offset), model(x), atol=1e-3, rtol=1e-3)


def test_a_chamber_difference_does_change_the_output() -> None:
    model = MatOccupancyNet(SPEC).eval()
    x = pressures()
    model.features.fit(x)
    shifted = x.clone()
    shifted[:, :, 0] += 800.0
    with torch.inference_mode():
        assert not torch.allclose(model(shifted), model(x), atol=1e-3)


def test_posture_net_takes_raw_one_channel_maps_and_carries_its_normalisation() -> None:
    from edgeops.models.nets import PostureNet

    torch.manual_seed(0)
    model = PostureNet(classes=3, full_scale=4095.0)
    frames = torch.rand(16, 1, 64, 32) * 600
    model.fit(frames)
    assert 0.0 < float(model.mean) < 0.2 and float(model.std) > 0
    model.eval()
    assert model(frames[:1]).shape == (1, 3)
    assert model.network.features[0][0].in_channels == 1
    # Saturated readings are clipped to full scale, not extrapolated.
    assert torch.equal(model(torch.full((1, 1, 64, 32), 9000.0)), model(torch.full((1, 1, 64, 32), 4095.0)))
    assert set(model.state_dict()) >= {"mean", "std"}
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 2_400_000
