"""Confidence intervals for the change of a level's throughput and latency between two runs, by a
seeded block bootstrap (vectorised numpy). Pure: values in, intervals out.

Method. Requests of one run are not independent: in a closed loop the next request waits for the
previous one, and a noisy neighbour, a GC pause or a CPU-frequency step slows hundreds of
consecutive requests together. Resampling single requests would treat them as independent and
give intervals far too narrow (the reason the old fixed-percentage gate raised false alarms). So
the bootstrap resamples whole *blocks* of consecutive requests (Carlstein's non-overlapping block
bootstrap for a dependent series), chosen from what the results keep:

1. with 3 or more repeats of a level (`perfkit run --repeats N`), one block per repeat: the
   repeats were interleaved with the other levels, so run-long drift shows up as spread between
   them and widens the interval, as it should;
2. otherwise, with per-request latencies (the `profile_export.json` a run writes next to its
   results.json), contiguous chunks of each repeat's requests in completion order (at least 8
   blocks per side, at least one per merged window);
3. otherwise the merged measurement windows (`Measurement.windows`, throughput and average
   latency per window; results.json keeps no per-window percentiles).

Each side is resampled independently (multinomial block weights, `resamples` x blocks); a
resample's throughput is sum(inferences)/sum(seconds) over its blocks, its average latency the
request-weighted mean, and a percentile comes from the sum of its blocks' latency histograms (log
bins, 0.2 % wide) or, without per-request data, the mean of the blocks' own percentiles. The
interval is the bootstrap's spread of the relative change (alpha/2 and 1-alpha/2 quantiles minus
its median; each side's spread first widened by sqrt(n/(n-1)) for its n blocks, the bootstrap's
known variance shrink with few blocks) placed around the change of the reported numbers, so the centre is always the change
the table shows. Fewer than 2 blocks on a side: no interval (compared by percentage only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from perfkit.results import Measurement

F64 = npt.NDArray[np.float64]
# One measurement's requests: latencies (us), completion times (s) and its first window's start (s).
RawRequests = tuple[F64, F64, float]
# One side of a level: its repeats, each with its requests when the profile export is there.
Level = Sequence[tuple[Measurement, RawRequests | None]]

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 0
MIN_REPEAT_BLOCKS = 3
MIN_CHUNKS = 8
_BIN_RATIO = 1.002  # log-histogram bin width: 0.2 % relative resolution for percentiles


@dataclass(frozen=True, slots=True)
class Blocks:
    """One side of one level, cut into blocks (rows). Latencies in microseconds.

    Attributes:
        inferences: inferences completed per block (requests x batch size).
        seconds: the block's duration.
        latency_sum_us / requests: for the request-weighted average latency.
        latencies_us: per block, its requests' latencies (None: no per-request data).
        percentiles_us: stat ("p99") -> each block's own value, when there are no latencies.
    """

    inferences: F64
    seconds: F64
    latency_sum_us: F64
    requests: F64
    latencies_us: tuple[F64, ...] | None = None
    percentiles_us: dict[str, F64] | None = None

    @property
    def n(self) -> int:
        return int(self.inferences.shape[0])


@dataclass(frozen=True, slots=True)
class Interval:
    """The relative change (current / baseline - 1), in percent: point and confidence bounds."""

    change_pct: float
    low_pct: float
    high_pct: float


def chunk_requests(
    latencies_us: F64, done_s: F64, start_s: float, pieces: int, batch: int
) -> list[tuple[float, float, F64]]:
    """Cut one repeat's requests (completion order) into `pieces` contiguous chunks:
    (inferences, seconds, latencies) each; a chunk's time runs from the previous one's end."""
    order = np.argsort(done_s, kind="stable")
    lat, done = latencies_us[order], done_s[order]
    out = []
    prev = start_s
    for part in np.array_split(np.arange(lat.shape[0]), max(1, pieces)):
        if part.size == 0:
            continue
        end = float(done[part[-1]])
        out.append((float(part.size * batch), max(end - prev, 1e-9), lat[part]))
        prev = end
    return out


def _weights(n: int, resamples: int, rng: np.random.Generator) -> F64:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _hist_percentile(hists: F64, edges: F64, q: float) -> F64:
    """Nearest-rank q-quantile (0..1) of each row's histogram, as the bin's geometric centre."""
    cum = np.cumsum(hists, axis=1)
    target = np.ceil(q * cum[:, -1])
    idx = np.minimum((cum < target[:, None]).sum(axis=1), hists.shape[1] - 1)
    return np.asarray(np.sqrt(edges[idx] * edges[idx + 1]), dtype=np.float64)


def _edges(sides: Sequence[Blocks]) -> F64:
    lats = [x for b in sides for x in (b.latencies_us or ()) if x.size]
    lo = max(min(float(x.min()) for x in lats), 1e-3)
    hi = max(float(x.max()) for x in lats) * 1.0001
    bins = max(1, math.ceil(math.log(hi / lo) / math.log(_BIN_RATIO)))
    return np.geomspace(lo, hi * (1 + 1e-9), bins + 1)


def _resampled(b: Blocks, stat: str, w: F64, edges: F64 | None) -> F64:
    """The statistic of each resample (rows of block weights `w`)."""
    if stat == "throughput":
        return np.asarray((w @ b.inferences) / (w @ b.seconds), dtype=np.float64)
    if stat == "avg":
        return np.asarray(
            (w @ b.latency_sum_us) / np.maximum(w @ b.requests, 1.0), dtype=np.float64
        )
    if b.latencies_us is not None and edges is not None:
        hists = np.stack([np.histogram(x, bins=edges)[0] for x in b.latencies_us]).astype(float)
        return _hist_percentile(w @ hists, edges, float(stat[1:]) / 100.0)
    assert b.percentiles_us is not None
    return (w @ b.percentiles_us[stat]) / b.n


def can_bootstrap(base: Blocks | None, cur: Blocks | None, stat: str) -> bool:
    """Do both sides hold at least 2 blocks with data for `stat`?"""
    for b in (base, cur):
        if b is None or b.n < 2:
            return False
        pcts = b.percentiles_us
        if (
            stat not in ("throughput", "avg")
            and b.latencies_us is None
            and stat not in (pcts or {})
        ):
            return False
    return True


def change_interval(
    base: Blocks,
    cur: Blocks,
    stat: str,
    *,
    baseline_value: float,
    current_value: float,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """The confidence interval of the relative change of `stat` ("throughput", "avg", "p99", ...)
    from `base` to `cur`, centred on the change of the reported values. Deterministic for a seed."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be in [0.5, 1)")
    rng = np.random.default_rng(seed)
    both_raw = base.latencies_us is not None and cur.latencies_us is not None
    edges = _edges((base, cur)) if stat not in ("throughput", "avg") and both_raw else None
    if edges is None and stat not in ("throughput", "avg"):
        base, cur = _no_raw(base), _no_raw(cur)
    b = _inflate(_resampled(base, stat, _weights(base.n, resamples, rng), edges), base.n)
    c = _inflate(_resampled(cur, stat, _weights(cur.n, resamples, rng), edges), cur.n)
    ratio = c / np.maximum(b, 1e-12)
    alpha = 1.0 - confidence
    lo, med, hi = np.quantile(ratio, [alpha / 2, 0.5, 1 - alpha / 2])
    point = (current_value / baseline_value - 1.0) if baseline_value else 0.0
    return Interval(
        change_pct=100.0 * point,
        low_pct=100.0 * (point + (lo - med)),
        high_pct=100.0 * (point + (hi - med)),
    )


