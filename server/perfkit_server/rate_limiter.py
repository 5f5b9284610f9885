"""Triton's rate limiter (`--rate-limit=execution_count`): instances execute only while they hold
the resources their instance group's `rate_limiter` lists; `priority` weights who gets them.

Rules (Triton core rate_limiter.cc, server docs rate_limiter.md and command_line_parser.cc):

- `instance_group [ { rate_limiter { resources [ { name, global, count } ], priority } } ]`: each
  instance of the group needs `count` copies of each resource to execute, on its own device, or
  system-wide for a `global` resource; it holds them for the execution and gives them back after.
  No rate_limiter block: no resources, priority 1.
- Copies available: by default the largest count any loaded instance needs, per device (or
  global). `--rate-limit-resource=<name>:<count>[:<device>]` sets them instead (no device: every
  device; a global resource takes the largest count given for its name on any device); once any
  is given, a resource it does not name has 0 copies, and a load whose instances need more than
  what is given fails. A name may not be both global and per-device across loaded models.
- Instances waiting for resources are served in order of exec_count x priority (priority 0 is 1):
  an instance of priority 2 gets half the executions of one of priority 1 under contention. Only
  the first in that order may take resources; it blocks those behind it until its turn comes.
- `--rate-limit=off` (the default): the rate_limiter config is accepted and has no effect (logged
  at load, where Triton says nothing).

Every model's instances take part when it is on, as in Triton: a model without rate_limiter
config waits its turn too. Everything here runs on the serving event loop (the scheduler calls
`acquire`/`release` from its coroutines), so nothing takes a lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

RateLimitMode = Literal["off", "execution_count"]
GLOBAL = -2  # resource key of a global resource (Triton's GLOBAL_RESOURCE_KEY)
EVERY_DEVICE = -1  # a --rate-limit-resource without a device (PER_DEVICE_RESOURCE_KEY)

Resources = dict[tuple[int, str], int]  # (device or GLOBAL, name) -> copies


def parse_mode(text: str) -> RateLimitMode:
    """--rate-limit: execution_count or off, case-insensitive (as tritonserver)."""
    value = text.strip().lower()
    if value == "execution_count":
        return "execution_count"
    if value == "off":
        return "off"
    raise ValueError(f"invalid argument for --rate-limit: {text!r}; use execution_count or off")


def parse_resource(arg: str) -> tuple[str, int, int]:
    """--rate-limit-resource `<name>:<count>[:<device>]` -> (name, count, device or EVERY_DEVICE)."""
    usage = (
        "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
        f"'<resource_name>:<count>'. Got {arg!r}"
    )
    parts = arg.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(usage)
    try:
        count = int(parts[1], 10)
        device = int(parts[2], 10) if len(parts) == 3 else EVERY_DEVICE
    except ValueError:
        raise ValueError(f"{usage}: count and device must be integers") from None
    if count < 0 or (len(parts) == 3 and device < 0):
        raise ValueError(f"{usage}: count and device must be >= 0")
    return parts[0], count, device


@dataclass(slots=True, eq=False)
class _Instance:
    """One model instance as the limiter sees it."""

    name: str  # for messages: <model> v<version> instance <i>
    needs: Resources
    priority: int
    exec_count: int = 0

    def scaled_priority(self) -> int:
        return self.exec_count * self.priority


@dataclass(slots=True, eq=False)
class _Staged:
    order: tuple[int, int]  # (scaled priority, arrival)
    instance: _Instance
    future: asyncio.Future[None]

    def __lt__(self, other: _Staged) -> bool:
        return self.order < other.order


class RateLimiter:
    """The server's resources and the queue of instances waiting for them (one per server)."""

    def __init__(self, explicit: Sequence[tuple[str, int, int]] = ()) -> None:
        self._explicit: dict[int, dict[str, int]] = {}
        for name, count, device in explicit:
            per_device = self._explicit.setdefault(device, {})
            per_device[name] = max(count, per_device.get(name, 0))
        self._instances: list[_Instance] = []
        self._available: Resources = {}
        self._allocated: Resources = {}
        self._staged: list[_Staged] = []
        self._arrivals = itertools.count()

    def register(
        self,
        model: str,
        version: int,
        config: Any,
        placed: Sequence[tuple[int, int]],
        backends: Sequence[object],
    ) -> ModelLimits:
        """Add a model version's instances (`placed`: (group index, device id) per backend).

        Raises ValueError, naming the resource, when the resources cannot serve them (Triton's
        INVALID_ARG at load); nothing stays registered then.
        """
        groups = list(config.instance_group)
        added: list[_Instance] = []
        for i, (group_index, device_id) in enumerate(placed):
            limiter = groups[group_index].rate_limiter if group_index < len(groups) else None
            needs: Resources = {}
            priority = 1
            if limiter is not None:
                for res in limiter.resources:
                    key = GLOBAL if getattr(res, "global") else device_id
                    needs[(key, res.name)] = int(res.count)
                priority = max(int(limiter.priority), 1)
            added.append(_Instance(f"{model} v{version} instance {i}", needs, priority))
        self._instances.extend(added)
        error = self._recompute()
        if error:
            self.unregister(added)
            raise ValueError(error)
        if added and any(inst.needs for inst in added):
            logger.info(
                "rate limiter: model '%s' version %d needs %s; available %s",
                model,
                version,
                sorted({k for inst in added for k in inst.needs}),
                self._describe(),
            )
        return ModelLimits(self, {id(b): inst for b, inst in zip(backends, added, strict=True)})

    def unregister(self, instances: Sequence[_Instance]) -> None:
        """Take instances out (their version was unloaded, or failed to load)."""
        gone = {id(inst) for inst in instances}
        self._instances = [inst for inst in self._instances if id(inst) not in gone]
        self._recompute()

    def _recompute(self) -> str:
        """Copies of each resource from the registered instances and the flags; '' or an error."""
        most: Resources = {}
        for inst in self._instances:
            for key, count in inst.needs.items():
                most[key] = max(count, most.get(key, 0))
        global_names = {name for (device, name) in most if device == GLOBAL}
        for device, name in most:
            if device != GLOBAL and name in global_names:
                return (
                    f'Resource "{name}" is present as both global and device-specific resource '
                    "in the model configuration."
                )
        if self._explicit:
            for (device, name), need in most.items():
                if device == GLOBAL:
                    given = [counts.get(name, 0) for counts in self._explicit.values()]
                else:
                    given = [
                        self._explicit.get(device, {}).get(name, 0),
                        self._explicit.get(EVERY_DEVICE, {}).get(name, 0),
                    ]
                count = max(given, default=0)
                if count < need:
                    return (
                        f'Resource count for "{name}" is limited to {count} which will prevent '
                        "scheduling of one or more model instances, the minimum required count "
                        f"is {need} (--rate-limit-resource={name}:<count>[:<device>])"
                    )
                most[(device, name)] = count
        self._available = most
        return ""

    def _describe(self) -> str:
        return ", ".join(
            f"{name}{'' if device == GLOBAL else f'@device{device}'}={count}"
            for (device, name), count in sorted(self._available.items())
        )

    # -- execution -----------------------------------------------------------------------------

    def _fits(self, inst: _Instance) -> bool:
        for key, need in inst.needs.items():
            if self._allocated.get(key, 0) + need > self._available.get(key, 0):
                return False
        return True

    def _allocate(self, inst: _Instance) -> None:
        for key, need in inst.needs.items():
            self._allocated[key] = self._allocated.get(key, 0) + need

    async def acquire(self, inst: _Instance) -> None:
        """Wait until `inst` is first in priority order and its resources are free; take them."""
        if not self._staged and self._fits(inst):
            self._allocate(inst)
            return
        logger.debug("%s waits for rate-limiter resources %s", inst.name, sorted(inst.needs))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order = (inst.scaled_priority(), next(self._arrivals))
        heapq.heappush(self._staged, _Staged(order, inst, future))
        self._attempt()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled
                self.release(inst, executed=False)
            raise

    def release(self, inst: _Instance, executed: bool = True) -> None:
        """Give `inst`'s resources back after its execution; wake who comes next."""
        if executed:
            inst.exec_count += 1
        for key, need in inst.needs.items():
            self._allocated[key] -= need
        self._attempt()

    def _attempt(self) -> None:
        while self._staged:
            head = self._staged[0]
            if head.future.done():  # its execution was cancelled while it waited
                heapq.heappop(self._staged)
                continue
            if not self._fits(head.instance):
                return  # the first in order waits, and so does everyone behind it
            heapq.heappop(self._staged)
            self._allocate(head.instance)
            head.future.set_result(None)


@dataclass(slots=True, eq=False)
class ModelLimits:
    """A model version's view of the limiter: its scheduler's acquire/release around executions."""

    limiter: RateLimiter
    by_backend: dict[int, _Instance] = field(default_factory=dict)

    async def acquire(self, backend: object) -> None:
        await self.limiter.acquire(self.by_backend[id(backend)])

    def release(self, backend: object) -> None:
        self.limiter.release(self.by_backend[id(backend)])

    def close(self) -> None:
        """Unregister the version's instances (it was unloaded)."""
        self.limiter.unregister(list(self.by_backend.values()))
        self.by_backend = {}


def log_ignored(config: Any) -> None:
    """With --rate-limit=off: say which rate_limiter config has no effect."""
    groups = [
        f"instance_group[{i}]"
        for i, group in enumerate(config.instance_group)
        if group.HasField("rate_limiter")
    ]
    if groups:
        logger.info(
            "model '%s': %s.rate_limiter has no effect: the server runs with --rate-limit=off "
            "(Triton's default); start it with --rate-limit=execution_count to apply it",
            config.name,
            ", ".join(groups),
        )
