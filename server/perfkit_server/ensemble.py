"""Triton's ensemble scheduler: a request flows through the composing models' own schedulers.

Each step runs as soon as all of its input tensors exist, so steps that do not depend on each
other run concurrently. A step is a full inference request to its composing model through
`Registry.internal_infer` (validation, the model's scheduler and dynamic batching, its
statistics), carrying the ensemble request's priority, timeout and parameters, as Triton's
composing requests do. Triton's accounting for the ensemble itself: queue is the time until the
request starts its first steps, compute_input/infer/output are the sums of its composing requests'
(`stats.SECONDARY`), one execution of the request's batch size per successful request.

The first failing step fails the request with that step's error (prefixed `in ensemble 'name', `);
no further step starts, and the steps already running finish first. Only the steps that the
requested outputs need run (Triton prunes the others).

Loading, unloading and the composing models' lifecycle are ensemble_deps'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit_server.batching import BatcherSpec
from perfkit_server.ensemble_config import EnsemblePlan, Step
from perfkit_server.errors import InternalError, InvalidInput, ServerError, Unavailable
from perfkit_server.stats import SECONDARY, ModelStats, RequestTimes
from perfkit_server.types import Array, InferInput, InferRequest, RequestedOutput, v2_of_array

if TYPE_CHECKING:
    from perfkit_server.registry import Registry

Outputs = dict[str, Array]

# (the request's inputs, the outputs the client asked for; empty: all), set by the dataplane
# right before it submits the request, so that an ensemble runs only the steps they need. Read
# only when its inputs are the very dict submitted: a value left from another request in the
# same task (a path that does not set it) never prunes this one.
REQUESTED_OUTPUTS: ContextVar[tuple[object, Sequence[str]]] = ContextVar(
    "perfkit_requested_outputs", default=(None, ())
)


@dataclass(slots=True)
class _Tensor:
    """An ensemble tensor's value and the batch size of the request that made it (0: none)."""

    data: Array | None  # None: an optional ensemble input the request left out
    batch_size: int


