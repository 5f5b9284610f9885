"""Whether a server exports GPU metrics: one read of its Prometheus endpoint before the first trial.

The tuner scrapes the endpoint during every trial when it lists GPUs (`nv_gpu_*` families labelled
`gpu_uuid`, as tritonserver and perfkit_server export them), and refuses a GPU objective or
constraint up front when it lists none (`perfkit.tune.api`).
"""

from __future__ import annotations

import urllib.request

from perfkit.load.metrics_scrape import parse_prometheus

PROBE_TIMEOUT_S = 5.0


def exported_gpus(metrics_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The GPU UUIDs the endpoint at `metrics_url` ("host:port/metrics", perf_analyzer's form,
    "host:port" for /metrics, or an http:// URL) reports now, sorted; [] when it exports no GPU
    family.

    Raises OSError (TimeoutError included) when the endpoint cannot be read or does not answer
    200, ValueError when the page is not Prometheus text.
    """
    url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"metrics URL {metrics_url!r} is not http(s)")
    if "/" not in url.split("://", 1)[1]:
        url += "/metrics"  # "host:port", as the scraper takes it too
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        text = reply.read().decode("utf-8", errors="replace")
    families = parse_prometheus(text)
    return sorted({uuid for per_gpu in families.values() for uuid in per_gpu if uuid})
