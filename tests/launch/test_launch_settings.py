"""`LaunchSettings` (the sweep file's [server] launch keys, the --server flags) and `launcher`, which
builds the server they say: no server starts here (the docker client is the FAKE engine's)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from perfkit.errors import ConfigError
from perfkit.launch import DEFAULT_IMAGE, DockerTriton, EmbeddedServer, LaunchSettings, launcher
from perfkit.launch.docker import LIFELINE_SH
from perfkit.launch.settings import parse_env, parse_gpus
from perfkit.launch.start import image_needs_client_shm_flag
from perfkit.sweepfile import parse_sweep
from tests.launch.fake_docker import FakeDockerClient

ROOT = Path(__file__).resolve().parents[2]


def _sweep(server: str) -> LaunchSettings:
    return parse_sweep(f'[model]\nname = "m"\n[server]\n{server}\n', "s.toml").launch


def test_the_sweep_files_server_table() -> None:
    assert _sweep("") == LaunchSettings()
    assert _sweep('launch = "local"\ntritonserver = "/opt/tritonserver/bin/tritonserver"\n'
                  'args = ["--log-verbose=1"]\nenv = { OMP_NUM_THREADS = "2" }') == LaunchSettings(
        mode="local", tritonserver="/opt/tritonserver/bin/tritonserver",
        args=("--log-verbose=1",), env=(("OMP_NUM_THREADS", "2"),),
    )  # fmt: skip
    docker = _sweep('launch = "docker"\nimage = "nvcr.io/nvidia/tritonserver:25.01-py3"\n'
                    'gpus = [0, 1]\nshm_size = "4g"')  # fmt: skip
    assert docker == LaunchSettings(
        mode="docker", image="nvcr.io/nvidia/tritonserver:25.01-py3", gpus=("0", "1"), shm_size="4g"
    )
    assert _sweep('launch = "docker"').docker_image == DEFAULT_IMAGE
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", DEFAULT_IMAGE)


@pytest.mark.parametrize(
    ("server", "error"),
    [
        ('launch = "podman"', "s.toml:server.launch: must be one of embedded, local, docker"),
        ('image = "x"', "s.toml:server.image applies to the docker launch mode only, and "
                        "s.toml:server.launch is 'embedded'"),
        ('launch = "docker"\ntritonserver = "/x"', "s.toml:server.tritonserver applies to the local"),
        ('launch = "docker"\ngpus = "some"', "s.toml:server.gpus: must be all, a GPU count"),
        ('args = "--log-verbose=1"', "s.toml:server.args: must be a list of strings"),
        ("env = { A = 1 }", "s.toml:server.env: must be a table of strings"),
        ('url = "h:8001"\nlaunch = "local"', "s.toml:server.launch: starts a server, and "
                                             "server.url names a running one"),
        ('url = "h:8001"\nenv = { A = "1" }', "s.toml:server.env: starts a server"),
    ],
)  # fmt: skip
def test_bad_server_tables(server: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        _sweep(server)


@pytest.mark.parametrize(
    ("value", "gpus"),
    [("all", "all"), ("2", 2), (2, 2), ("device=0,2", ("0", "2")), ([1], ("1",))],
)
def test_gpus_as_docker_run_takes_them(value: object, gpus: object) -> None:
    assert parse_gpus(value, "--gpus") == gpus


@pytest.mark.parametrize("value", ["", "0,1", "device=", 0, True, []])
def test_bad_gpus(value: object) -> None:
    with pytest.raises(ConfigError, match="--gpus: must be all"):
        parse_gpus(value, "--gpus")


def test_env_items() -> None:
    assert parse_env(["A=1", "B=x=y", "C="], "--server-env") == (
        ("A", "1"),
        ("B", "x=y"),
        ("C", ""),
    )
    with pytest.raises(ConfigError, match="--server-env: expected NAME=VALUE, got 'A'"):
        parse_env(["A"], "--server-env")


def test_embedded_launcher(tmp_path: Path) -> None:
    server = launcher(
        LaunchSettings(args=("--log-verbose=1",), env=(("A", "1"),)),
        tmp_path, load_models=["m"], client_shm=True, env={"B": "2"}, log_path=tmp_path / "s.log",
    )  # fmt: skip
    assert isinstance(server, EmbeddedServer)
    assert server.model_control_mode == "explicit"
    assert server.load_models == ("m",)
    assert server.extra_args == ("--allow-client-shm=true", "--log-verbose=1")
    assert server.log_path == tmp_path / "s.log"
    assert server._extra_env == {"A": "1", "B": "2"}


def test_docker_launcher(tmp_path: Path) -> None:
    settings = LaunchSettings(mode="docker", gpus=("0",), shm_size="2g", args=("--x=1",),
                              env=(("A", "1"),))  # fmt: skip
    server = launcher(settings, tmp_path, load_models=["m"], docker_client=FakeDockerClient())
    assert isinstance(server, DockerTriton)
    assert server.image == DEFAULT_IMAGE
    assert server.device_requests == [{"device_ids": ["0"], "capabilities": [["gpu"]]}]
    spec = server.container_spec()
    assert spec["shm_size"] == "2g"
    assert spec["environment"] == {"A": "1"}
    assert "ipc_mode" not in spec
    assert spec["command"][-1] == "--x=1"
    # Client shared memory: the host's IPC namespace (the regions perfkit makes in /dev/shm).
    shm = launcher(
        settings, tmp_path, load_models=["m"], client_shm=True, docker_client=FakeDockerClient()
    )
    assert isinstance(shm, DockerTriton)
    spec = shm.container_spec()
    assert spec["ipc_mode"] == "host"
    assert "shm_size" not in spec
    assert "--allow-client-shm=true" in spec["command"]  # the default image is 26.04 or later


def test_client_shm_flag_by_image_release() -> None:
    assert image_needs_client_shm_flag("nvcr.io/nvidia/tritonserver:26.04-py3")
    assert image_needs_client_shm_flag("nvcr.io/nvidia/tritonserver:27.01-py3-sdk")
    assert not image_needs_client_shm_flag("nvcr.io/nvidia/tritonserver:24.10-py3")
    assert not image_needs_client_shm_flag("my/triton:latest")


def _readme_docker_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- docker-run -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return re.sub(r"\\\n\s*", "", block).strip()


def test_the_readme_shows_the_docker_run_command_it_amounts_to() -> None:
    server = DockerTriton(
        Path("/models"), gpus="all", load_models=["mymodel"], http_port=8000, grpc_port=8001,
        metrics_port=8002, client=FakeDockerClient(),
    )  # fmt: skip
    labels = server.container_spec()["labels"]
    command = (
        server.docker_run_command()
        .replace(shlex.quote(LIFELINE_SH), '"$LIFELINE_SH"')
        .replace(labels["perfkit.owner"], "HOST:PID:START")
        .replace(labels["perfkit.run"], "RUN_ID")
    )
    assert " ".join(_readme_docker_command().split()) == " ".join(command.split())
