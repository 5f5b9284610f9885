"""perfkit.nvml through the FAKE NVML (tests/fakes/nvml): visible GPUs, readings, no-GPU hosts."""

from __future__ import annotations

import pytest

from perfkit.nvml import Nvml, visible_gpus
from tests.fixtures.fake_nvml import FakeNvml, GiB


def test_two_gpus_read_in_tritons_units(fake_nvml: FakeNvml) -> None:
    with fake_nvml.installed():
        nvml = Nvml.open()
        assert nvml is not None
        try:
            assert [(g.device_id, g.uuid) for g in nvml.gpus()] == [
                (0, "GPU-fake-0"),
                (1, "GPU-fake-1"),
            ]
            first, second = nvml.read(), nvml.read()
        finally:
            nvml.close()
    assert first[0].utilization == pytest.approx(0.20)
    assert second[0].utilization == pytest.approx(0.60)  # it changes between reads
    assert first[1].memory_used_bytes == 3 * GiB
    assert first[1].memory_total_bytes == 80 * GiB
    assert first[0].power_usage_w == pytest.approx(150.0)
    assert first[0].power_limit_w == pytest.approx(700.0)
    assert second[0].energy_j == pytest.approx(500.0)  # 150 W + 350 W, a second each


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", [(0, "GPU-fake-1")]),
        ("1,0", [(0, "GPU-fake-1"), (1, "GPU-fake-0")]),
        ("GPU-fake-1", [(0, "GPU-fake-1")]),
        ("0,7,1", [(0, "GPU-fake-0")]),  # CUDA stops at the first entry naming no GPU
        ("", []),
    ],
)
def test_cuda_visible_devices(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, spec: str, expected: list[object]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    with fake_nvml.installed():
        assert [(g.device_id, g.uuid) for g in visible_gpus()] == expected


def test_no_driver_is_no_gpu(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_nvml.installed():
        monkeypatch.delenv("PERFKIT_FAKE_NVML")  # nvmlInit fails as without a driver
        assert Nvml.open() is None
        assert visible_gpus() == []


def test_a_counter_nvml_refuses_is_none(fake_nvml: FakeNvml) -> None:
    fake_nvml.write([{"uuid": "GPU-old", "memory_total": GiB, "memory_used": 0, "utilization": 5}])
    with fake_nvml.installed():
        nvml = Nvml.open()
        assert nvml is not None
        (reading,) = nvml.read()
        nvml.close()
    assert reading.utilization == pytest.approx(0.05)
    assert reading.power_usage_w is None
    assert reading.energy_j is None
