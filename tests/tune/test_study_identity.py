"""A study's identity includes its target: trials from different targets never merge by accident.

Two targets are simulated on this host by the embedded server and a perfkit_server given by URL
(launch "embedded" vs "remote"); the target's other parts (GPU names, a remote host) are checked
through `identity.target_of` with the FAKE NVML.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest

import perfkit.tune
from perfkit.machine import cpu_model
from perfkit.results import ServerInfo, TuneResult
from perfkit.tune import identity
from perfkit.tune import storage as st
from perfkit.tune.identity import TARGET_ATTR, TARGETS_ATTR, Target
from tests.fixtures.fake_nvml import FakeNvml
from tests.fixtures.server import ServerHandle
from tests.tune.conftest import write_sweep


def _info(url: str, *, version: str = "0.1.0", kind: str = "perfkit_server") -> ServerInfo:
    return ServerInfo(url=url, protocol="grpc", kind=kind, version=version)


def _sweep(repo: Path, tmp_path: Path, name: str, **overrides: Any) -> perfkit.tune.TuneSweep:
    space = "instance_count = [1, 2]\ndynamic_batching = [true]"
    path = write_sweep(tmp_path / f"{name}.toml", repo, trials=2, space=space)
    return perfkit.tune.load_sweep(path).with_overrides(output=tmp_path / name, **overrides)


def _tune(sweep: perfkit.tune.TuneSweep) -> tuple[TuneResult, list[str]]:
    notes: list[str] = []
    # dry_run: no write-back, so the model's config (part of the study name) stays the same.
    return perfkit.tune.run(sweep, dry_run=True, on_message=notes.append), notes


def _targets(study: optuna.Study) -> set[str]:
    """The launch mode of every trial's target."""
    found = set()
    for t in study.get_trials(deepcopy=False):
        target = Target.from_attr(t.user_attrs.get(TARGET_ATTR))
        assert target is not None, f"trial {t.number} names no target"
        found.add(target.launch)
    return found


# -- the target and the name --------------------------------------------------------------------
def test_a_server_here_without_gpus_is_identified_by_this_cpu_and_host() -> None:
    target = identity.target_of(_info("127.0.0.1:8001"), launch="embedded")
    assert target.gpus == ()
    assert target.cpu == f"{cpu_model()} x{os.cpu_count()}"
    assert target.host == socket.gethostname()
    assert target.describe() == (
        f"embedded perfkit_server 0.1.0 on {socket.gethostname()}, cpu: {target.cpu}"
    )


def test_the_gpus_a_launched_server_sees_are_part_of_its_target(fake_nvml: FakeNvml) -> None:
    with fake_nvml.installed():
        both = identity.target_of(_info("localhost:8001"), launch="embedded")
        one = identity.target_of(
            _info("localhost:8001"), launch="embedded", server_env={"CUDA_VISIBLE_DEVICES": "1"}
        )
        docker = {
            gpus: identity.target_of(
                _info("localhost:8001", kind="triton"), launch="docker", docker_gpus=gpus
            ).gpus
            for gpus in (None, "all", 1, "device=1", (0, 1))
        }
    h100 = "FAKE NVIDIA H100 80GB HBM3"
    assert docker == {
        None: (),
        "all": (h100,) * 2,
        1: (h100,),
        "device=1": (h100,),
        (0, 1): (h100,) * 2,
    }
    assert both.gpus == ("FAKE NVIDIA H100 80GB HBM3",) * 2
    assert both.cpu == ""
    assert both.hardware() == "2x FAKE NVIDIA H100 80GB HBM3"
    assert one.gpus == ("FAKE NVIDIA H100 80GB HBM3",)
    assert both.digest() != one.digest()


def test_a_remote_server_is_identified_by_its_host_and_version() -> None:
    remote = identity.target_of(_info("grpc://GPU-Node-7:8001", kind="triton"), launch="remote")
    assert (remote.host, remote.gpus, remote.cpu) == ("gpu-node-7", (), "")
    assert remote.describe() == "remote triton 0.1.0 on gpu-node-7, GPUs unknown (remote)"
    other = identity.target_of(_info("gpu-node-8:8001", kind="triton"), launch="remote")
    newer = identity.target_of(
        _info("gpu-node-7:8001", kind="triton", version="2.51.0"), launch="remote"
    )
    assert len({remote.digest(), other.digest(), newer.digest()}) == 3
    # A loopback URL names a server on this host.
    assert identity.target_of(_info("http://[::1]:8000"), launch="remote").host == (
        socket.gethostname()
    )
    assert identity.url_host("https://user@[fe80::1]:443/v2") == "fe80::1"


def test_the_default_name_is_the_old_name_plus_the_target_hash(
    ident_repo: Path, tmp_path: Path
) -> None:
    sweep = _sweep(ident_repo, tmp_path, "s")
    here = identity.target_of(_info("127.0.0.1:1"), launch="embedded")
    there = identity.target_of(_info("127.0.0.1:1"), launch="remote")
    legacy = identity.legacy_study_name(sweep, "abc")
    assert legacy.startswith("ident-")
    assert len(legacy) == len("ident-") + 8
    assert identity.study_name_for(sweep, "abc", here) == f"{legacy}-{here.digest()}"
    assert identity.study_name_for(sweep, "abc", there) != identity.study_name_for(
        sweep, "abc", here
    )
    assert Target.from_attr(here.as_attr()) == here
    assert Target.from_attr({"launch": "embedded"}) is None


