"""A FAKE docker engine behind the docker SDK's client interface (the engine is an external boundary;
none runs here). `FakeDockerClient` has the SDK's `containers.create/list` and `images.pull` shapes.

A container "runs" a real perfkit_server subprocess on the ports of the tritonserver command line it
is given, so readiness, URLs and stop are exercised for real; only the engine is fake. Containers
given to `FakeContainers(existing=...)` stand for ones an earlier run left behind.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import docker.errors

from perfkit.launch import EmbeddedServer


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` in a tritonserver command line."""
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}="))


class FakeContainer:
    def __init__(
        self,
        image: str,
        kwargs: dict[str, Any],
        *,
        exits: bool = False,
        status: str = "created",
        ident: str = "c0ffee000000",
    ) -> None:
        self.image = image
        self.kwargs = kwargs
        self.status = status
        self.exits = exits
        self.id = ident * 4
        self.short_id = ident[:10]
        self.name = kwargs.get("name", f"fake_{ident[:6]}")
        self.labels: dict[str, str] = dict(kwargs.get("labels", {}))
        self.stopped_with: int | None = None
        self.removed = False
        self.removed_with_force: bool | None = None
        self.server: EmbeddedServer | None = None
        self.events: list[str] = []
        self.stdin_eof = False
        # The engine's end of the stdin attach (perfkit holds the other).
        self.attached: socket.socket | None = None

    def attach_socket(self, params: dict[str, Any]) -> socket.socket:
        self.events.append(f"attach {sorted(params)}")
        ours, self.attached = socket.socketpair()
        return ours

    def start(self) -> None:
        self.events.append("start")
        command = self.kwargs["command"]
        if self.exits:
            self.status = "exited"
            return
        self.server = EmbeddedServer(
            Path(flag(command, "model-repository")),
            http_port=int(flag(command, "http-port")),
            grpc_port=int(flag(command, "grpc-port")),
            metrics_port=int(flag(command, "metrics-port")),
            model_control_mode=flag(command, "model-control-mode"),
            load_models=[flag(command, "load-model")],
        )
        self.server._spawn()  # started like a container: no wait; DockerTriton polls readiness
        self.status = "running"

    def reload(self) -> None:
        if self.status == "running" and self.server is not None and not self.server.alive():
            self.status = "exited"

    def logs(self, tail: int | str = "all") -> bytes:
        return b"I1125 fake tritonserver log\nE1125 error: creating server: failed to load all models\n"

    def stop(self, timeout: int = 10) -> None:
        self.stopped_with = timeout
        if self.server is not None:
            self.server.stop()
        self.status = "exited"

    def remove(self, force: bool = False) -> None:
        self.removed = True
        self.removed_with_force = force
        if self.server is not None:
            self.server.stop()
        if self.attached is not None:  # had perfkit closed its end of the stdin attach?
            self.attached.setblocking(False)
            try:
                self.stdin_eof = self.attached.recv(1) == b""
            except BlockingIOError:
                self.stdin_eof = False
            self.attached.close()


class FakeContainers:
    def __init__(
        self,
        *,
        exits: bool = False,
        fail: Exception | None = None,
        existing: list[FakeContainer] | None = None,
        missing_images: set[str] | None = None,
    ) -> None:
        self.exits = exits
        self.fail = fail
        self.started: list[FakeContainer] = []
        self.existing = list(existing or [])
        # Images not pulled yet: create raises ImageNotFound for them, as the engine does.
        self.missing_images = missing_images if missing_images is not None else set()
        self.list_calls: list[dict[str, Any]] = []

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        if self.fail is not None:
            raise self.fail
        if image in self.missing_images:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        container = FakeContainer(
            image, kwargs, exits=self.exits, ident=f"{len(self.started):012x}"
        )
        self.started.append(container)
        return container

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[FakeContainer]:
        self.list_calls.append({"all": all, "filters": filters})
        wanted = (filters or {}).get("label")
        found = []
        for c in self.existing + self.started:
            if c.removed or (not all and c.status != "running"):
                continue
            if wanted is not None:
                key, _, value = wanted.partition("=")
                if key not in c.labels or (value and c.labels[key] != value):
                    continue
            found.append(c)
        return found


class FakeImages:
    def __init__(self, containers: FakeContainers, *, unknown: set[str] | None = None) -> None:
        self.containers = containers
        self.unknown = unknown or set()  # images no registry has
        self.pulled: list[str] = []

    def pull(self, repository: str, tag: str | None = None) -> None:
        if repository in self.unknown:
            raise docker.errors.NotFound(f"manifest for {repository} not found")
        self.pulled.append(repository)
        self.containers.missing_images.discard(repository)


class FakeDockerClient:
    """FAKE docker engine client: `FakeDockerClient(missing_images={...}, existing=[...])`."""

    def __init__(self, *, unknown_images: set[str] | None = None, **kwargs: Any) -> None:
        self.containers = FakeContainers(**kwargs)
        self.images = FakeImages(self.containers, unknown=unknown_images)