def _inflate(values: F64, n: int) -> F64:
    """Undo the bootstrap's variance shrink with few blocks: resampling n blocks gives a mean's
    variance times (n-1)/n, so widen the spread around the median by sqrt(n/(n-1))."""
    med = float(np.median(values))
    return np.asarray(med + (values - med) * math.sqrt(n / (n - 1)), dtype=np.float64)


def _no_raw(b: Blocks) -> Blocks:
    return Blocks(b.inferences, b.seconds, b.latency_sum_us, b.requests, None, b.percentiles_us)


def blocks(
    rows: Sequence[tuple[float, float, float, float, F64 | None, dict[str, float] | None]],
) -> Blocks:
    """Blocks from rows of (inferences, seconds, latency sum, requests, latencies or None,
    percentiles or None); latencies are kept only when every row has them, percentiles likewise."""
    lats = [r[4] for r in rows]
    pcts = [r[5] for r in rows]
    keys = set.intersection(*(set(p) for p in pcts if p is not None)) if all(pcts) else set()
    return Blocks(
        inferences=np.array([r[0] for r in rows], dtype=float),
        seconds=np.array([r[1] for r in rows], dtype=float),
        latency_sum_us=np.array([r[2] for r in rows], dtype=float),
        requests=np.array([r[3] for r in rows], dtype=float),
        latencies_us=tuple(x for x in lats if x is not None)
        if lats and all(x is not None for x in lats)
        else None,
        percentiles_us={k: np.array([p[k] for p in pcts if p], dtype=float) for k in keys}
        if keys
        else None,
    )


