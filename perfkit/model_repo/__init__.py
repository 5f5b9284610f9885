"""config.pbtxt and model repositories, read and written with tritonclient model_config_pb2.

Pure, shared with perfkit_server: no server or client imports. Its errors live here, stdlib only, so
either side can catch them without importing protobuf; each side maps them to its own error at its
boundary (perfkit: `ConfigError`, exit code 3; perfkit_server: `InvalidConfig`, a failed load).
"""

from __future__ import annotations

__all__ = ["InvalidModelConfig", "InvalidRepository", "ModelRepoError"]


class ModelRepoError(ValueError):
    """A config.pbtxt, config JSON, editor argument, model name or repository path is wrong.

    The message says where and what to do.
    """


class InvalidModelConfig(ModelRepoError):
    """A model configuration (config.pbtxt text or file, JSON form, or an editor's value) is wrong."""


class InvalidRepository(ModelRepoError):
    """A model name that would leave the repository, or a repository directory that is not there."""
