"""The decision policy's one owner: model, then config, then command; a commanded value survives a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.manifest import Decision
from edge.policy import DecisionPolicy

MODEL = Decision(threshold=0.6, low_confidence_band=(0.4, 0.8))


def test_command_wins_is_kept_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "decision.json"
    policy = DecisionPolicy(path, threshold=0.55)
    assert policy.decision(MODEL) == Decision(threshold=0.55, low_confidence_band=(0.4, 0.8))
    assert {k: v["from"] for k, v in policy.sources(MODEL).items()} == {"threshold": "config",
                                                                         "low_confidence_band": "model"}
    policy.command(threshold=0.3)
    restarted = DecisionPolicy(path, threshold=0.55)  # a restart, or another model: the command holds
    assert restarted.decision(MODEL).threshold == 0.3
    threshold = restarted.sources(MODEL)["threshold"]
    assert threshold["from"] == "command" and threshold["set_at"]
    with pytest.raises(ValueError, match="low_confidence_band"):
        restarted.command(low_confidence_band=(0.9, 0.1))
    assert restarted.decision(MODEL).threshold == 0.3, "a refused command changes nothing"
    restarted.command(reset=True)
    assert DecisionPolicy(path, threshold=0.55).decision(MODEL).threshold == 0.55


def test_a_corrupt_file_is_one_line_and_the_config_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decision.json"
    for garbage in ('{"values": {"threshold": 7}}', "[1, 2", '{"values": 3}'):
        path.write_text(garbage)
        with caplog.at_level(logging.ERROR):
            caplog.clear()
            policy = DecisionPolicy(path, threshold=0.55)
        assert policy.decision(MODEL).threshold == 0.55, garbage
        assert len(caplog.records) == 1 and "cannot be read" in caplog.records[0].getMessage(), garbage