class EnsembleScheduler:
    """Runs one ensemble's requests through its steps (the methods the dataplane calls on a
    Scheduler: submit, try_direct, start, close, pending, spec)."""

    def __init__(self, plan: EnsemblePlan, registry: Registry, stats: ModelStats) -> None:
        self._plan = plan
        self._registry = registry
        self._stats = stats
        self._spec = BatcherSpec(max_batch_size=plan.max_batch_size, dynamic=False)
        limit = plan.max_inflight_requests
        # Triton's per-step in-flight limit, shared by all requests of this ensemble.
        self._limits = [asyncio.Semaphore(limit) if limit > 0 else None for _ in plan.steps]
        self._tasks: set[asyncio.Task[tuple[Outputs, RequestTimes]]] = set()
        self._closing = False

    @property
    def spec(self) -> BatcherSpec:
        return self._spec

    @property
    def pending(self) -> int:
        """Always 0: Triton counts an ensemble request as executing once it is accepted."""
        return 0

    def start(self) -> None:
        """Nothing to start: each request runs in its own task."""

    def try_direct(self, inputs: dict[str, Array], batch_size: int) -> None:
        """Never: every ensemble request awaits its composing models."""
        return None

    def submit(
        self,
        inputs: dict[str, Array],
        batch_size: int,
        priority: int = 0,
        timeout_us: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> asyncio.Future[tuple[Outputs, RequestTimes]]:
        """Start one request; the future gives the ensemble outputs and the request's times.

        Cancelling the future (the client went away) cancels the running steps.
        """
        if self._closing:
            raise Unavailable(f"model '{self._plan.name}' is unloading")
        request = _Request(
            inputs=inputs,
            batch_size=batch_size if self._plan.batching else 0,
            priority=priority,
            timeout_us=timeout_us,
            params=params,
            wanted=_wanted(inputs),
            arrived_ns=time.perf_counter_ns(),
        )
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Refuse new requests and let the running ones finish."""
        self._closing = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one request ---------------------------------------------------------------------------

    async def _run(self, request: _Request) -> tuple[Outputs, RequestTimes]:
        plan = self._plan
        started = time.perf_counter_ns()
        totals = RequestTimes(queue_ns=started - request.arrived_ns)
        tensors: dict[str, _Tensor] = {}
        for name in plan.inputs:
            if name in request.inputs:
                tensors[name] = _Tensor(request.inputs[name], request.batch_size)
            elif name in plan.optional_inputs:
                tensors[name] = _Tensor(None, request.batch_size)
        waiting = plan.needed_steps(request.wanted)
        running: dict[asyncio.Task[dict[str, _Tensor]], Step] = {}
        error: BaseException | None = None
        try:
            while True:
                if error is None:
                    for step in [s for s in waiting if _ready(s, tensors)]:
                        waiting.remove(step)
                        task = asyncio.get_running_loop().create_task(
                            self._step(step, tensors, request, totals)
                        )
                        running[task] = step
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    exc = task.exception()
                    if exc is not None:
                        error = error or exc
                    else:
                        tensors.update(task.result())
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if error is not None:
            raise _in_ensemble(plan.name, error)
        outputs = self._outputs(tensors, request)
        self._stats.record_execution(
            max(1, request.batch_size),
            totals.compute_input_ns,
            totals.compute_infer_ns,
            totals.compute_output_ns,
        )
        return outputs, totals

    async def _step(
        self, step: Step, tensors: dict[str, _Tensor], request: _Request, totals: RequestTimes
    ) -> dict[str, _Tensor]:
        """One composing request; returns the ensemble tensors it wrote."""
        infer = self._registry.internal_infer
        if infer is None:
            raise Unavailable("the server is not serving yet")
        version = "" if step.model_version < 0 else str(step.model_version)
        model = self._registry.get(step.model_name, version)
        composing_batching = model.max_batch_size > 0
        inputs: list[InferInput] = []
        batch_size = 0
        for model_input, name in step.input_map:
            tensor = tensors[name]
            if tensor.data is None:
                continue  # an optional input left out: the composing input is optional too
            spec = model.inputs.get(model_input)
            dims = spec.dims if spec is not None else ()
            data = _reshaped(tensor.data, dims, composing_batching, tensor.batch_size)
            inputs.append(InferInput(model_input, v2_of_array(data), tuple(data.shape), data))
            if composing_batching and data.ndim:
                batch_size = int(data.shape[0])
        composing = InferRequest(
            model_name=step.model_name,
            model_version=version,
            id="",
            inputs=inputs,
            outputs=[RequestedOutput(model_output) for model_output, _ in step.output_map],
            priority=request.priority,
            timeout_us=request.timeout_us,
            parameters=request.params,
        )
        # This task's context only: what the composing model records is added to this request.
        SECONDARY.set(totals)
        limit = self._limits[step.index]
        if limit is None:
            response = await infer(composing)
        else:
            async with limit:
                response = await infer(composing)
        produced = {out.name: out.data for out in response.outputs}
        return {
            name: _Tensor(produced[model_output], batch_size)
            for model_output, name in step.output_map
            if model_output in produced
        }

    def _outputs(self, tensors: dict[str, _Tensor], request: _Request) -> Outputs:
        plan = self._plan
        outputs: Outputs = {}
        for name in request.wanted or plan.outputs:
            tensor = tensors.get(name)
            if tensor is None or tensor.data is None:
                # A step left out an output it maps: nothing else can run (Triton's words).
                raise _in_ensemble(
                    plan.name,
                    InvalidInput(
                        "unexpected deadlock, at least one output is not set while no more "
                        f"ensemble steps can be made (output '{name}')"
                    ),
                )
            outputs[name] = _reshaped(
                tensor.data, plan.outputs[name], plan.batching, tensor.batch_size
            )
        return outputs


@dataclass(slots=True, frozen=True)
class _Request:
    inputs: dict[str, Array]
    batch_size: int  # 0: the ensemble does not batch
    priority: int
    timeout_us: int | None
    params: dict[str, Any] | None
    wanted: tuple[str, ...]
    arrived_ns: int


def _wanted(inputs: dict[str, Array]) -> tuple[str, ...]:
    owner, wanted = REQUESTED_OUTPUTS.get()
    return tuple(wanted) if owner is inputs else ()


def _ready(step: Step, tensors: dict[str, _Tensor]) -> bool:
    return all(name in tensors for _, name in step.input_map)


def _same_dims(config_dims: Sequence[int], dims: Sequence[int]) -> bool:
    return len(config_dims) == len(dims) and all(
        c == -1 or c == d for c, d in zip(config_dims, dims, strict=True)
    )


def _reshaped(data: Array, config_dims: Sequence[int], batching: bool, batch_size: int) -> Array:
    """Triton's ReshapeTensorDims: add or drop a batch dimension of 1 between a batching and a
    non-batching model when the shapes agree otherwise; else the tensor passes unchanged."""
    if batching == (batch_size != 0):
        return data
    if batching:
        if _same_dims(config_dims, data.shape):
            return data.reshape((1, *data.shape))
    elif not _same_dims(config_dims, data.shape) and batch_size == 1:
        return data.reshape(data.shape[1:])
    return data


def _in_ensemble(name: str, error: BaseException) -> ServerError:
    """The step's error, same kind (same status), naming the ensemble as Triton does."""
    message = f"in ensemble '{name}', {error}"
    wrapped = type(error)(message) if isinstance(error, ServerError) else InternalError(message)
    # The ensemble's own failure metric: Triton reports every failed ensemble request as OTHER.
    wrapped.failure_reason = "OTHER"  # type: ignore[attr-defined]
    return wrapped
