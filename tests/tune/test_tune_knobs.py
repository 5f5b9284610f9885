"""Issue 14, acceptance 3: a backend parameter and a config field by its proto path are searched
end to end on the embedded server, and a value the server refuses is a failed trial with the
server's reason."""

from __future__ import annotations

from pathlib import Path

import perfkit.tune
from perfkit.model_repo.config import parse_config
from perfkit.sweepfile import parse_sweep

SWEEP = """
[model]
name = "mlp"
repository = "{repo}"
zoo = "mlp"

[space.parameters]
intra_op_thread_count = [1, 2]

[space.fields]
"optimization.graph.level" = [1]
# 64 is above the mlp's max_batch_size (32): the server refuses those variants at load.
"dynamic_batching.preferred_batch_size" = [[4], [64]]

[load]
concurrency = 2

[budget]
trials = 5

[measure]
window_ms = 200
max_windows = 3
stability_windows = 2
stability_pct = 80
warmup_requests = 4

[search]
sampler = "grid"
seed = 1
prune = false
"""


def test_parameters_and_fields_are_searched_and_a_refused_value_fails_its_trial(
    tmp_path: Path,
) -> None:
    sweep = parse_sweep(SWEEP.format(repo=tmp_path / "repo"), "knobs.toml").with_overrides(
        output=tmp_path / "out", study_name="knobs"
    )
    result = perfkit.tune.run(sweep, dry_run=True)

    searched = [t for t in result.trials if t.number != result.default_trial and t.params]
    variants = [t for t in searched if "param:intra_op_thread_count" in t.params]
    assert len(variants) == 4  # the whole grid: 2 thread counts x 2 preferred sizes
    measured = [t for t in variants if t.state == "complete"]
    failed = [t for t in variants if t.state == "failed"]

    # Each measured trial's config.pbtxt carries the values it searched, typed as Triton reads them.
    assert sorted(t.params["param:intra_op_thread_count"] for t in measured) == ["1", "2"]
    for t in measured:
        config = parse_config(t.config_pbtxt)
        wanted = t.params["param:intra_op_thread_count"]
        assert config.parameters["intra_op_thread_count"].string_value == wanted
        assert config.optimization.graph.level == 1
        assert list(config.dynamic_batching.preferred_batch_size) == [4]
        assert t.objectives["throughput_infer_per_s"] > 0

    # preferred_batch_size 64 passes the sweep file's checks (a uint of the proto), and the server
    # refuses it at load: the trial fails with the server's reason, and the study goes on.
    assert len(failed) == 2
    for t in failed:
        assert list(t.params["field:dynamic_batching.preferred_batch_size"]) == [64]
        assert t.reason is not None
        assert "preferred_batch_size" in t.reason
        assert "mlp" in t.reason
        assert "max_batch_size" in t.reason
        assert list(parse_config(t.config_pbtxt).dynamic_batching.preferred_batch_size) == [64]