# ---------------------------------------------------------------------------------------------
# From results to blocks


def pooled(level: Level) -> Measurement:
    """One Measurement for a level's repeats: throughput over their total time, latencies the
    request-weighted mean (avg) and the mean of the repeats' percentiles."""
    ms = [m for m, _ in level]
    if len(ms) == 1:
        return ms[0]
    secs = [m.duration_ns / 1e9 for m in ms]
    thr = sum(m.throughput_infer_per_s * s for m, s in zip(ms, secs, strict=True)) / sum(secs)
    n = sum(m.latency.count for m in ms) or 1
    lat = ms[0].latency
    extra = {p: float(np.mean([m.latency.extra_percentiles_us.get(p, math.nan) for m in ms]))
             for p in lat.extra_percentiles_us}  # fmt: skip
    pooled_lat = type(lat)(
        count=n,
        avg_us=sum(m.latency.avg_us * m.latency.count for m in ms) / n,
        std_us=float(np.mean([m.latency.std_us for m in ms])),
        min_us=min(m.latency.min_us for m in ms),
        max_us=max(m.latency.max_us for m in ms),
        **{f"p{q}_us": float(np.mean([m.latency.percentile_us(q) for m in ms]))
           for q in (50, 90, 95, 99)},
        extra_percentiles_us=extra,
    )  # fmt: skip
    return replace(
        ms[-1],
        throughput_infer_per_s=thr,
        latency=pooled_lat,
        request_count=sum(m.request_count for m in ms),
        error_count=sum(m.error_count for m in ms),
        duration_ns=sum(m.duration_ns for m in ms),
        stable=all(m.stable for m in ms),
    )


def _percentiles(m: Measurement) -> dict[str, float]:
    out = {f"p{q}": m.latency.percentile_us(q) for q in (50, 90, 95, 99)}
    out.update({f"p{p:g}": v for p, v in m.latency.extra_percentiles_us.items()})
    return out


def level_blocks(level: Level) -> Blocks | None:
    """The bootstrap blocks of one side of a level (see `perfkit.report.stats`): its repeats, or
    chunks of its requests, or its merged windows; None when there are fewer than 2."""
    rows: list[tuple[float, float, float, float, F64 | None, dict[str, float] | None]] = []
    have_raw = all(r is not None for _, r in level)
    if len(level) >= MIN_REPEAT_BLOCKS:
        for m, r in level:
            secs = m.duration_ns / 1e9
            lat = r[0] if r is not None and have_raw else None
            rows.append((m.throughput_infer_per_s * secs, secs,
                         m.latency.avg_us * m.latency.count, float(m.latency.count), lat,
                         _percentiles(m)))  # fmt: skip
    elif have_raw:
        pieces = max(MIN_CHUNKS // len(level) + 1, 2)
        for m, r in level:
            assert r is not None
            merged = sum(1 for w in m.windows if w.merged)
            for inf, secs, lat in chunk_requests(
                r[0], r[1], r[2], max(pieces, merged), m.batch_size
            ):
                rows.append((inf, secs, float(lat.sum()), float(lat.size), lat, None))
    else:
        for m, _ in level:
            for w in m.windows:
                if w.merged:
                    secs = w.duration_ns / 1e9
                    rows.append((w.throughput_infer_per_s * secs, secs,
                                 w.latency_avg_us * w.request_count, float(w.request_count),
                                 None, None))  # fmt: skip
    return blocks(rows) if len(rows) >= 2 else None


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "Blocks",
    "Interval",
    "Level",
    "RawRequests",
    "blocks",
    "can_bootstrap",
    "change_interval",
    "chunk_requests",
    "level_blocks",
    "pooled",
]
