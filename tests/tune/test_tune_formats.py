"""Format selection end to end (issue 14, acceptance 4): `perfkit.tune.run` over the zoo's mlp
(ONNX) with formats onnxruntime and pytorch on the embedded server: both candidates checked and
measured, the winner's config and model file written back, the loser's added file removed, and
the result says which format won and each candidate's check."""

from __future__ import annotations

from pathlib import Path

import pytest

import perfkit.tune
from perfkit import zoo
from perfkit.formats.candidates import MANIFEST
from perfkit.model_repo.config import load_config, parse_config

pytest.importorskip("torch")

SWEEP = """
[model]
name = "mlp"
repository = "{repo}"

[space]
formats = ["onnxruntime", "pytorch"]

[load]
concurrency = [2]

[budget]
trials = 3

[measure]
window_ms = 300
max_windows = 2
stability_windows = 2
stability_pct = 80
warmup_requests = 4

[search]
sampler = "grid"
prune = false
min_gain_pct = 0
"""


def test_tune_chooses_a_format_and_writes_back_its_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_dir = zoo.build("mlp", repo)
    # One intra-op thread: the pytorch variant gets it too (its own parameter name).
    config = model_dir / "config.pbtxt"
    config.write_text(
        config.read_text()
        + 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    )
    path = tmp_path / "formats.toml"
    path.write_text(SWEEP.format(repo=repo))
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=tmp_path / "out")
    notes: list[str] = []

    result = perfkit.tune.run(sweep, on_message=notes.append)

    # Both candidates were checked before the study (the notes say how) and measured in it.
    formats = result.settings["formats"]
    assert formats["source"] == "onnxruntime"
    assert formats["candidates"]["onnxruntime"]["offered"]
    pytorch = formats["candidates"]["pytorch"]
    assert pytorch["offered"]
    assert pytorch["verified"]
    assert pytorch["file"] == "1/model.pt"
    assert 0.0 <= pytorch["max_abs_error"] < 1e-4
    assert any("pytorch: 1/model.pt (converted from ONNX; max abs error" in n for n in notes)
    measured = {t.params.get("format", "onnxruntime") for t in result.trials if t.measurement}
    assert measured == {"onnxruntime", "pytorch"}
    variant = next(t for t in result.trials if t.params.get("format") == "pytorch")
    served = parse_config(variant.config_pbtxt)
    assert served.platform == "pytorch_libtorch"
    assert served.parameters["INTRA_OP_THREAD_COUNT"].string_value == "1"

    # The winner's config and file are on disk, the other added file is gone.
    best = result.trial(result.best_trial)
    assert best is not None
    winner = best.params.get("format", "onnxruntime")
    assert formats["best"] == winner
    assert any(m.startswith(f"format: the best trial runs {winner}") for m in result.messages)
    on_disk = load_config(model_dir / "config.pbtxt")
    assert (model_dir / "1" / "model.onnx").is_file()  # the user's file is never removed
    assert not (model_dir / MANIFEST).exists()
    if result.written_to is not None and winner == "pytorch":
        assert on_disk.platform == "pytorch_libtorch"
        assert (model_dir / "1" / "model.pt").is_file()
        assert formats["kept"] == "1/model.pt"
        assert (model_dir / "config.pbtxt.orig").is_file()
    else:
        assert on_disk.platform == "onnxruntime_onnx"
        assert not (model_dir / "1" / "model.pt").exists()
        assert formats["removed"] == ["1/model.pt"]
