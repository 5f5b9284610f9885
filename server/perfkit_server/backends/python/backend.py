"""PythonBackend: one instance of a python model, run in its own stub process (Triton's stub).

Instances of a model run in parallel, one process each, so they share no GIL. The scheduler calls
`execute` (one list of requests per batch, no concatenation: `takes_requests`) or, for a
decoupled model, `execute_decoupled` with a response callback. The instance's executing thread
sends the batch and waits for its result; a reader thread takes every frame from the stub
(results, decoupled responses, BLS requests, log lines), so a model may send responses or make
BLS calls from its own threads. BLS requests run through the registry's internal_infer on the
serving loop (a bounded pool of threads waits for them, never the loop); so do the model
loading API's calls (control.py), through the registry's model_control.

A stub that dies fails the requests it held and every later one, with Triton's words ("Stub
process '<instance>' is not healthy.") and how it ended, and is logged; the model must be loaded
again. `close` asks the stub to finalize, then kills it if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from perfkit.datatypes import NP_BY_V2
from perfkit.model_repo.config import config_to_json, v2_datatype
from perfkit_server.backends.base import Array, InstanceSpec, check_file_name
from perfkit_server.backends.python.bls import CODE_ERRORS, bls_reply, run_bls
from perfkit_server.backends.python.control import run_control
from perfkit_server.backends.python.ipc import (
    Channel,
    Closed,
    Header,
    ProtocolError,
    decode_tensors,
    encode_tensors,
)
from perfkit_server.errors import (
    InferenceFailed,
    InvalidInput,
    ServerError,
    Unavailable,
)
from perfkit_server.types import v2_of_array

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "model.py"
FINALIZE_TIMEOUT_S = 10.0  # finalize() may release resources; then the stub is killed
MAX_BLS_IN_FLIGHT = 64  # BLS requests one instance may have waiting on the server
_BLS_THREADS = 4
# Python-backend parameters that change how Triton runs the stub, which this server cannot honor.
_REFUSED_PARAMETERS = {
    "EXECUTION_ENV_PATH": "stubs here run in the server's own Python environment; install the "
    "model's packages there and remove the parameter",
}
_LOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}

Send = Callable[[int, dict[str, Array] | None, Exception | None, bool], None]


def check_parameters(config: Any, source: str) -> None:
    """Refuse at load the python-backend parameters this server does not implement."""
    for key, why in _REFUSED_PARAMETERS.items():
        if key in config.parameters:
            raise ValueError(f"{source}: parameters['{key}']: not supported: {why}")


def model_path(config: Any, version_dir: Path, source: str) -> Path:
    """The model file: `default_model_filename` or model.py, a .py file in the version directory."""
    name = check_file_name(
        config.default_model_filename or DEFAULT_FILENAME, "default_model_filename", source
    )
    if not name.endswith(".py"):
        raise ValueError(f"{source}: default_model_filename: {name!r} must end with '.py'")
    path = version_dir / name
    if not path.is_file():
        raise ValueError(f"{source}: no python model file {name} in {version_dir}")
    return path


def _instance_name(spec: InstanceSpec) -> str:
    """Triton's instance name: '<group name>_<c>', c counting the group's `count`."""
    config = spec.config
    group = config.instance_group[spec.group_index] if config.instance_group else None
    if group is None:  # an unnormalized config: Triton's default group is named after the model
        return f"{spec.model_name}_{spec.index}"
    before = sum(
        g.count * (len(g.gpus) if g.kind == 1 and g.gpus else 1)  # 1: KIND_GPU
        for g in config.instance_group[: spec.group_index]
    )
    per_count = len(group.gpus) if group.kind == 1 and group.gpus else 1
    return f"{group.name}_{(spec.index - before) // per_count}"


def _child_env() -> dict[str, str]:
    """The stub imports what this server imports: its sys.path as PYTHONPATH."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class _Stream:
    """A decoupled execution's requests still waiting for their final response."""

    def __init__(self, send: Send, count: int) -> None:
        self.send = send
        self.open = set(range(count))


