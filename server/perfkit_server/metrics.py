"""Prometheus text metrics with Triton's names and `model`/`version` labels, rendered from the
same ModelStats objects the statistics extension reports, so the two always agree."""

from __future__ import annotations

from aiohttp import web

from perfkit_server.registry import Registry

# (metric, type, help)
_COUNTERS = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
    ),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds"),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
    ),
]
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def render(registry: Registry) -> str:
    """The /metrics page."""
    versions = registry.loaded_versions()
    lines: list[str] = []
    for metric, help_text in _COUNTERS:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} counter")
        for lv in versions:
            s = lv.stats
            labels = f'model="{lv.name}",version="{lv.version}"'
            if metric == "nv_inference_request_failure":
                for reason in FAILURE_REASONS:
                    n = s.fail_reasons.get(reason, 0)
                    lines.append(
                        f'{metric}{{model="{lv.name}",reason="{reason}",version="{lv.version}"}} {n}'
                    )
                continue
            value = {
                "nv_inference_request_success": s.success.count,
                "nv_inference_count": s.inference_count,
                "nv_inference_exec_count": s.execution_count,
                "nv_inference_request_duration_us": (s.success.ns + s.fail.ns) // 1000,
                "nv_inference_queue_duration_us": s.queue.ns // 1000,
                "nv_inference_compute_input_duration_us": s.compute_input.ns // 1000,
                "nv_inference_compute_infer_duration_us": s.compute_infer.ns // 1000,
                "nv_inference_compute_output_duration_us": s.compute_output.ns // 1000,
            }[metric]
            lines.append(f"{metric}{{{labels}}} {value}")
    lines.append(
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests"
    )
    lines.append("# TYPE nv_inference_pending_request_count gauge")
    lines.extend(
        f'nv_inference_pending_request_count{{model="{lv.name}",version="{lv.version}"}} '
        f"{lv.scheduler.pending}"
        for lv in versions
    )
    return "\n".join(lines) + "\n"


def metrics_app(registry: Registry) -> web.Application:
    """An aiohttp app serving GET /metrics."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=render(registry), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
