"""`perfkit.load.run`, the Python API of `perfkit run`, against the embedded server."""

from __future__ import annotations

from perfkit.load import run
from perfkit.load.spec import DEFAULT_HTTP_URL, ConcurrencyLoad, MeasureSpec, SweepSpec, TargetSpec
from perfkit.results import Measurement, RunResult


def test_run_starts_the_embedded_server_and_returns_the_levels() -> None:
    spec = SweepSpec(
        target=TargetSpec(url=DEFAULT_HTTP_URL, model="identity"),
        measure=MeasureSpec(fixed_request_count=30),
        load=ConcurrencyLoad(levels=(1, 2)),
    )
    levels: list[Measurement] = []
    notes: list[str] = []

    result = run(spec, embedded=True, on_level=levels.append, on_message=notes.append)

    assert isinstance(result, RunResult)
    assert result.status == "ok", result.messages
    assert result.model == "identity"
    assert result.server.embedded
    # The embedded server's URL replaced the spec's placeholder.
    assert result.server.url != DEFAULT_HTTP_URL
    assert notes == ["Starting the embedded perfkit_server for model identity ..."]
    assert [m.level for m in result.measurements] == [1.0, 2.0]
    assert list(result.measurements) == levels
    assert all(m.request_count == 30 and m.error_count == 0 for m in result.measurements)
    assert result.model_config["name"] == "identity"
