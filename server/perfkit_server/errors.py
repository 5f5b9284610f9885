"""The transport-free ServerError tree; http_service and grpc_service map each class to a status.

ServerError
├── InvalidInput        HTTP 400 / INVALID_ARGUMENT: bad request, shape, datatype, config override
│   └── InvalidConfig   a model's config.pbtxt, config override or directory layout (fails its load)
├── ModelNotFound       HTTP 404 / NOT_FOUND: unknown model or version
├── Unavailable         HTTP 503 / UNAVAILABLE: model not ready, queue full, timeout, shutting down
└── InferenceFailed     HTTP 500 / INTERNAL: the backend raised while executing
DecoupledUnary          HTTP 501 / UNIMPLEMENTED: one-response inference on a decoupled model
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the server returns to a client. The message is shown verbatim."""


class InvalidInput(ServerError):
    """The request (or a load/config request) is malformed or does not match the model."""


class InvalidConfig(InvalidInput):
    """A model's config (file or override) or version layout is wrong; the message names where.

    Also what perfkit.model_repo's own errors (ModelRepoError) become in this server.
    """


class ModelNotFound(ServerError):
    """No such model, or no such version of it."""


class Unavailable(ServerError):
    """The model exists but cannot serve now (not ready, queue full, timed out, shutting down)."""


class InternalError(ServerError):
    """The request was fine but the server failed to carry it out."""


class InferenceFailed(InternalError):
    """The backend failed while executing a batch."""


class DecoupledUnary(ServerError):
    """A one-response inference (HTTP infer, gRPC ModelInfer, a request from inside the server)
    on a decoupled model. Triton refuses it (UNSUPPORTED) with a message that names the endpoint;
    each transport re-raises it with its own name, as Triton words it."""

    def __init__(self, endpoint: str = "a one-response inference") -> None:
        super().__init__(f"{endpoint} doesn't support models with decoupled transaction policy")