# -- a shared PostgreSQL study ------------------------------------------------------------------
@pytest.mark.postgres
def test_two_targets_on_one_postgresql_stay_apart_unless_named_alike(
    ident_repo: Path,
    tmp_path: Path,
    postgres_url: str,
    perfkit_server: Any,
) -> None:
    server: ServerHandle = perfkit_server(
        ident_repo, "--model-control-mode=explicit", "--load-model=ident"
    )
    embedded = _sweep(ident_repo, tmp_path, "a", storage=postgres_url)
    remote = _sweep(ident_repo, tmp_path, "b", storage=postgres_url, url=server.grpc_url)

    first, _ = _tune(embedded)
    second, _ = _tune(remote)

    assert first.study_name != second.study_name
    storage = st.open_storage(postgres_url)
    assert sorted(optuna.get_all_study_names(storage)) == sorted(
        [first.study_name, second.study_name]
    )
    # Same sweep: only the target hash tells the names apart.
    assert first.study_name.rsplit("-", 1)[0] == second.study_name.rsplit("-", 1)[0]
    for result, launch in ((first, "embedded"), (second, "remote")):
        study = optuna.load_study(study_name=result.study_name, storage=storage)
        assert _targets(study) == {launch}
        assert [t["launch"] for t in study.user_attrs[TARGETS_ATTR]] == [launch]
        assert result.settings["target"]["launch"] == launch

    # An explicit name means "merge": both targets' trials in one study, each naming its target.
    merged_a, _ = _tune(embedded.with_overrides(study_name="merged"))
    # A budget above what the study holds: this worker measures trials of its own.
    merged_b, notes = _tune(remote.with_overrides(study_name="merged", trials=4))
    study = optuna.load_study(study_name="merged", storage=storage)
    assert _targets(study) == {"embedded", "remote"}
    assert [t["launch"] for t in study.user_attrs[TARGETS_ATTR]] == ["embedded", "remote"]
    assert any("merges trials from different targets" in n for n in notes), notes
    assert any("merges trials" in m for m in merged_b.messages)
    by_target = merged_b.settings["trials_by_target"]
    assert len(by_target) == 2
    assert sorted(n for numbers in by_target.values() for n in numbers) == [
        t.number for t in study.trials
    ]
    assert len(merged_a.settings["trials_by_target"]) == 1


# -- resuming in the output directory (SQLite) --------------------------------------------------
def test_a_rerun_on_the_same_target_resumes_its_study(ident_repo: Path, tmp_path: Path) -> None:
    sweep = _sweep(ident_repo, tmp_path, "out").with_overrides(trials=1)
    first, _ = _tune(sweep)
    again, notes = _tune(sweep.with_overrides(trials=2))
    assert again.study_name == first.study_name
    assert any("resuming: " in n for n in notes), notes
    storage = st.open_storage(st.default_storage_url(tmp_path / "out"))
    assert optuna.get_all_study_names(storage) == [first.study_name]
    study = optuna.load_study(study_name=first.study_name, storage=storage)
    assert len(study.user_attrs[TARGETS_ATTR]) == 1


def test_a_study_named_before_targets_is_resumed_from_sqlite_and_adopted(
    ident_repo: Path, tmp_path: Path
) -> None:
    from perfkit.model_repo.config import config_hash, load_config

    sweep = _sweep(ident_repo, tmp_path, "out").with_overrides(trials=1)
    legacy = identity.legacy_study_name(
        sweep, config_hash(load_config(ident_repo / "ident" / "config.pbtxt"))
    )
    (tmp_path / "out").mkdir()
    storage = st.open_storage(st.default_storage_url(tmp_path / "out"))
    st.open_study(storage, legacy, ["maximize"], optuna.samplers.RandomSampler())

    result, notes = _tune(sweep)

    assert result.study_name == legacy
    assert any("named before targets were part of study names" in n for n in notes), notes
    study = optuna.load_study(study_name=legacy, storage=storage)
    (target,) = study.user_attrs[TARGETS_ATTR]
    assert target["launch"] == "embedded"
    # Adopted by this target: another target starts its own study.
    other = Target(**{**target, "gpus": (), "host": "elsewhere"})
    opened = identity.open_target_study(
        storage,
        sweep,
        config_hash(load_config(ident_repo / "ident" / "config.pbtxt")),
        other,
        ["maximize"],
        optuna.samplers.RandomSampler(),
    )
    assert opened.created
    assert opened.study.study_name == identity.study_name_for(
        sweep, config_hash(load_config(ident_repo / "ident" / "config.pbtxt")), other
    )


def test_the_report_says_a_study_merges_targets() -> None:
    from perfkit.report.html.page import build_report
    from tests.report.builders import make_tune, replace

    tune = make_tune()
    assert "merged from" not in build_report([("t", tune)])
    merged = replace(tune, settings={**tune.settings, "trials_by_target": {"a": [0], "b": [1]}})
    assert "merged from 2 targets" in build_report([("t", merged)])