class PythonBackend:
    """One python-model instance: its stub process, channel and reader thread."""

    takes_requests = True

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        self._model = spec.model_name
        source = f"model '{spec.model_name}' version {spec.version}"
        check_parameters(config, source)
        path = model_path(config, spec.version_dir, source)
        self.name = _instance_name(spec)
        self._decoupled = bool(config.model_transaction_policy.decoupled)
        self._outputs = [o.name for o in config.output]
        self._datatypes = {o.name: v2_datatype(o.data_type) for o in config.output}
        self._internal_infer = spec.internal_infer
        self._model_control = spec.model_control
        self._lock = threading.Lock()
        self._calls: dict[int, Future[tuple[Header, list[bytearray]]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self._dead = ""
        self._closing = False
        self._stopped = threading.Event()  # finalized, or the stub is gone
        self._bls_in_flight = 0
        self._bls_pool = ThreadPoolExecutor(_BLS_THREADS, thread_name_prefix=f"bls-{self.name}")
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "perfkit_server.backends.python.stub", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=_child_env(),
            )
        finally:
            theirs.close()
        self._chan = Channel(ours)
        self.pid = self._proc.pid
        self._reader = threading.Thread(
            target=self._read_forever, name=f"stub-{self.name}", daemon=True
        )
        self._reader.start()
        args = {
            # The normalized config as Triton's JSON (every field, 64-bit ints as numbers).
            "model_config": json.dumps(config_to_json(config, include_defaults=True)),
            "model_instance_kind": spec.kind.removeprefix("KIND_"),
            "model_instance_name": self.name,
            "model_instance_device_id": str(spec.device_id),
            "model_repository": str(spec.version_dir.parent),
            "model_version": str(spec.version),
            "model_name": spec.model_name,
        }
        header: Header = {
            "op": "init",
            "args": args,
            "model_path": str(path),
            "decoupled": self._decoupled,
        }
        try:
            reply, _ = self._call(header)
        except ServerError as exc:
            self.close()
            raise RuntimeError(str(exc)) from None
        if "error" in reply:
            self.close()
            raise RuntimeError(f"python model {path} failed to initialize: {reply['error']}")

    # -- execution (the instance's thread) -----------------------------------------------------

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """One request (model warmup): execute([inputs]), its error raised."""
        [result] = self.execute([dict(inputs)])
        if isinstance(result, Exception):
            raise result
        return result

    def execute(self, requests: Sequence[dict[str, Array]]) -> list[dict[str, Array] | Exception]:
        """Run one batch of requests through TritonPythonModel.execute; one result per request."""
        if self._decoupled:
            err = InvalidInput(
                f"model '{self._model}' is decoupled (model_transaction_policy): it answers "
                "streaming requests only (gRPC ModelStreamInfer)"
            )
            return [err] * len(requests)
        try:
            reply, buffers = self._call(*self._execute_header(requests))
        except ServerError as exc:
            return [exc] * len(requests)
        if "error" in reply:
            return [InferenceFailed(str(reply["error"]))] * len(requests)
        try:
            return self._results(reply, buffers, len(requests))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            return [self._broken(exc)] * len(requests)

    def execute_decoupled(self, requests: Sequence[dict[str, Array]], send: Send) -> None:
        """Run a batch on a decoupled model: `send` gets each response (from the reader thread)
        as the model sends it; returns when execute returned (responses may still follow)."""
        stream = _Stream(send, len(requests))
        with self._lock:
            call_id = self._new_id()
            self._streams[call_id] = stream
        try:
            reply, _ = self._call(*self._execute_header(requests, call_id))
            error: ServerError | None = (
                InferenceFailed(str(reply["error"])) if "error" in reply else None
            )
        except ServerError as exc:
            error = exc
        if error is not None:
            self._end_stream(call_id, error)

    def _execute_header(
        self, requests: Sequence[dict[str, Array]], call_id: int = -1
    ) -> tuple[Header, list[Any]]:
        buffers: list[Any] = []
        entries = [
            {
                "inputs": encode_tensors(r.items(), buffers),
                "requested_output_names": self._outputs,
            }
            for r in requests
        ]
        return {"op": "execute", "id": call_id, "requests": entries}, buffers

    def _results(
        self, reply: Header, buffers: list[bytearray], count: int
    ) -> list[dict[str, Array] | Exception]:
        responses = reply.get("responses")
        if not isinstance(responses, list) or len(responses) != count:
            raise ProtocolError("execute result does not hold one response per request")
        out: list[dict[str, Array] | Exception] = []
        for entry in responses:
            if entry is None:
                out.append(InferenceFailed(f"model '{self._model}' sent no response"))
            else:
                out.append(self._outcome(entry, buffers))
        return out

    def _outcome(self, entry: Header, buffers: list[bytearray]) -> dict[str, Array] | Exception:
        if "error" in entry:
            err = entry["error"]
            return CODE_ERRORS.get(int(err.get("code", 1)), InferenceFailed)(str(err["message"]))
        # Outputs the config does not declare are pruned, as Triton prunes to the requested ones.
        outputs = {
            n: a for n, a in decode_tensors(entry.get("outputs"), buffers) if n in self._datatypes
        }
        for name, array in outputs.items():
            want = self._datatypes[name]
            got = v2_of_array(array)
            if got != want:
                # Triton would send the array's own datatype; a response here carries the config's.
                kind = "bytes objects" if want == "BYTES" else str(NP_BY_V2[want])
                return InferenceFailed(
                    f"model '{self._model}': output '{name}' is {got} but its config data_type "
                    f"is TYPE_{'STRING' if want == 'BYTES' else want}: return a numpy array of "
                    f"{kind} for it"
                )
        return outputs

    # -- the channel ---------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _call(self, header: Header, buffers: Sequence[Any] = ()) -> tuple[Header, list[bytearray]]:
        """Send a command and wait for its reply (init_done or result, by id)."""
        future: Future[tuple[Header, list[bytearray]]] = Future()
        with self._lock:
            if self._dead:
                raise InferenceFailed(self._dead)
            if header.get("id", -1) == -1:
                header["id"] = self._new_id()
            self._calls[header["id"]] = future
        try:
            self._chan.send(header, buffers)
        except ProtocolError as exc:
            with self._lock:
                self._calls.pop(header["id"], None)
            if isinstance(exc, Closed):  # the stub is exiting: its reader says how it ended
                self._stopped.wait(5)
                raise InferenceFailed(self._dead or str(exc)) from None
            raise InvalidInput(f"model '{self._model}': {exc}") from None
        return future.result()

    def _read_forever(self) -> None:
        try:
            while True:
                header, buffers = self._chan.recv()
                self._dispatch(header, buffers)
        except Closed as exc:
            self._on_death(exc)
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            self._broken(exc)  # a frame that breaks the protocol: the stub cannot be trusted

    def _dispatch(self, header: Header, buffers: list[bytearray]) -> None:
        op = header.get("op")
        if op in ("init_done", "result"):
            with self._lock:
                future = self._calls.pop(int(header.get("id", -1)), None)
            if future is not None:
                future.set_result((header, buffers))
        elif op == "send":
            self._on_send(header, buffers)
        elif op in ("bls", "control"):
            self._on_bls(header, buffers)
        elif op == "log":
            level = _LOG_LEVELS.get(int(header.get("level", 0)), logging.INFO)
            logger.log(level, "%s: %s", self.name, header.get("message", ""))
        elif op == "finalized":
            self._stopped.set()
        else:
            raise ProtocolError(f"unknown message {op!r} from the stub")

    def _on_send(self, header: Header, buffers: list[bytearray]) -> None:
        call_id, index, final = int(header["id"]), int(header["index"]), bool(header["final"])
        with self._lock:
            stream = self._streams.get(call_id)
            if stream is None or index not in stream.open:
                return  # a response after the final one was refused in the stub already
            if final:
                stream.open.discard(index)
                if not stream.open:
                    del self._streams[call_id]
        outputs: dict[str, Array] | None = None
        error: Exception | None = None
        if "error" in header or "outputs" in header:
            result = self._outcome(header, buffers)
            outputs, error = (None, result) if isinstance(result, Exception) else (result, None)
        self._deliver(stream, index, outputs, error, final)

    def _deliver(
        self,
        stream: _Stream,
        index: int,
        outputs: dict[str, Array] | None,
        error: Exception | None,
        final: bool,
    ) -> None:
        try:
            stream.send(index, outputs, error, final)
        except Exception:  # the scheduler's callback failing must not stop this reader
            logger.exception("model '%s': delivering a decoupled response failed", self._model)

    def _end_stream(self, call_id: int, error: Exception) -> None:
        with self._lock:
            stream = self._streams.pop(call_id, None)
        if stream is not None:
            for index in sorted(stream.open):
                self._deliver(stream, index, None, error, True)

    # -- BLS -----------------------------------------------------------------------------------

    def _on_bls(self, header: Header, buffers: list[bytearray]) -> None:
        with self._lock:
            busy = self._bls_in_flight >= MAX_BLS_IN_FLIGHT
            if not busy:
                self._bls_in_flight += 1
        if busy:
            self._reply_bls(header, Unavailable(f"more than {MAX_BLS_IN_FLIGHT} BLS requests"))
            return
        try:
            self._bls_pool.submit(self._serve_bls, header, buffers)
        except RuntimeError:  # the pool is shut down: the instance is closing
            with self._lock:
                self._bls_in_flight -= 1
            self._reply_bls(header, Unavailable(f"model '{self._model}' is unloading"))

    def _serve_bls(self, header: Header, buffers: list[bytearray]) -> None:
        """A BLS request, or a model loading API call (control.py), waited for here."""
        try:
            if header.get("op") == "control":
                reply = run_control(self._model_control, header, lambda: self._closing)
                with contextlib.suppress(ProtocolError):
                    self._chan.send(reply)
                return
            result = run_bls(self._internal_infer, header, buffers, lambda: self._closing)
            self._reply_bls(header, result)
        finally:
            with self._lock:
                self._bls_in_flight -= 1

    def _reply_bls(self, header: Header, result: Any) -> None:
        if header.get("op") == "control":
            reply: Header = {"op": "control_result", "id": header.get("id"), "error": str(result)}
            with contextlib.suppress(ProtocolError):
                self._chan.send(reply)
            return
        with contextlib.suppress(ProtocolError):
            self._chan.send(*bls_reply(header, result))

    # -- death and close -----------------------------------------------------------------------

    def _broken(self, exc: Exception) -> InferenceFailed:
        """The stub broke the protocol: kill it; the instance is dead."""
        self._proc.kill()
        self._on_death(exc)
        return InferenceFailed(self._dead)

    def _on_death(self, exc: Exception) -> None:
        try:
            code = self._proc.wait(timeout=2)  # the channel closes as the stub exits
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            how = f"channel failed: {exc}"
        with self._lock:
            if self._dead:
                return
            closing = self._closing
            self._dead = (
                f"Stub process '{self.name}' is not healthy. The python model's process "
                f"(pid {self.pid}) ended ({how}); load the model again to restart it."
            )
            calls, self._calls = self._calls, {}
            streams = list(self._streams)
        self._stopped.set()
        if not closing:
            logger.error("model '%s': %s", self._model, self._dead)
        error = InferenceFailed(self._dead)
        for future in calls.values():
            future.set_exception(error)
        for call_id in streams:
            self._end_stream(call_id, error)

    def close(self) -> None:
        """Finalize the model and end its stub (killed after FINALIZE_TIMEOUT_S)."""
        self._closing = True
        if not self._dead:
            with contextlib.suppress(ProtocolError):
                self._chan.send({"op": "finalize"})
            self._stopped.wait(FINALIZE_TIMEOUT_S)
        try:
            self._proc.wait(timeout=2 if self._stopped.is_set() else 0.1)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._chan.close()
        self._reader.join(timeout=5)
        self._bls_pool.shutdown(wait=False, cancel_futures=True)
