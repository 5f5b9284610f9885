"""The stub process of one python-model instance (Triton's triton_python_backend_stub).

Started by PythonBackend as `python -m perfkit_server.backends.python.stub FD` with the server's own
interpreter and import path; FD is its end of a socketpair (ipc.Channel). A reader thread takes
frames from the server: commands (init, execute, finalize) go to the main thread, which runs the
model; BLS results wake the model thread waiting in `InferenceRequest.exec()`, and the answers
to the model loading API (pb_utils.load_model and co.) the thread waiting in them. When the server's
end closes (unload, or the server died however it died) the reader ends the process at once, so
no stub outlives its server. SIGINT and SIGTERM are ignored: sent to the process group, they reach
the server, which finalizes its stubs.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import os
import queue
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import perfkit_server
from perfkit_server.backends.python.ipc import (
    Channel,
    Header,
    ProtocolError,
    decode_tensors,
    encode_tensors,
)

_UTILS = "triton_python_backend_utils"
# Triton's prefix of each model loading call's error (python_backend's ModelLoader).
_CONTROL_FAILED = {
    "ready": "Failed to check model readiness: ",
    "load": "Failed to load model: ",
    "unload": "Failed to unload model: ",
}


def load_utils() -> ModuleType:
    """`triton_python_backend_utils`, importable by model code: the copy that ships next to the
    perfkit_server package (server/ in a checkout), whatever the import path holds."""
    if _UTILS in sys.modules:
        return sys.modules[_UTILS]
    path = Path(perfkit_server.__file__).resolve().parent.parent / f"{_UTILS}.py"
    spec = importlib.util.spec_from_file_location(_UTILS, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"{_UTILS}.py is missing next to perfkit_server ({path})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_UTILS] = module
    spec.loader.exec_module(module)
    return module


def error_text(exc: BaseException) -> str:
    """An exception as Triton's stub reports it (pybind11's form): type, message, the model's
    frames innermost first (the stub's own frames are C++ in Triton, so they are left out)."""
    here = os.path.abspath(__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != here]
    where = "".join(f"  {f.filename}({f.lineno}): {f.name}\n" for f in reversed(frames))
    text = f"{type(exc).__name__}: {exc}"
    return f"{text}\n\nAt:\n{where}" if where else text


class Stub:
    """Runs one model instance for the server at the other end of `channel`."""

    def __init__(self, channel: Channel) -> None:
        self._chan = channel
        self._commands: queue.Queue[tuple[Header, list[bytearray]]] = queue.Queue()
        self._bls_ids = itertools.count(1)
        self._bls_lock = threading.Lock()
        self._bls_waiting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._pb: Any = None
        self._model: Any = None
        self._name = ""
        self._model_name = ""
        self._version = 0
        self._decoupled = False
        self._model_dir = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the server's side of pb_utils (pb_utils._runtime) -----------------------------------

    def exec_request(self, request: Any) -> Any:
        """BLS: send `request` to the server and wait for its response."""
        pb = self._pb
        buffers: list[Any] = []
        header = {
            "op": "bls",
            "model_name": request.model_name(),
            "model_version": request.model_version(),
            "request_id": request.request_id(),
            "correlation_id": request.correlation_id(),
            "flags": request.flags(),
            "timeout": request.timeout(),
            "parameters": request.parameters(),
            "requested_output_names": list(request.requested_output_names()),
            "inputs": encode_tensors(((t.name(), t.as_numpy()) for t in request.inputs()), buffers),
        }
        reply, bufs = self._ask(header, buffers)
        if "error" in reply:
            err = reply["error"]
            return pb.InferenceResponse(error=pb.TritonError(err["message"], err["code"]))
        tensors = [pb.Tensor(n, a) for n, a in decode_tensors(reply["outputs"], bufs)]
        return pb.InferenceResponse(output_tensors=tensors)

    def model_control(self, action: str, name: str, **args: Any) -> bool:
        """The model loading API: ask the server and wait; its error raised as Triton raises it."""
        reply, _ = self._ask({"op": "control", "action": action, "model_name": name, **args}, [])
        if "error" in reply:
            raise self._pb.TritonModelException(
                f"{_CONTROL_FAILED[action]}Failed to process the request for model "
                f"'{self._name}', message: {reply['error']}"
            )
        return bool(reply.get("ready"))

    def _ask(self, header: Header, buffers: list[Any]) -> tuple[Header, list[bytearray]]:
        """Send a request frame to the server and wait for the reply with its id."""
        done = threading.Event()
        slot: list[Any] = []
        with self._bls_lock:
            bls_id = next(self._bls_ids)
            self._bls_waiting[bls_id] = (done, slot)
        header["id"] = bls_id
        self._chan.send(header, buffers)
        done.wait()
        return slot[0], slot[1]

    def log(self, level: int, message: str) -> None:
        self._chan.send({"op": "log", "level": level, "message": message})

    def model_dir(self) -> str:
        return self._model_dir

    # -- the loops -----------------------------------------------------------------------------

    def read_forever(self) -> None:
        """The reader thread: dispatch frames; end the process when the server's end closes."""
        try:
            while True:
                header, buffers = self._chan.recv()
                if header.get("op") in ("bls_result", "control_result"):
                    with self._bls_lock:
                        waiter = self._bls_waiting.pop(int(header.get("id", -1)), None)
                    if waiter is not None:
                        waiter[1].extend((header, buffers))
                        waiter[0].set()
                else:
                    self._commands.put((header, buffers))
        except ProtocolError:
            os._exit(0)  # the server closed its end or is gone: nothing left to serve

    def run(self) -> None:
        while True:
            header, buffers = self._commands.get()
            op = header.get("op")
            if op == "init":
                self._initialize(header)
            elif op == "execute":
                self._execute(header, buffers)
            elif op == "finalize":
                self._finalize()
                return

    # -- commands ------------------------------------------------------------------------------

    def _initialize(self, header: Header) -> None:
        try:
            self._pb = load_utils()
            self._pb._runtime = self
            args: dict[str, str] = header["args"]
            self._name = args["model_instance_name"]
            self._model_name = args["model_name"]
            self._version = int(args["model_version"])
            self._decoupled = bool(header.get("decoupled"))
            path = Path(header["model_path"])
            self._model_dir = str(path.parent)
            # As Triton's stub: the version and model directories on sys.path, the file imported
            # as "<version>.<stem>" (so a model may import modules beside it).
            sys.path.append(str(path.parent))
            sys.path.append(str(path.parent.parent))
            module = importlib.import_module(f"{path.parent.name}.{path.stem}")
            model_class = getattr(module, "TritonPythonModel", None)
            if model_class is None:
                raise AttributeError(f"{path} defines no class TritonPythonModel")
            self._model = model_class()
            if hasattr(self._model, "initialize"):
                self._model.initialize(args)
        except BaseException as exc:
            self._chan.send({"op": "init_done", "id": header["id"], "error": error_text(exc)})
            return
        self._chan.send({"op": "init_done", "id": header["id"]})

    def _requests(self, header: Header, buffers: list[bytearray], captured: list[Any]) -> list[Any]:
        pb = self._pb
        call_id = header["id"]
        requests = []
        for index, r in enumerate(header["requests"]):
            tensors = [pb.Tensor(n, a) for n, a in decode_tensors(r["inputs"], buffers)]
            request = pb.InferenceRequest(
                request_id=r.get("request_id", ""),
                correlation_id=r.get("correlation_id", 0),
                inputs=tensors,
                requested_output_names=r["requested_output_names"],
                model_name=self._model_name,
                model_version=self._version,
                flags=r.get("flags", 0),
                parameters=r.get("parameters", "{}"),
            )
            request._sender = pb.InferenceResponseSender(self._deliverer(call_id, index, captured))
            requests.append(request)
        return requests

    def _deliverer(self, call_id: int, index: int, captured: list[Any]) -> Any:
        def deliver(response: Any, flags: int) -> None:
            final = bool(flags & self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            if not self._decoupled:
                if response is not None:
                    captured[index] = response
                return
            buffers: list[Any] = []
            header: Header = {"op": "send", "id": call_id, "index": index, "final": final}
            if response is not None:
                header.update(self._response(response, buffers))
            self._chan.send(header, buffers)

        return deliver

    def _response(self, response: Any, buffers: list[Any]) -> Header:
        if response.has_error():
            err = response.error()
            return {"error": {"message": err.message(), "code": err.code()}}
        tensors = ((t.name(), t.as_numpy()) for t in response.output_tensors())
        return {"outputs": encode_tensors(tensors, buffers)}

    def _execute(self, header: Header, buffers: list[bytearray]) -> None:
        pb = self._pb
        reply: Header = {"op": "result", "id": header["id"]}
        out: list[Any] = []
        count = len(header["requests"])
        captured: list[Any] = [None] * count
        try:
            requests = self._requests(header, buffers, captured)
            returned = self._model.execute(requests)
            if asyncio.iscoroutine(returned):
                future = asyncio.run_coroutine_threadsafe(returned, self._async_loop())
                returned = None if self._decoupled else future.result()
            if self._decoupled:
                if returned is not None:
                    raise pb.TritonModelException(
                        f"Python model '{self._name}' is using the decoupled mode and the execute "
                        "function must return None."
                    )
            else:
                reply["responses"] = self._responses(requests, returned, captured, out)
        except BaseException as exc:
            reply.pop("responses", None)
            out.clear()
            reply["error"] = (
                f"Failed to process the request(s) for model '{self._name}', message: "
                + error_text(exc)
            )
        self._chan.send(reply, out)

    def _responses(
        self, requests: list[Any], returned: Any, captured: list[Any], buffers: list[Any]
    ) -> list[Header | None]:
        pb = self._pb
        if returned is None:
            returned = captured  # every response went through a sender
        if not isinstance(returned, list):
            raise pb.TritonModelException(
                f"Expected a list in the execute return, found type '{type(returned)}'."
            )
        if len(returned) != len(requests):
            raise pb.TritonModelException(
                "Number of InferenceResponse objects do not match the number of InferenceRequest "
                f"objects. InferenceRequest(s) size is:{len(requests)}, and InferenceResponse(s) "
                f"size is:{len(returned)}\n"
            )
        out: list[Header | None] = []
        for request, returned_response, sent in zip(requests, returned, captured, strict=True):
            response = sent if returned_response is None else returned_response
            if response is None:  # neither returned nor sent: the server fails the request
                out.append(None)
                continue
            if not isinstance(response, pb.InferenceResponse):
                raise pb.TritonModelException(
                    "Expected an 'InferenceResponse' object in the execute function return list, "
                    f"found type '{type(response)}'."
                )
            wanted = set(request.requested_output_names())
            kept = [t for t in response.output_tensors() if t.name() in wanted]
            pruned = pb.InferenceResponse(output_tensors=kept, error=response.error())
            out.append(self._response(pruned, buffers))
        return out

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        """The loop `async def execute` runs on (a daemon thread, as Triton's stub)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True).start()
        return self._loop

    def _finalize(self) -> None:
        try:
            if self._model is not None and hasattr(self._model, "finalize"):
                self._model.finalize()
        except BaseException as exc:
            self.log(2, f"finalize of '{self._name}' failed: {error_text(exc)}")
        self._chan.send({"op": "finalized"})


def main() -> None:
    # The server owns this process: a signal to the whole process group (Ctrl-C, a supervisor's
    # SIGTERM) reaches the server, which finalizes its stubs; its death closes the channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m perfkit_server.backends.python.stub FD\n")
        raise SystemExit(2)
    channel = Channel(socket.socket(fileno=int(sys.argv[1])))
    stub = Stub(channel)
    threading.Thread(target=stub.read_forever, name="stub-reader", daemon=True).start()
    stub.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: the model's threads must not keep the stub alive


if __name__ == "__main__":
    main()
