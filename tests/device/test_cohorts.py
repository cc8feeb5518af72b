"""Staged rollouts: a release signed for p % of a channel's devices reaches exactly the devices whose cohort
position (a hash of their id) is below p; the others keep, or get, the newest release that is for them."""

from __future__ import annotations

from pathlib import Path

from edgeops.device.agent import Agent
from edgeops.ota.release import cohort_position
from edgeops.settings import Settings
from tests.support.releases import release, tiny_model, unique_model_name


def test_cohort_positions_are_spread_and_stable() -> None:
    positions = [cohort_position(f"device-{index}", "mat-occupancy") for index in range(2000)]
    assert all(0 <= p < 100 for p in positions)
    assert 0.2 < sum(p < 25 for p in positions) / len(positions) < 0.3
    assert positions[7] == cohort_position("device-7", "mat-occupancy")
    assert cohort_position("device-7", "another-model") != positions[7]  # each model stages on its own


def test_a_staged_release_reaches_its_cohort_only(stack_settings: Settings, tmp_path: Path) -> None:
    name = unique_model_name("cohort")
    release(stack_settings, name, tiny_model(1))
    release(stack_settings, name, tiny_model(2), rollout_percent=30)
    candidates = [f"cohort-{index:03d}" for index in range(200)]
    inside = [d for d in candidates if cohort_position(d, name) < 30][:6]
    outside = [d for d in candidates if cohort_position(d, name) >= 30][:6]
    devices = inside + outside
    installed = {}
    for device_id in devices:
        agent = Agent(stack_settings, tmp_path / device_id, name, device_id=device_id)
        agent.poll()
        current = agent.state.installed().current
        assert current is not None
        installed[device_id] = current.version
    expected = {device_id: 2 if cohort_position(device_id, name) < 30 else 1 for device_id in devices}
    assert installed == expected == {**dict.fromkeys(inside, 2), **dict.fromkeys(outside, 1)}

    release(stack_settings, name, tiny_model(2), rollout_percent=100)  # the next step: everyone
    for device_id in devices:
        agent = Agent(stack_settings, tmp_path / device_id, name, device_id=device_id)
        agent.poll()
        current = agent.state.installed().current
        assert current is not None and current.version == 3 and current.sha256 == tiny_model(2).sha256
