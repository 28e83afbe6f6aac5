"""The offline commands' inputs: `--router` found from any folder as `serve` finds it, drifts that
cannot happen, what `simulate` says of an added model, an unusable cache folder, and no empty
output folder left behind by a failed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.outcome_log import open_outcome_log
from service.cli import main
from tests.samples import example_outcomes_as_routerbench

ROOT = Path(__file__).resolve().parent.parent
ROUTER = str(ROOT / "models" / "default")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("offline") / "rb.parquet"
    example_outcomes_as_routerbench().to_parquet(path, index=False)
    return path


def _simulate(table: Path, out: Path, *extra: str, router: str | None = ROUTER) -> int:
    return main(["simulate", "--data", str(table), "--requests", "300", "--out", str(out),
                 *(["--router", router] if router else []), *extra])


def test_every_model_added_later_is_refused_alike_with_or_without_a_router(table, tmp_path, capsys):
    drifts = [arg for m, k in (("mistral-7b-chat", 100), ("mixtral-8x7b-chat", 50), ("gpt-4-1106-preview", 80))
              for arg in ("--drift", f"add:{m}@{k}")]
    for router in (None, ROUTER):
        assert _simulate(table, tmp_path / "s.json", *drifts, router=router) == 2
        err = capsys.readouterr().err
        assert "rb.parquet: every model is added by a drift (['gpt-4-1106-preview', 'mistral-7b-chat', " in err, err
        # --router is refused as well, so the message must not send one there.
        assert "there from request 0" in err and "requests 0 to 49" in err and "--router" not in err, err
        assert "Traceback" not in err
    # With a router nothing is trained: a model there from request 0 is enough, even if added "at 0".
    assert _simulate(table, tmp_path / "s.json", *drifts[:-2], "--drift", "add:gpt-4-1106-preview@0") == 0


def test_an_added_models_share_names_the_requests_it_was_measured_on(table, tmp_path, capsys):
    assert _simulate(table, tmp_path / "a.json", "--drift", "add:mixtral-8x7b-chat@100") == 0
    share = json.loads((tmp_path / "a.json").read_text())["added"]["mixtral-8x7b-chat"]["bandit_share_first_1000"]
    assert f", {share:.0%} of the 200 requests after it came" in capsys.readouterr().out  # 300 − 100, not 1,000

    assert _simulate(table, tmp_path / "b.json", "--drift", "add:mixtral-8x7b-chat@5000") == 0
    added = json.loads((tmp_path / "b.json").read_text())["added"]["mixtral-8x7b-chat"]
    assert added["bandit_share_first_1000"] is None and added["first_routed_at"] is None
    printed = capsys.readouterr().out
    assert ("added mixtral-8x7b-chat: never arrived: add:mixtral-8x7b-chat@5000 starts after the last of the 300 "
            "requests\n") in printed
    assert "of the 1,000 requests" not in printed


def test_a_model_added_twice_is_refused(table, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert _simulate(table, out, "--drift", "add:mixtral-8x7b-chat@10", "--drift", "add:mixtral-8x7b-chat@100") == 2
    err = capsys.readouterr().err
    assert "simulate: error: --drift adds model 'mixtral-8x7b-chat' twice (@10 and @100)" in err
    assert "Traceback" not in err and not out.exists()


def _argv(command: str, router: str, table: Path, tmp_path: Path) -> list[str]:
    log = tmp_path / "outcomes.sqlite"
    if command == "retrain":
        open_outcome_log(f"sqlite:///{log}").close()
    return {
        "eval": ["eval", "--data", str(table), "--router", router, "--decisions-out", str(tmp_path / "d.parquet"),
                 "--report-dir", str(tmp_path / "report")],
        "simulate": ["simulate", "--data", str(table), "--requests", "40", "--router", router, "--out", str(tmp_path / "s.json")],
        "calibrate": ["calibrate", "--data", str(table), "--model", "gpt-4-1106-preview", "--share", "0", "--router", router],
        "retrain": ["retrain", "--db", f"sqlite:///{log}", "--router", router, "--out", str(tmp_path / "cand"),
                    "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"],
    }[command]


@pytest.mark.parametrize("command", ["eval", "simulate", "calibrate"])
def test_a_relative_router_is_found_from_any_folder_as_serve_finds_it(table, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # no models/ here: the shipped models/default is meant
    assert main(_argv(command, "models/default", table, tmp_path)) == 0


@pytest.mark.parametrize("command", ["eval", "simulate", "calibrate", "retrain"])
def test_a_router_found_nowhere_is_one_error_naming_both_places(table, tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main(_argv(command, "models/nowhere", table, tmp_path)) == 2
    err = capsys.readouterr().err
    assert (f"{command}: error: --router models/nowhere: not a router artifact (no manifest.json in "
            f"{tmp_path / 'models' / 'nowhere'} nor in {ROOT / 'models' / 'nowhere'})") in err


def test_an_unusable_cache_folder_is_named_with_its_variable(table, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(blocker / "cache"))
    assert main(_argv("eval", ROUTER, table, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"error: OPENCLAW_CACHE_DIR={blocker / 'cache'}: cannot use it as the cache folder: Not a directory" in err


@pytest.mark.parametrize("command", ["eval", "simulate", "cache-eval"])
def test_a_failed_run_leaves_no_empty_output_folder_behind(table, tmp_path, capsys, command):
    new, kept = tmp_path / "new", tmp_path / "kept"
    kept.mkdir()  # a folder that was there before the run stays
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,quality__nobody,cost_usd__nobody\nhi,1,0.1\n")  # no model the router knows, no pairs
    argv = {
        "eval": ["eval", "--data", str(bad), "--router", ROUTER, "--decisions-out", str(new / "decisions" / "d.parquet"),
                 "--report-dir", str(new / "report" / "deeper")],
        "simulate": ["simulate", "--data", str(table), "--requests", "10", "--drift", "add:nobody@3",
                     "--out", str(new / "sim" / "s.json")],
        "cache-eval": ["cache-eval", "--pairs", str(bad), "--out", str(new / "hits.parquet")],
    }[command]
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert not new.exists()
    if command == "eval":
        assert main([*argv[:-1], str(kept)]) == 2
        assert kept.is_dir()


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_a_missing_data_file_is_named_before_the_tracking_store_is_created(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)  # the default tracking store is ./.openclaw/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    flag = "--data" if command == "train" else "--base-data"
    extra = ["--out", str(tmp_path / "out")] if command == "train" else ["--db", str(_empty_log(tmp_path))]
    assert main([command, flag, str(tmp_path / "nowhere.parquet"), *extra]) == 2
    assert f"{flag} {tmp_path / 'nowhere.parquet'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / ".openclaw").exists()


def _empty_log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "outcomes.sqlite"
    path.parent.mkdir()
    open_outcome_log(f"sqlite:///{path}").close()
    return path


@pytest.mark.parametrize("command", ["eval", "train"])
def test_the_data_and_text_column_help_say_what_the_loader_does(command, capsys):
    from training.data import _READERS
    from training.texts import TEXT_COLUMNS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    data_help = text.split("--data", 2)[-1].split(" --", 1)[0]
    named = {"parquet": "parquet", "csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "json": "JSON array"}
    assert all(named[kind] in data_help for kind in set(_READERS.values())) and ".gz" in data_help
    column_help = text.split("--text-column TEXT_COLUMN", 2)[-1].split(" --", 1)[0]
    assert ", ".join(TEXT_COLUMNS) in column_help


def test_a_home_that_cannot_hold_the_cache_falls_back_to_a_private_temporary_folder(tmp_path, monkeypatch, caplog):
    from router.embedding import cache_dir

    monkeypatch.delenv("OPENCLAW_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "a-file"))  # a container user whose home cannot be made
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    used = cache_dir()
    assert used == tmp_path / "tmp" / f"openclaw-router-{os.getuid()}" and used.is_dir()
    assert used.stat().st_mode & 0o777 == 0o700
    assert f"caching in {used} instead (set OPENCLAW_CACHE_DIR to choose)" in caplog.text
    used.chmod(0o755)  # made readable by others since: made private again
    assert cache_dir() == used and used.stat().st_mode & 0o777 == 0o700
    # Someone else's folder of that name in a shared temporary folder is not used.
    used.chmod(0o777)
    with pytest.raises(PermissionError, match="is not a folder of this user's that only it can write; set OPENCLAW_CACHE_DIR"):
        cache_dir()


def test_eval_finishes_where_the_terminal_cannot_show_its_report(table, tmp_path):
    out = subprocess.run([sys.executable, "-m", "service.cli", *_argv("eval", ROUTER, table, tmp_path)], cwd=ROOT,
                         env={**os.environ, "PYTHONIOENCODING": "ascii"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "AIQ" in out.stdout and "?" in out.stdout  # "—" and "÷" shown as "?"


def test_a_misspelt_model_in_eval_models_gets_the_name_it_may_mean(table, tmp_path, capsys):
    argv = _argv("eval", ROUTER, table, tmp_path)
    assert main([*argv, "--models", "GPT-4-1106-preview,mixtral-8x7b"]) == 2
    assert ("did you mean 'gpt-4-1106-preview' for 'GPT-4-1106-preview', 'mixtral-8x7b-chat' for "
            "'mixtral-8x7b'?") in capsys.readouterr().err


def test_a_model_added_at_request_0_is_trained_on_like_one_there_from_the_start(table, tmp_path, capsys):
    drifts = ["--drift", "add:mistral-7b-chat@100", "--drift", "add:mixtral-8x7b-chat@50", "--drift", "add:gpt-4-1106-preview@0"]
    assert _simulate(table, tmp_path / "s.json", *drifts, router=None) == 0, capsys.readouterr().err


def test_a_refused_training_file_gets_its_error_on_a_line_of_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default tracking store is ./.openclaw/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bad = tmp_path / "nan.csv"
    bad.write_text("prompt,quality__a,cost_usd__a,quality__b,cost_usd__b\nhi,1,0.1,,0.2\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("openclaw-router train: error: ") and "NaN" in line for line in lines), lines
    assert not (tmp_path / ".openclaw").exists()  # a refused table leaves no tracking store behind


def test_an_infinite_cost_is_refused_naming_its_column_and_row(tmp_path, monkeypatch, capsys):
    # It had been trained on: the artifact priced the model at infinity, and simulate's bandit left it for good.
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "inf.csv"
    bad.write_text("prompt,quality__a,cost_usd__a,quality__b,cost_usd__b\nhi,1,0.1,0,0.2\nho,1,inf,0,0.2\n")
    for argv in (["train", "--data", str(bad), "--out", str(tmp_path / "out")],
                 ["simulate", "--data", str(bad), "--requests", "10", "--out", str(tmp_path / "s.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "column 'cost_usd__a' has an infinite value (first at row 1: inf)" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_more_folds_than_prompts_is_refused(table, tmp_path, capsys):
    # The folds that held no prompt had trained on everything and joined the bagged ensemble.
    assert main(["train", "--data", str(table), "--out", str(tmp_path / "out"), "--folds", "500",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert "cross-fitting 500 folds needs outcomes for more distinct prompts" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval", "simulate", "retrain", "shadow-report"])
def test_a_negative_seed_is_refused_naming_the_flag(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--seed", "-1"])
    assert exited.value.code == 2
    assert "argument --seed: -1 is negative: give 0 or more" in capsys.readouterr().err


def test_retrain_refuses_a_file_as_its_output_folder_and_a_negative_least_count(tmp_path, capsys):
    log = tmp_path / "log.sqlite"
    open_outcome_log(f"sqlite:///{log}").close()
    a_file = tmp_path / "afile"
    a_file.touch()
    assert main(["retrain", "--db", f"sqlite:///{log}", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert f"--out {a_file}: {a_file} exists and is not a folder" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exited:
        main(["retrain", "--db", f"sqlite:///{log}", "--min-requests", "-1"])
    assert exited.value.code == 2 and "argument --min-requests: -1 is negative: give 0 or more" in capsys.readouterr().err


def test_a_model_added_at_request_0_is_no_added_model_in_the_report(table, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert _simulate(table, out, "--drift", "add:gpt-4-1106-preview@0", "--drift", "add:mistral-7b-chat@100") == 0
    assert set(json.loads(out.read_text())["added"]) == {"mistral-7b-chat"}
    assert "added gpt-4-1106-preview" not in capsys.readouterr().out
