"""Where a model's instances run: Triton's instance-group normalization, validation and placement.

Pure: the host (visible GPUs, whether the model's backend can use one) comes in as a `Host` value
that the registry probes once per load (backends.probe_host). The rules are Triton's (core
model_config_utils.cc NormalizeInstanceGroup / ValidateInstanceGroup, backend_model.cc):

- no instance_group: one group named after the model, kind KIND_AUTO;
- a group without a name is `<model>_<index>`; a count under 1 is 1;
- KIND_AUTO is KIND_GPU when a GPU is visible, every GPU it lists is visible and the backend can
  use a GPU (Triton leaves the last to the backend), else KIND_CPU;
- KIND_GPU without `gpus` runs on every visible GPU, and `count` instances run on EACH listed GPU;
  one that names no visible GPU, no visible GPU at all, or a backend that cannot use one fails
  the load, naming the group and what is missing;
- KIND_CPU and KIND_MODEL groups may not list gpus; KIND_MODEL leaves the device to the backend
  (here: the CPU, device 0);
- instances are created count-major: `<group>_<n>` on each of the group's GPUs in turn.

Imports only the model_config enum; nothing here touches NVML, CUDA or a backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

KIND_AUTO, KIND_GPU, KIND_CPU, KIND_MODEL = "KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"
_KINDS = mc.ModelInstanceGroup.Kind


@dataclass(frozen=True, slots=True)
class Host:
    """What this host offers one model's backend (probed once per load)."""

    gpus: tuple[int, ...]  # visible CUDA device ids
    no_gpu: str = "no GPU is visible"  # why `gpus` is empty, for messages
    backend_gpu: str | None = None  # why the backend cannot use a GPU; None: it can
    backend_cpu: bool = True  # whether the backend runs on a CPU (tensorrt does not)


@dataclass(frozen=True, slots=True)
class Group:
    """One instance group as resolved: kind decided, gpus filled in."""

    index: int  # position in instance_group
    name: str
    kind: str  # KIND_CPU, KIND_GPU or KIND_MODEL
    count: int  # instances per device
    gpus: tuple[int, ...]  # KIND_GPU only


@dataclass(frozen=True, slots=True)
class Slot:
    """One instance to create: where it runs and the group it belongs to."""

    kind: str
    device_id: int  # CUDA device id for KIND_GPU, else 0
    group: str  # the group's name (Triton names its instances `<group>_<n>`)
    group_index: int


def _kind_name(group: Any) -> str:
    return str(_KINDS.Name(group.kind))


def _joined(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


def resolve_groups(config: Any, backend: str, host: Host) -> list[Group]:
    """The instance groups of `config` resolved for `host`; ValueError names the group and why.

    `config` is read, never changed (`apply_groups` writes the result into it)."""
    model = config.name
    raw = list(config.instance_group) or [mc.ModelInstanceGroup(name=model)]
    groups: list[Group] = []
    for index, group in enumerate(raw):
        name = group.name or f"{model}_{index}"
        where = f"instance group '{name}' (instance_group[{index}]) of model '{model}'"
        listed = tuple(int(g) for g in group.gpus)
        asked = _kind_name(group)
        kind, why_cpu = asked, ""
        if asked == KIND_AUTO:
            kind, why_cpu = _auto(listed, host)
        if group.passive:
            raise ValueError(
                f"{where}: passive instances are not supported by this server (it would schedule "
                "requests to them); remove 'passive'"
            )
        if group.secondary_devices:
            raise ValueError(
                f"{where}: secondary_devices (NVDLA) are not supported by this server; remove them"
            )
        if group.profile and backend != "tensorrt":
            raise ValueError(
                f"{where}: 'profile' is only supported for TensorRT models (platform "
                f"tensorrt_plan), not backend '{backend}'"
            )
        if kind == KIND_GPU:
            gpus = _gpus(where, listed, host)
        elif listed:
            resolved = f" (KIND_AUTO resolved to KIND_CPU: {why_cpu})" if why_cpu else ""
            raise ValueError(
                f"{where} has kind {kind}{resolved} but specifies gpus [{_joined(listed)}]; "
                "only a KIND_GPU group may list GPUs"
            )
        else:
            gpus = ()
        if kind != KIND_GPU and not host.backend_cpu:
            resolved = f" (KIND_AUTO resolved to KIND_CPU: {why_cpu})" if why_cpu else ""
            also = (
                f"; {host.backend_gpu}" if host.backend_gpu and host.backend_gpu != why_cpu else ""
            )
            raise ValueError(
                f"{where} has kind {kind}{resolved}, but backend '{backend}' runs only on a GPU "
                f"(KIND_GPU){also}"
            )
        groups.append(Group(index, name, kind, max(1, int(group.count)), gpus))
    return groups


def _auto(listed: tuple[int, ...], host: Host) -> tuple[str, str]:
    """KIND_AUTO's kind and, for KIND_CPU, why."""
    if not host.gpus:
        return KIND_CPU, host.no_gpu
    absent = [g for g in listed if g not in host.gpus]
    if absent:
        return KIND_CPU, (
            f"gpus [{_joined(absent)}] not visible (visible GPUs: {_joined(host.gpus)})"
        )
    if host.backend_gpu is not None:
        return KIND_CPU, host.backend_gpu
    return KIND_GPU, ""


def _gpus(where: str, listed: tuple[int, ...], host: Host) -> tuple[int, ...]:
    """A KIND_GPU group's GPUs, or a ValueError naming everything that is missing."""
    missing = [host.no_gpu] if not host.gpus else []
    absent = [g for g in listed if g not in host.gpus]
    if absent and host.gpus:
        missing.append(
            f"gpu id {_joined(absent)} {'is' if len(absent) == 1 else 'are'} not visible "
            f"(visible GPUs: {_joined(host.gpus)}; list those, or leave gpus out to use them all)"
        )
    if host.backend_gpu is not None:
        missing.append(host.backend_gpu)
    if missing:
        hint = (
            "; use kind KIND_CPU (or KIND_AUTO) to run it on the CPU"
            if host.backend_cpu and not absent
            else ""
        )
        raise ValueError(f"{where} has kind KIND_GPU but {'; '.join(missing)}{hint}")
    return listed or host.gpus


def slots(groups: Sequence[Group]) -> list[Slot]:
    """The instances of `groups` in Triton's order: per group, per count, per GPU."""
    out: list[Slot] = []
    for group in groups:
        for _ in range(group.count):
            if group.kind == KIND_GPU:
                out.extend(Slot(KIND_GPU, gpu, group.name, group.index) for gpu in group.gpus)
            else:
                out.append(Slot(group.kind, 0, group.name, group.index))
    return out


def apply_groups(config: Any, groups: Sequence[Group]) -> None:
    """Write resolved groups into `config` as Triton reports them (name, kind, count, gpus)."""
    if not config.instance_group:
        config.instance_group.add()
    for group, resolved in zip(config.instance_group, groups, strict=True):
        group.name = resolved.name
        group.kind = _KINDS.Value(resolved.kind)
        group.count = resolved.count
        del group.gpus[:]
        group.gpus.extend(resolved.gpus)


def placed_groups(config: Any) -> list[Group]:
    """The groups of a config `apply_groups` has resolved (kinds and gpus already final)."""
    return [
        Group(i, g.name, _kind_name(g), max(1, int(g.count)), tuple(int(d) for d in g.gpus))
        for i, g in enumerate(config.instance_group)
    ]
