"""The flags every subcommand shares and what its help says: -v on either side of the subcommand,
--version, a help text with its default for every option, train's warning on data it cannot learn
from, and retrain --exit-code for CI."""
from __future__ import annotations

import argparse
import logging
from importlib.metadata import version
from pathlib import Path

import pytest

from service.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "data" / "example_outcomes.csv"


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("argv, verbose", [
    (["-v", "check"], True),
    (["check", "-v"], True),
    (["check", "--verbose"], True),
    (["-v", "check", "--strict"], True),  # given before: the subcommand's own -v, not given, leaves it set
    (["check"], False),
])
def test_verbose_is_taken_before_and_after_the_subcommand(argv, verbose):
    args = build_parser(only="check").parse_args(argv)
    assert args.verbose is verbose and args.command == "check"


def test_verbose_after_the_subcommand_turns_on_debug_logging(monkeypatch):
    seen = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: seen.update(kw))
    monkeypatch.setattr("service.check_command.run", lambda args: 0)
    assert main(["check", "-v"]) == 0
    assert seen["level"] == logging.DEBUG


def test_version_prints_the_installed_packages_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"openclaw-router {version('openclaw-router')}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_naming_its_default(name):
    parser = _subparser(name)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction) or action.default is argparse.SUPPRESS:
            continue
        flag = action.option_strings[-1]
        assert action.help and action.help is not argparse.SUPPRESS, f"{name} {flag}: no help"
        if action.default is None or action.default is False:
            continue
        text = formatter._expand_help(action)
        assert "default" in text and str(action.default) in text, f"{name} {flag}: default {action.default!r} not said: {text!r}"


def test_shadow_report_db_help_names_postgres():
    db = next(a for a in _subparser("shadow-report")._actions if "--db" in a.option_strings)
    assert "postgresql" in db.help


def test_train_on_data_it_cannot_learn_from_warns_and_still_writes(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.train"):
        assert main(["train", "--data", str(EXAMPLE), "--out", str(tmp_path / "r"), "--folds", "2", "--rounds", "5",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "training.train"]
    assert any("learned little" in m and "36 rows" in m and "priors" in m for m in warned), warned
    assert (tmp_path / "r").is_dir()


@pytest.fixture
def retrain_stubbed(tmp_path, monkeypatch):
    """retrain's run with the training and OPE stubbed: the verdict it reports is set by the test."""
    verdict = {"promote": False}
    monkeypatch.setattr("training.outputs.check_outcome_log", lambda db: None)
    monkeypatch.setattr("training.train.check_job_options", lambda args: None)
    monkeypatch.setattr("training.train.check_tracking_store", lambda args: None)
    monkeypatch.setattr("training.retrain.summary", lambda ope, estimator: "")
    monkeypatch.setattr("training.retrain.retrain", lambda args: {
        "candidate": str(tmp_path / "c"), "verdict": {**verdict, "reason": "stub"}, "ope": {"n": 0}, "registered_version": "1"})
    return verdict


@pytest.mark.parametrize("promote, flags, code", [
    (False, [], 0),
    (True, [], 0),
    (False, ["--exit-code"], 3),
    (True, ["--exit-code"], 0),
])
def test_retrain_exit_code_says_whether_it_promoted(retrain_stubbed, promote, flags, code):
    retrain_stubbed["promote"] = promote
    assert main(["retrain", *flags]) == code
