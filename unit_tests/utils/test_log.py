"""Console output through logging: bare messages on stdout at the config's log_level, rank zero only."""
from __future__ import annotations

import logging

import pytest
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from milkit.cli import run_safely


def _report(cfg) -> int:
    log = logging.getLogger("milkit.some.module")
    log.debug("[milkit] detail")
    log.info("[milkit] progress 1/2")
    log.warning("milkit: something to know")
    return 0


@pytest.mark.parametrize(("level", "expected"), [
    ("INFO", ["[milkit] progress 1/2", "milkit: something to know"]),
    ("warning", ["milkit: something to know"]),
    ("DEBUG", ["[milkit] detail", "[milkit] progress 1/2", "milkit: something to know"]),
])
def test_lines_read_as_before_at_the_configured_level(capsys, level: str, expected: list[str]) -> None:
    run_safely(_report, OmegaConf.create({"log_level": level}))
    out = capsys.readouterr()
    assert out.out.splitlines() == expected and out.err == ""


def test_default_level_is_info_and_a_second_entry_does_not_double_lines(capsys) -> None:
    run_safely(_report, OmegaConf.create({}))
    run_safely(_report, OmegaConf.create({}))
    assert capsys.readouterr().out.splitlines() == ["[milkit] progress 1/2", "milkit: something to know"] * 2


def test_other_ranks_show_only_warnings(capsys, monkeypatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    run_safely(_report, OmegaConf.create({"log_level": "INFO"}))
    assert capsys.readouterr().out.splitlines() == ["milkit: something to know"]


def test_a_bad_level_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run_safely(_report, OmegaConf.create({"log_level": "loud"}))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "milkit: error: log_level must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'"]
