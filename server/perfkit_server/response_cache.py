"""Triton's response cache: the `local` cache (LRU by bytes), its flags, its load-time rules.

The server has one cache (`--cache-config local,size=<bytes>`, or the deprecated
`--response-cache-byte-size <bytes>`), shared by every model whose config says
`response_cache { enable: true }`. Both sides are needed, as in Triton: a model that enables the
cache on a server without one loads and is not cached (logged here, where Triton says nothing).

A request's key covers the model name, its resolved version and, per input in name order, the
input's name, datatype, shape and bytes. Triton's key (core cache_manager.cc, a 64-bit boost
hash_combine) leaves out datatype and shape, so two requests whose input bytes are equal but
whose shapes differ share an entry there and the second gets the first's outputs; this key keeps
them apart, and a 128-bit BLAKE2b digest of the tensors makes a collision negligible. The entry
holds every output the model produced, so which outputs a request asks for does not enter the
key (each response picks its own from the entry).

Only successful responses are stored; an entry larger than the whole cache is not stored (as the
local cache refuses it); inserting evicts least recently used entries until the new one fits.
Entries outlive a model's reload or unload, as in Triton's local cache (its key has no load
generation either): a model reloaded with other weights under the same version can be answered
from entries of the old one until they are evicted.
The byte count of an entry is its tensors' bytes plus their names, datatypes and shapes, plus a
fixed per-entry overhead, so the number of entries is bounded too: memory stays within the size.

Statistics follow Triton (core infer_stats.cc): a hit counts as a success, its queue time is the
time before the lookup, its `cache_hit` time the lookup; it adds nothing to compute times,
inference_count or execution_count. A miss runs the model as usual and adds lookup + insertion
time to `cache_miss` (and to the request's duration). The server-wide gauges are the local
cache's (`nv_cache_util`, `nv_cache_num_entries`, ...), per-model counters are in metrics.py.

Every method runs on the serving event loop (DataPlane.infer), so nothing here takes a lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfkit_server.types import Array, InferInput, serialize_bytes

logger = logging.getLogger(__name__)

CACHE_NAME = "local"
# Bytes charged to every entry on top of its tensors: the key, the dict slots and the arrays'
# headers. Keeps a cache of many tiny responses within its size as well.
ENTRY_OVERHEAD = 256

Key = bytes


@dataclass(slots=True)
class _Entry:
    outputs: dict[str, Array]
    size: int


class ResponseCache:
    """The server's `local` response cache: key -> a successful execution's outputs, LRU by bytes."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the response cache size must be >= 1 byte, got {size}")
        self.size = size
        self.used = 0
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        # The local cache's own counters (its server-wide gauges).
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.lookup_ns = 0
        self.insert_ns = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(model: str, version: int, inputs: list[InferInput]) -> Key:
        """The request's cache key (see the module doc for what it covers and why)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{model}\0{version}\0".encode())
        for inp in sorted(inputs, key=lambda i: i.name):
            digest.update(f"{inp.name}\0{inp.datatype}\0{inp.shape}\0".encode())
            digest.update(_tensor_bytes(inp.data))
        return digest.digest()

    def lookup(self, key: Key) -> tuple[dict[str, Array] | None, int]:
        """(the entry's outputs or None, lookup ns); a hit becomes the most recently used."""
        t0 = time.perf_counter_ns()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        elapsed = time.perf_counter_ns() - t0
        self.lookup_ns += elapsed
        if entry is None:
            self.misses += 1
            return None, elapsed
        self.hits += 1
        return entry.outputs, elapsed

    def insert(self, key: Key, outputs: dict[str, Array]) -> int:
        """Store a copy of `outputs` under `key`, evicting LRU entries to fit; returns the ns it took.

        An entry larger than the whole cache is not stored (the local cache's rule); a key that is
        already there (two concurrent misses of one request) keeps its entry.
        """
        t0 = time.perf_counter_ns()
        if key not in self._entries:
            size = entry_size(outputs)
            if size <= self.size:
                while self.used + size > self.size:
                    _, old = self._entries.popitem(last=False)
                    self.used -= old.size
                    self.evictions += 1
                self._entries[key] = _Entry(_frozen_copy(outputs), size)
                self.used += size
            else:
                logger.debug(
                    "response of %d bytes not cached: larger than the whole cache (%d bytes)",
                    size,
                    self.size,
                )
        elapsed = time.perf_counter_ns() - t0
        self.insert_ns += elapsed
        return elapsed


def entry_size(outputs: dict[str, Array]) -> int:
    """Bytes an entry is charged: tensors, their names, datatypes and shapes, plus the overhead."""
    total = ENTRY_OVERHEAD
    for name, array in outputs.items():
        total += len(name) + 16 + 8 * array.ndim
        total += len(serialize_bytes(array)) if array.dtype.kind in "OSU" else int(array.nbytes)
    return total


def _tensor_bytes(array: Array) -> bytes | memoryview:
    if array.dtype.kind in "OSU":
        return serialize_bytes(array)  # Triton's wire form: 4-byte length + bytes per element
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _frozen_copy(outputs: dict[str, Array]) -> dict[str, Array]:
    """Copies the entry owns (a backend may hand back views of the request's own buffers)."""
    frozen: dict[str, Array] = {}
    for name, array in outputs.items():
        copy = np.array(array, copy=True)
        copy.flags.writeable = False
        frozen[name] = copy
    return frozen


# -- flags ---------------------------------------------------------------------------------------


def parse_cache_config(values: list[str], byte_size: int | None = None) -> int:
    """The cache size in bytes from --cache-config values (and --response-cache-byte-size), 0: none.

    Raises ValueError naming the flag, the value and what to write instead.
    """
    if values and byte_size is not None:
        # tritonserver's own words for the combination.
        raise ValueError(
            "Incompatible flags --response-cache-byte-size and --cache-config both provided. "
            "Please provide one or the other."
        )
    if byte_size is not None:
        logger.warning(
            "'--response-cache-byte-size' has been deprecated! This will default to the 'local' "
            "cache implementation with the provided byte size for its config. Please use "
            "'--cache-config' instead. The equivalent --cache-config CLI args would be: "
            "'--cache-config=local,size=%d'",
            byte_size,
        )
        return _checked_size(str(byte_size), "--response-cache-byte-size")
    settings: dict[str, str] = {}
    for arg in values:
        name, comma, rest = arg.partition(",")
        if not comma or not name:
            raise ValueError(
                "No cache specified. --cache-config option format is "
                f"<cache name>,<setting>=<value>. Got {arg!r}"
            )
        setting, equals, value = rest.partition("=")
        if not equals or not setting or not value:
            raise ValueError(
                f"--cache-config option format is '<cache name>,<setting>=<value>'. Got {arg!r}"
            )
        if name != CACHE_NAME:
            raise ValueError(
                f"--cache-config {arg!r}: unknown cache {name!r}; this server implements "
                f"Triton's '{CACHE_NAME}' cache only: --cache-config={CACHE_NAME},size=<bytes>"
            )
        if setting != "size":
            raise ValueError(
                f"--cache-config {arg!r}: the '{CACHE_NAME}' cache takes one setting, 'size' "
                f"(bytes), not {setting!r}"
            )
        if setting in settings and settings[setting] != value:
            raise ValueError(
                f"--cache-config {CACHE_NAME},{setting} is given twice "
                f"({settings[setting]!r} and {value!r}); give it once"
            )
        settings[setting] = value
    if not settings:
        return 0
    return _checked_size(settings["size"], f"--cache-config {CACHE_NAME},size")


def _checked_size(text: str, flag: str) -> int:
    try:
        size = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{flag}: expected a size in bytes (an integer), got {text!r}") from None
    if size < 1:
        raise ValueError(f"{flag}: the cache size must be > 0 bytes, got {size}")
    memory = _physical_memory()
    if memory and size > memory:
        raise ValueError(
            f"{flag}: {size} bytes is more than this machine's memory ({memory} bytes); "
            "give a smaller size"
        )
    return size


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


# -- models --------------------------------------------------------------------------------------


def model_cache(config: Any, cache: ResponseCache | None, source: str) -> ResponseCache | None:
    """The cache a model's requests use, or None; refuses what Triton refuses at load.

    Raises ValueError for a decoupled or sequence-batched model that enables the cache (Triton's
    INVALID_ARG, core model_config_utils.cc).
    """
    if not config.response_cache.enable:
        return None
    if config.model_transaction_policy.decoupled:
        raise ValueError(
            f"{source}: response_cache: Response Cache does not currently support model "
            f"{config.name} with 'decoupled' transaction policy. Please disable the response "
            "cache."
        )
    if config.HasField("sequence_batching"):
        raise ValueError(
            f"{source}: response_cache: Response Cache does not currently support model "
            f"{config.name} with sequence batching scheduler. Please disable the response cache."
        )
    if cache is None:
        logger.warning(
            "model '%s' enables response_cache but the server has no cache: its responses are "
            "not cached (as Triton); start the server with --cache-config=local,size=<bytes>",
            config.name,
        )
    return cache
