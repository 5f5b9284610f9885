"""The scheduling part of a model config, resolved: Triton's dynamic_batching and queue policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    timeout_ns: int = 0
    delay_on_timeout: bool = False
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclass(frozen=True, slots=True)
class BatcherSpec:
    """The scheduling part of a model config, resolved."""

    max_batch_size: int
    dynamic: bool
    preferred: tuple[int, ...] = ()
    max_queue_delay_ns: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority: int = 0
    policies: tuple[QueuePolicy, ...] = field(default_factory=lambda: (QueuePolicy(),))
    # model_transaction_policy { decoupled: true }: any number of responses per request
    # (`decoupled.ResponseStream`), served over gRPC streaming only.
    decoupled: bool = False

    @classmethod
    def from_config(cls, config: Any) -> BatcherSpec:
        """Read max_batch_size and dynamic_batching from a ModelConfig."""
        mbs = int(config.max_batch_size)
        decoupled = bool(config.model_transaction_policy.decoupled)
        if not config.HasField("dynamic_batching") or mbs == 0:
            return cls(max_batch_size=mbs, dynamic=False, decoupled=decoupled)
        db = config.dynamic_batching

        def policy(p: Any) -> QueuePolicy:
            return QueuePolicy(
                timeout_ns=int(p.default_timeout_microseconds) * 1000,
                delay_on_timeout=int(p.timeout_action) == 1,
                allow_timeout_override=bool(p.allow_timeout_override),
                max_queue_size=int(p.max_queue_size),
            )

        default = policy(db.default_queue_policy)
        levels = int(db.priority_levels)
        policies = tuple(
            policy(db.priority_queue_policy[lvl]) if lvl in db.priority_queue_policy else default
            for lvl in range(1, max(levels, 1) + 1)
        )
        return cls(
            max_batch_size=mbs,
            dynamic=True,
            preferred=tuple(sorted(int(s) for s in db.preferred_batch_size)),
            max_queue_delay_ns=int(db.max_queue_delay_microseconds) * 1000,
            preserve_ordering=bool(db.preserve_ordering),
            priority_levels=levels,
            default_priority=int(db.default_priority_level) or (1 if levels else 0),
            policies=policies,
            decoupled=decoupled,
        )
