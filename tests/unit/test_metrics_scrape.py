"""perfkit's Prometheus scrape: GPU families only, escaped label values, a page that is not text."""

from __future__ import annotations

import math

import pytest

from perfkit.load.metrics_scrape import parse_prometheus


def test_escaped_labels_and_special_values():
    page = (
        "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n"
        "# TYPE nv_gpu_utilization gauge\n"
        'nv_gpu_utilization{gpu_uuid="GPU-\\"a}\\\\b",other="x"} 0.25\n'
        'nv_gpu_utilization{gpu_uuid="GPU-c"} NaN\n'
        "nv_gpu_power_usage +Inf\n"
        'nv_inference_count{model="m{\\"}",version="1"} 7\n'
        "nv_gpu_memory_used_bytes_extra 5\n"
    )
    got = parse_prometheus(page)
    assert got["nv_gpu_utilization"]['GPU-"a}\\b'] == 0.25
    assert math.isnan(got["nv_gpu_utilization"]["GPU-c"])
    assert got["nv_gpu_power_usage"] == {"": math.inf}
    assert set(got) == {"nv_gpu_utilization", "nv_gpu_power_usage"}


def test_a_page_that_is_not_prometheus_text_is_a_failed_scrape():
    # MetricsScraper counts a ValueError as a failed scrape (and keeps scraping).
    with pytest.raises(ValueError, match="not-a-number"):
        parse_prometheus('nv_gpu_utilization{gpu_uuid="GPU-a"} not-a-number\n')
