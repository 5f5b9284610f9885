"""perf_analyzer's `--profile-export-file` JSON (src/profile_data_exporter.cc layout).

One experiment per measured level with every request of its merged windows: send timestamp and
response timestamp in nanoseconds since the epoch, and the window boundaries. `request_inputs` and
`response_outputs` are left empty (perfkit never decodes tensors on the hot path); the keys are
there so that readers of perf_analyzer's files still parse these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from perfkit import __version__
from perfkit.results import Measurement


@dataclass(slots=True, kw_only=True)
class Experiment:
    """One level's raw requests (perf_counter ns) and window boundaries."""

    measurement: Measurement
    sent_ns: npt.NDArray[np.int64]
    done_ns: npt.NDArray[np.int64]
    window_boundaries_ns: list[int] = field(default_factory=list)
    # Sequence models: each request's sequence id (same order as sent_ns), else empty.
    sequence_ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    # Streaming: each request's response times (same order as sent_ns), else empty.
    response_times: list[list[int]] = field(default_factory=list)


def clock_offset_ns() -> int:
    """Add to a perf_counter_ns value to get nanoseconds since the epoch."""
    return time.time_ns() - time.perf_counter_ns()


def to_dict(
    experiments: Sequence[Experiment],
    *,
    endpoint: str = "",
    service_kind: str = "triton",
    offset_ns: int | None = None,
) -> dict[str, object]:
    off = clock_offset_ns() if offset_ns is None else offset_ns
    out = []
    for e in experiments:
        m = e.measurement
        value: int | float = int(m.level) if m.mode == "concurrency" else float(m.level)
        order = np.argsort(e.sent_ns, kind="stable")
        sent, done = e.sent_ns[order].tolist(), e.done_ns[order].tolist()
        ids = e.sequence_ids[order].tolist() if e.sequence_ids.size == len(sent) else None
        times = [e.response_times[i] for i in order.tolist()] if e.response_times else None
        reqs: list[dict[str, object]] = []
        for k, (s, d) in enumerate(zip(sent, done, strict=True)):
            r: dict[str, object] = {"timestamp": int(s) + off}
            if ids is not None:  # perf_analyzer's key for a sequence model's requests
                r["sequence_id"] = ids[k]
            # Streaming: every response with outputs, as perf_analyzer records them.
            stamps = [int(t) + off for t in times[k]] if times and times[k] else [int(d) + off]
            r.update(
                request_inputs={}, response_timestamps=stamps, response_outputs=[{}] * len(stamps)
            )
            reqs.append(r)
        out.append(
            {
                "experiment": {"mode": m.mode, "value": value},
                "requests": reqs,
                "window_boundaries": [int(b) + off for b in e.window_boundaries_ns],
            }
        )
    return {
        "experiments": out,
        "version": f"perfkit {__version__}",
        "service_kind": service_kind,
        "endpoint": endpoint,
    }


def write(path: str | Path, experiments: Sequence[Experiment], **kw: object) -> Path:
    """Write the profile export JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = to_dict(
        experiments,
        endpoint=str(kw.get("endpoint", "")),
        service_kind=str(kw.get("service_kind", "triton")),
    )
    p.write_text(json.dumps(doc))
    return p
