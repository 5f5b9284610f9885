"""A study's identity: what the trials were measured on (`Target`) and the study's name.

Trials measured on different targets are not comparable, so a shared storage (PostgreSQL) must
never merge them by accident. The default study name is therefore

    <model>-<sweep hash>-<target hash>

The sweep hash (8 hex) covers what makes results comparable on one target: the model's config on
disk, the space, the load, the measurement and the objectives and constraints (GPU bounds only
when set, so older sweeps keep their hash). The target hash (8 hex) covers the server's launch
mode (embedded / local / docker / remote), its kind and version (server metadata), the GPU names
the server sees (or "cpu" with the CPU model and core count when it sees none) and the host: the
URL's host for a remote server, this host's name for one launched here or on a loopback URL. A
remote server's GPUs cannot be named from the client: its host and version identify it.

An explicit study name (`--study-name`, `[output] study_name`) is used as given: workers that name
the same study share it whatever their targets ("I know: merge"). Every trial carries its target
(user attr `target`) and the study lists every target it has seen (study user attr `targets`), so
a merged study says where each trial ran.

Studies created before the target was part of the name (`<model>-<sweep hash>`) are resumed from
a SQLite storage (the output directory's study.db: this machine's) and adopted: the target is
recorded on them, and a later run on another target no longer resumes them. A shared storage's
old study is not adopted (it may hold any machine's trials); `--study-name` continues it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from perfkit.load.metrics_scrape import is_local
from perfkit.machine import cpu_model
from perfkit.results import ServerInfo
from perfkit.sweepfile import Direction, TuneSweep
from perfkit.tune import storage as st

# The trial's target (`Target.as_attr()`; set by the worker's `TaggingSampler`, see
# `storage.set_worker_attrs`), and the study's targets (a list of them).
TARGET_ATTR = "target"
TARGETS_ATTR = "targets"
LAUNCHES = ("embedded", "local", "docker", "remote")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where trials are measured: the server (launch mode, kind, version), its hardware, its host.

    Attributes:
        launch: "embedded", "local", "docker" (started by perfkit) or "remote" (a given URL).
        server: the server's kind as its metadata names it ("perfkit_server", "triton").
        version: the server's version from its metadata ("" when it reports none).
        gpus: the names of the GPUs the server sees, in CUDA device order; () when none, or for a
            remote server (unknown from the client).
        cpu: "<CPU model> x<logical cores>" when the server sees no GPU on this host; "" otherwise.
        host: this host's name for a server here, the URL's host for a remote one.
    """

    launch: str
    server: str
    version: str
    gpus: tuple[str, ...]
    cpu: str
    host: str

    def hardware(self) -> str:
        """The GPUs in words ("2x NVIDIA H100", "cpu: AMD EPYC 7B13 x16", "unknown (remote)")."""
        if self.gpus:
            counts: dict[str, int] = {}
            for name in self.gpus:
                counts[name] = counts.get(name, 0) + 1
            return ", ".join(f"{n}x {name}" for name, n in counts.items())
        return f"cpu: {self.cpu}" if self.cpu else "GPUs unknown (remote)"

    def describe(self) -> str:
        """One line: "embedded perfkit_server 0.3.0 on host-a, 2x NVIDIA H100"."""
        software = f"{self.server} {self.version}".strip()
        return f"{self.launch} {software} on {self.host}, {self.hardware()}"

    def digest(self) -> str:
        """8 hex of a hash over every field: equal targets, equal digests."""
        text = json.dumps(self.as_attr(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def as_attr(self) -> dict[str, Any]:
        """JSON form, for the study's and the trials' user attrs."""
        doc = dataclasses.asdict(self)
        doc["gpus"] = list(self.gpus)
        return doc

    @classmethod
    def from_attr(cls, value: Any) -> Target | None:
        """A `Target` from its JSON form; None for anything else (an attr some other tool set)."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                launch=str(value["launch"]),
                server=str(value["server"]),
                version=str(value["version"]),
                gpus=tuple(str(g) for g in value["gpus"]),
                cpu=str(value["cpu"]),
                host=str(value["host"]),
            )
        except (KeyError, TypeError):
            return None


def _gpu_names(spec: str | None) -> tuple[str, ...]:
    """The names of the GPUs a server started here sees: NVML's visible GPUs, cut further by
    `spec` (a CUDA_VISIBLE_DEVICES value; None: all of them)."""
    from perfkit.nvml import _visible, visible_gpus

    gpus = visible_gpus()
    if spec is not None:
        gpus = _visible(gpus, spec)
    return tuple(g.name for g in gpus)


def _docker_spec(gpus: str | int | Sequence[int | str] | None) -> str | None:
    """docker run's --gpus ("all", a count, device ids; None: no GPU) as a CUDA_VISIBLE_DEVICES
    value over this host's GPUs ("" hides them all, None shows them all)."""
    if gpus is None:
        return ""
    if gpus == "all":
        return None
    if isinstance(gpus, int):
        return ",".join(str(i) for i in range(gpus))
    if isinstance(gpus, str):
        return gpus.removeprefix("device=")
    return ",".join(str(g) for g in gpus)


def url_host(url: str) -> str:
    """The host of a server URL ("grpcs://Node-7:8001" -> "node-7"), lower case, no brackets."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0].lower()
    host, sep, port = rest.rpartition(":")
    if sep and port.isdigit() and host:
        return host.lower()
    return rest.lower()


def target_of(
    info: ServerInfo,
    *,
    launch: str,
    server_env: Mapping[str, str] | None = None,
    docker_gpus: str | int | Sequence[int | str] | None = None,
) -> Target:
    """The target of a ready server: `info` is its metadata (`perfkit.launch.server_info`),
    `launch` how perfkit reached it ("remote" for a given URL), `server_env` the environment a
    server perfkit started got on top of this process's (its CUDA_VISIBLE_DEVICES cuts the GPUs),
    `docker_gpus` a docker server's `gpus` (None: the container sees no GPU)."""
    if launch not in LAUNCHES:
        raise ValueError(f"launch {launch!r} is not one of {', '.join(LAUNCHES)}")
    here = launch != "remote" or is_local(info.url)
    if launch == "docker":
        spec = _docker_spec(docker_gpus)
    else:
        spec = (server_env or {}).get("CUDA_VISIBLE_DEVICES")
    gpus = _gpu_names(spec) if here else ()
    cpu = f"{cpu_model()} x{os.cpu_count() or 1}" if here and not gpus else ""
    return Target(
        launch=launch,
        server=info.kind,
        version=info.version,
        gpus=gpus,
        cpu=cpu,
        host=socket.gethostname() if here else url_host(info.url),
    )


def sweep_hash(sweep: TuneSweep, base_hash: str) -> str:
    """8 hex over what makes results comparable on one target: the model's config on disk (after
    a write-back, a rerun tunes from the new baseline), space, load, measurement and objective."""
    key = json.dumps(
        {
            "base": base_hash,
            "space": dataclasses.asdict(sweep.space),
            "load": dataclasses.asdict(sweep.load),
            "measure": dataclasses.asdict(sweep.measure),
            "objectives": sweep.objectives,
            "constraints": _constraints_key(sweep),
            # The capacity objective's rate search (only then, so other studies keep their names).
            **(
                {"capacity": dataclasses.asdict(sweep.capacity)}
                if any(name == "capacity_infer_per_s" for name, _ in sweep.objectives)
                else {}
            ),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _constraints_key(sweep: TuneSweep) -> dict[str, Any]:
    """The constraints in the sweep hash; the GPU bounds only when set, so the studies of sweeps
    without them keep the names they had before GPU bounds existed."""
    doc = dataclasses.asdict(sweep.constraints)
    for name in ("max_gpu_memory_mb", "max_gpu_power_w"):
        if doc[name] is None:
            del doc[name]
    return doc


def legacy_study_name(sweep: TuneSweep, base_hash: str) -> str:
    """The default name before the target was part of it: `<model>-<sweep hash>`."""
    return f"{sweep.model}-{sweep_hash(sweep, base_hash)}"


def study_name_for(sweep: TuneSweep, base_hash: str, target: Target) -> str:
    """The default study name: `<model>-<sweep hash>-<target hash>`."""
    return f"{legacy_study_name(sweep, base_hash)}-{target.digest()}"


@dataclass(frozen=True, slots=True)
class OpenedStudy:
    """`open_target_study`'s answer: the study, whether this call created it, and notes to show."""

    study: optuna.Study
    created: bool
    notes: tuple[str, ...]


def _exists(storage: RDBStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _adoptable(storage: RDBStorage, name: str, target: Target) -> bool:
    """Whether this run resumes the pre-target study `name`: in a SQLite storage (this machine's)
    that no other target has adopted."""
    if not str(storage.engine.url).startswith("sqlite") or not _exists(storage, name):
        return False
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    seen = [Target.from_attr(t) for t in attrs.get(TARGETS_ATTR, [])]
    return not seen or target in seen


def open_target_study(
    storage: RDBStorage,
    sweep: TuneSweep,
    base_hash: str,
    target: Target,
    directions: list[Direction],
    sampler: optuna.samplers.BaseSampler,
) -> OpenedStudy:
    """Create or resume this sweep's study on `target` (the module docstring's rules) and record
    the target in the study's user attrs. An explicit `sweep.study_name` is used as given."""
    notes: list[str] = []
    name = sweep.study_name
    if name is None:
        name = study_name_for(sweep, base_hash, target)
        legacy = legacy_study_name(sweep, base_hash)
        if not _exists(storage, name):
            if _adoptable(storage, legacy, target):
                notes.append(
                    f"resuming study {legacy!r}, named before targets were part of study names; "
                    f"it is now this target's ({target.describe()})"
                )
                name = legacy
            elif _exists(storage, legacy):
                notes.append(
                    f"this storage holds study {legacy!r} of this sweep from before targets were "
                    "part of study names (it may hold another machine's trials): not resumed. "
                    f"Pass --study-name {legacy} to continue it"
                )
    study, created = st.open_study(storage, name, directions, sampler)
    seen = study.user_attrs.get(TARGETS_ATTR, [])
    targets = [t for t in (Target.from_attr(v) for v in seen) if t is not None]
    if target not in targets:
        study.set_user_attr(TARGETS_ATTR, [*seen, target.as_attr()])
        others = [t for t in targets if t != target]
        if others:
            notes.append(
                f"study {name!r} merges trials from different targets (named with "
                f"--study-name): {'; '.join(t.describe() for t in [*others, target])}"
            )
    return OpenedStudy(study, created, tuple(notes))


def targets_by_trial(trials: list[FrozenTrial]) -> dict[str, list[int]]:
    """Each target's description -> the numbers of the trials measured on it (trials without a
    target attr left out), for the result's record of a study's targets."""
    found: dict[str, list[int]] = {}
    for t in trials:
        target = Target.from_attr(t.user_attrs.get(TARGET_ATTR))
        if target is not None:
            found.setdefault(target.describe(), []).append(t.number)
    return found
