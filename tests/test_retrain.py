"""Retraining from the outcome log: OPE-gated promotion, MLflow registration, hot reload.

The logged traffic is real RouterBench prompts routed by a uniform exploring policy
(propensity 1/3) with rewards from the recorded correctness, written to a real SQLite
outcome log and feedback table. A router trained on the true labels must beat one trained
on inverted labels, and promotion must follow that, in both directions.
"""
from __future__ import annotations

import concurrent.futures as cf
import shutil
from argparse import Namespace
from pathlib import Path

import httpx
import numpy as np
import pytest

from router.engine import default_artifact
from router.feedback_log import Feedback, FeedbackLog
from router.outcome_log import OutcomeRecord, open_outcome_log
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import Running, fake_config
from tests.conftest import require_dataset
from tests.routerbench_worlds import MODELS, TABLE, WTP, frame


@pytest.fixture(autouse=True)
def _routerbench():
    require_dataset(TABLE)


def test_ope_orders_a_better_and_a_worse_router(world):
    from router.engine import LearnedRouter
    from training.offpolicy import compare_routers, load_traffic, router_p_good
    from training.retrain import judge

    traffic = load_traffic(world.db)
    assert len(traffic) == 800 and np.allclose(traffic.propensity, 1 / 3)
    good, bad = (LearnedRouter.load(world.routers[k]) for k in ("base", "inverted"))
    p_good, p_bad = router_p_good(good, traffic), router_p_good(bad, traffic)
    # Against what was served (uniformly random here); the live router's predictions are the DR
    # reward model: the good candidate beats it whichever router that is, the inverted one does not.
    up = compare_routers(traffic, p_bad, p_good)
    down = compare_routers(traffic, p_good, p_bad)
    for est in ("ips", "snips", "dr"):
        assert up["utility"]["difference"][est]["lo"] > 0
        assert down["utility"]["difference"][est]["hi"] < 0
    assert judge(up, "dr", 200).promote
    verdict = judge(down, "dr", 200)
    assert not verdict.promote and "worse" in verdict.reason
    assert not judge(up, "dr", 10_000).promote  # too little evidence is not a promotion


def test_the_dr_reward_model_is_calibrated_on_the_training_half(world):
    # A live predictor that reads optimistic would lend DR its optimism; mapped through the
    # rewards logged on the training half, its level matches what the held-out half observed.
    from router.engine import LearnedRouter
    from training.offpolicy import calibrated_reward_model, load_traffic, router_p_good

    traffic = load_traffic(world.db)
    optimistic = np.clip(router_p_good(LearnedRouter.load(world.routers["base"]), traffic) + 0.25, 0, 1)
    half = len(traffic) // 2
    fit, rest = traffic.rows(np.arange(half)), traffic.rows(np.arange(half, len(traffic)))
    q = calibrated_reward_model(optimistic[:half], fit, optimistic[half:])
    idx = np.arange(len(rest))
    raw_gap = abs(optimistic[half:][idx, rest.action].mean() - rest.quality.mean())
    assert raw_gap > 0.15 and abs(q[idx, rest.action].mean() - rest.quality.mean()) < raw_gap / 3
    assert calibrated_reward_model(optimistic[:10], traffic.rows(np.arange(10)), optimistic) is optimistic  # too few to fit


def _args(world, **kw):
    base = dict(db=world.db, base_data=None, router=None, out=None, gateway=None, eval_share=0.5, min_requests=100,
                estimator="dr", text_column=None, prices=None, folds=3, rounds=60, seed=3, experiment="test",
                registered_name="router-test", tracking_uri=f"sqlite:///{world.root}/mlflow.db", verbose=False)
    base.update(kw)
    return Namespace(**base)


def test_retrain_promotes_a_better_candidate_into_a_running_gateway_and_refuses_a_worse_one(world, monkeypatch):
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "mk-retrain-test")  # retrain --gateway sends it to the reload endpoint
    import mlflow

    from router.engine import LearnedRouter
    from training import retrain

    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, f"sqlite:///{world.root}/gw.sqlite"), router=LearnedRouter.load(world.routers["inverted"]))
        try:
            better = retrain.retrain(_args(world, base_data=[str(world.paths["extra"])], router=str(world.routers["inverted"]),
                                           out=str(world.root / "cand-good"), gateway=gw.url))
            assert better["verdict"]["promote"], better["verdict"]
            assert Path(gw.gateway.router.current.path) == (world.root / "cand-good").resolve()
            assert better["reload"]["path"] == str((world.root / "cand-good").resolve())

            worse = retrain.retrain(_args(world, base_data=[str(world.paths["inverted"])], eval_share=0.9,
                                          router=str(world.routers["base"]), out=str(world.root / "cand-bad"), gateway=gw.url))
            assert not worse["verdict"]["promote"]
            assert "worse" in worse["verdict"]["reason"] or "not better" in worse["verdict"]["reason"]
            assert Path(gw.gateway.router.current.path) == (world.root / "cand-good").resolve()  # untouched
        finally:
            gw.stop()
    mlflow.set_tracking_uri(f"sqlite:///{world.root}/mlflow.db")
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='router-test'")
    assert [v.run_id for v in versions] == [better["mlflow_run_id"]]  # only the promoted run is registered
    assert (world.root / "cand-bad" / "retrain_report.json").exists()
    # What is live and why, from MLflow alone: the alias on the promoted version, the verdict on every run.
    assert client.get_model_version_by_alias("router-test", "live").run_id == better["mlflow_run_id"]
    promoted, refused = client.get_run(better["mlflow_run_id"]), client.get_run(worse["mlflow_run_id"])
    assert promoted.data.tags["promoted"] == "true" and promoted.data.tags["verdict_reason"] == better["verdict"]["reason"]
    assert refused.data.tags["promoted"] == "false" and refused.data.tags["verdict_reason"] == worse["verdict"]["reason"]
    assert promoted.data.tags["support"] == "supported" and better["ope"]["support"]["ok"]  # uniform logging: full support
    assert 0.8 < promoted.data.metrics["ope_support_weight_mean"] < 1.2
    assert promoted.data.metrics["ope_support_weight_mean_lo"] <= 1.0 <= promoted.data.metrics["ope_support_weight_mean_hi"]
    text = retrain.summary(better["ope"], "dr")
    assert text.startswith("Utility difference, candidate − what the gateway served, on ")
    assert "  DR    +" in text and "<- --estimator" in text and "Support of the candidate's choices in the log (supported)" in text


@pytest.fixture(scope="module")
def greedy_db(world):
    """The same logged prompts served greedily by one model (propensity 1), as a gateway with the bandit
    off logs them; answer lengths logged, which the base tables lack."""
    df = frame(np.random.default_rng(0).permutation(2205)[500:1300])
    from router.embedding import encode_cached

    emb = encode_cached(df["query"].tolist())
    db = f"sqlite:///{world.root}/greedy.sqlite"
    log, fb = open_outcome_log(db), FeedbackLog(db)
    served = "WizardLM-13B-V1.2"
    for i, r in df.iterrows():
        cands = [{"model": m, "p_good": 0.5, "p_good_std": 0.1, "output_tokens": 50.0, "cost_usd": float(r[f"cost_usd__{m}"]),
                  "latency_s": 1.0, "utility": 0.5 - float(r[f"cost_usd__{m}"]) / WTP, "excluded": None} for m in MODELS]
        log.write(OutcomeRecord(request_id=f"g_{i}", ts=1000.0 + i, prompt=r["query"], embedding=emb[i].astype(np.float32).tobytes(),
                                input_tokens_est=len(r["prompt_full"]) // 4, candidates=cands, knob=WTP, chosen_model=served,
                                propensity=1.0, answered_model=served, output_tokens=120, cost_usd=float(r[f"cost_usd__{served}"]),
                                status="ok"))
        fb.add_feedback(Feedback(f"g_{i}", float(r[f"quality__{served}"]), label=r["eval_name"]))
    log.close()
    fb.close()
    return db


def test_a_log_that_never_shows_the_candidates_choices_is_refused_for_that(world, greedy_db, capsys):
    import warnings

    import mlflow

    from training import retrain

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = retrain.retrain(_args(world, db=greedy_db, base_data=[str(world.paths["base"])],
                                       router=str(world.routers["inverted"]), out=str(world.root / "cand-greedy")))
    # Base rows without answer lengths beside logged rows with them: no numpy warning on the console.
    assert not [w for w in caught if "All-NaN" in str(w.message)]
    support = report["ope"]["support"]
    assert not report["verdict"]["promote"] and support["verdict"] == "unsupported"
    assert support["unsupported_known"] > 0.5 and support["weight_mean"]["hi"] < 0.5
    reason = report["verdict"]["reason"]
    assert reason.startswith("the log does not support the candidate's choices: mean importance weight")
    assert "for certain: logged with propensity 1" in reason
    # What the log shows of its exploration: none at all, so the bandit first.
    assert reason.endswith("; explore more: the gateway explored none of these requests (each is logged with propensity "
                           "1); turn on learning.bandit.enabled, or, where it is on, what stops it is its explore_share, "
                           "or its spend caps extra_cost_share and total_cost_share where exploring's spend reaches them "
                           "first (GET /admin/router/bandit shows each against its cap; retrain --gateway reads them); "
                           "or collect more traffic"), reason
    run = mlflow.MlflowClient(f"sqlite:///{world.root}/mlflow.db").get_run(report["mlflow_run_id"])
    assert run.data.tags["promoted"] == "false" and run.data.tags["support"] == "unsupported"
    assert run.data.metrics["ope_support_weight_mean_hi"] < 0.5


def test_models_the_candidate_was_not_trained_on_are_named(world, greedy_db, caplog):
    from training import retrain

    # No --base-data, a log where one model served every request: the candidate knows only that one.
    # Named: the log's other candidates. Not named: the live router's other eight models, which this
    # gateway never offered (the laptop demo named sixteen such models).
    with caplog.at_level("WARNING"):
        report = retrain.retrain(_args(world, db=greedy_db, router=str(default_artifact()),
                                       out=str(world.root / "cand-nobase")))
    [warning] = report["warnings"]
    assert "for Yi-34B-Chat, gpt-3.5-turbo-1106, candidates of the logged requests" in warning
    assert "WizardLM" not in warning and "gpt-4-1106-preview" not in warning and "claude-v1" not in warning
    assert "no --base-data covers them" in warning and "; give --base-data to keep them known" in warning
    assert "treats them as new models" in warning and "new_model_explore_share" in warning
    assert any("Yi-34B-Chat" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_base_table_that_leaves_out_a_logged_model_is_named_as_such(caplog):
    from training.retrain import _untrained_models

    candidate = Namespace(models=["m1", "m2"])
    assert _untrained_models(candidate, ["m1", "m2"], base_data=True) == []
    [warning] = _untrained_models(candidate, ["m1", "m2", "m3"], base_data=True)
    assert warning.startswith("the candidate has no training rows for m3, candidates of the logged requests (the "
                              "--base-data given does not cover them and no logged request")
    assert "; give a --base-data table that covers them to keep them known" in warning


def test_the_gateway_is_checked_before_training(world, tmp_path, monkeypatch, capsys):
    import socket

    from service.cli import main
    from tests.fake_upstream import FakeUpstream
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter
    from tests.governance_harness import MASTER, governed_gateway

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    empty = tmp_path / "outcomes.sqlite"
    open_outcome_log(f"sqlite:///{empty}").close()

    def run(gateway, key):
        if key is None:
            monkeypatch.delenv("OPENCLAW_MASTER_KEY", raising=False)
        else:
            monkeypatch.setenv("OPENCLAW_MASTER_KEY", key)
        out = tmp_path / "cand"
        rc = main(["retrain", "--db", f"sqlite:///{empty}", "--router", str(world.routers["base"]), "--out", str(out),
                   "--gateway", gateway, "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and not out.exists(), err
        return err

    assert "cannot be reached" in run(closed, MASTER)
    with governed_gateway(tmp_path) as (gw, *_):  # its master key is MASTER, whatever the environment says
        assert "needs its master key for the hot reload: set OPENCLAW_MASTER_KEY" in run(gw.url, None)
        assert "refused the master key in OPENCLAW_MASTER_KEY (invalid_api_key)" in run(gw.url, "mk-wrong")
        passed = run(gw.url, MASTER)  # past the check (the bandit is off: 404 bandit_disabled), then the empty log
        assert "--gateway" not in passed and "nothing to train on" in passed
    with FakeUpstream() as up:
        plain = Running(fake_config(up.base_url, f"sqlite:///{tmp_path}/gw.sqlite"), router=QualityRouter(DEFAULT_QUALITY))
        try:
            assert "admin API off" in run(plain.url, None)  # started without a master key
        finally:
            plain.stop()
        assert "does not answer as an OpenClaw gateway" in run(up.url, MASTER)


def test_hot_reload_under_concurrent_requests_loses_none(world, monkeypatch):
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "sekrit")
    admin = {"authorization": "Bearer sekrit"}
    from router.engine import LearnedRouter

    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, f"sqlite:///{world.root}/reload.sqlite"), router=LearnedRouter.load(world.routers["base"]))
        try:
            client = gw.client()

            def ask(i):
                r = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"Which planet is number {i}?"}])
                return r.status_code, r.parse().choices[0].message.content

            with cf.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(ask, i) for i in range(60)]
                for k in range(6):
                    path = world.routers["inverted" if k % 2 == 0 else "base"]
                    r = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(path)}, headers=admin, timeout=60)
                    assert r.status_code == 200, r.text
                results = [f.result() for f in futures]
            assert len(results) == 60 and all(code == 200 and text for code, text in results)
            assert Path(gw.gateway.router.current.path) == Path(world.routers["base"])

            bad = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(world.root / "nowhere")}, headers=admin)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_artifact"
            broken = world.root / "broken"  # a manifest without its boosters: a 400, never a 500
            broken.mkdir(exist_ok=True)
            shutil.copy(Path(world.routers["base"]) / "manifest.json", broken / "manifest.json")
            bad = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(broken)}, headers=admin)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_artifact"
            # The form the error suggests, "models/NAME", finds a shipped router from any directory.
            monkeypatch.chdir(world.root)
            shipped = httpx.post(f"{gw.url}/admin/router/reload", json={"path": "models/default"}, headers=admin, timeout=60)
            assert shipped.status_code == 200 and Path(gw.gateway.router.current.path) == default_artifact()
            assert httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(world.routers["base"])}, headers=admin,
                              timeout=60).status_code == 200
            denied = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(world.routers["inverted"])})
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "missing_api_key"
            monkeypatch.delenv("OPENCLAW_MASTER_KEY")  # no master key: no admin access, even from loopback
            off = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(world.routers["inverted"])}, headers=admin)
            assert off.status_code == 403 and off.json()["error"]["code"] == "admin_disabled"
            assert Path(gw.gateway.router.current.path) == Path(world.routers["base"])
        finally:
            gw.stop()


def test_the_router_that_made_the_logged_decisions_is_the_default_live_router(world, monkeypatch, caplog):
    # After a promotion the gateway serves another artifact than models/default: retrain without
    # --router finds it from the log, where the gateway records it with every routed request.
    import os

    from router.engine import LearnedRouter
    from training import retrain

    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "sekrit")
    db = f"sqlite:///{world.root}/routers.sqlite"
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db), router=LearnedRouter.load(world.routers["inverted"]))
        try:
            for i in range(3):
                gw.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": f"Question {i}?"}])
            r = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(world.routers["base"])},
                           headers={"authorization": "Bearer sekrit"}, timeout=60)
            assert r.status_code == 200, r.text
            for i in range(2):
                gw.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": f"Another {i}?"}])
            gw.client().chat.completions.create(model="m1", messages=[{"role": "user", "content": "Named?"}])  # not routed
        finally:
            gw.stop()
    inverted, base = (os.path.abspath(world.routers[k]) for k in ("inverted", "base"))
    assert retrain.logged_routers(db) == (base, {inverted: 3, base: 2})
    with caplog.at_level("WARNING"):
        assert os.path.abspath(retrain.live_router_path(_args(world, db=db))) == base
    assert "the decisions of 2 routers" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        retrain.live_router_path(_args(world, db=db, router=str(world.routers["inverted"])))
    assert f"made by {base}, not by the live router given" in caplog.text


def test_a_logged_router_whose_folder_is_not_here_is_an_error_naming_it(tmp_path, caplog):
    # retrain on another host than the gateway, or the folder moved: it judged against models/default,
    # saying "not by the live router given" although none was given, and nothing said the folder was missing.
    from training import retrain

    here, gone = str(default_artifact()), str(tmp_path / "elsewhere" / "candidate-20261127")
    db = f"sqlite:///{tmp_path}/o.sqlite"
    log = open_outcome_log(db)
    log.write(OutcomeRecord(request_id="old", ts=1.0, extras={"router": here}))
    log.write(OutcomeRecord(request_id="new", ts=2.0, extras={"router": gone}))
    log.write(OutcomeRecord(request_id="unrouted", ts=3.0, requested_model="m1"))
    log.close()
    world = Namespace(db=db, root=tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        retrain.live_router_path(_args(world))
    assert str(missing.value).startswith(f"the latest logged decisions were made by the router in {gone}, and that "
                                         f"folder is not here (no manifest.json)")
    assert "give --router with that router's artifact" in str(missing.value)
    with caplog.at_level("WARNING"):  # given, it is used, and the difference said
        assert Path(retrain.live_router_path(_args(world, router="models/default"))).resolve() == default_artifact()
    assert f"made by {gone}, not by the live router given ({here})" in caplog.text
    # A log that records no router at all (written before the gateway recorded it): models/default, as before.
    bare = f"sqlite:///{tmp_path}/bare.sqlite"
    log = open_outcome_log(bare)
    log.write(OutcomeRecord(request_id="r", ts=1.0))
    log.close()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert retrain.live_router_path(_args(world, db=bare)) == default_artifact()
    assert "live router given" not in caplog.text


def test_the_live_router_is_found_from_any_folder_as_serve_finds_it(world, tmp_path, monkeypatch):
    from training import retrain

    monkeypatch.chdir(tmp_path)  # no models/ here: the shipped models/default is meant
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    # The live router loads first; the job then fails on the log it was given, past the router.
    with pytest.raises(Exception) as failed:
        retrain.retrain(_args(world, db=f"sqlite:///{empty}", router="models/default", out=str(tmp_path / "c")))
    assert "not a router artifact" not in str(failed.value)


def test_nothing_held_out_is_a_refusal_not_a_crash():
    from training.retrain import judge

    verdict = judge({"n": 0, "overlap": 0.0}, "dr", min_requests=0)
    assert not verdict.promote and "held out" in verdict.reason


def test_an_estimate_without_overlap_is_named_not_printed_as_nan():
    from training.retrain import judge

    nan = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    verdict = judge({"n": 500, "overlap": 0.0, "utility": {"difference": {"ips": nan}}}, "ips", min_requests=100)
    assert not verdict.promote and "no estimate" in verdict.reason and "nan" not in verdict.reason


def test_job_options_that_would_fail_after_training_are_refused_first(tmp_path, capsys):
    from service.cli import main

    table = tmp_path / "t.csv"
    table.write_text("prompt,quality__a,cost_usd__a\nhi,1,0.001\n")
    common = ["--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]
    log = tmp_path / "outcomes.sqlite"
    open_outcome_log(f"sqlite:///{log}").close()
    for argv, says in [
        (["train", "--data", str(table), "--out", str(tmp_path / "r"), "--folds", "1", *common], "--folds"),
        (["train", "--data", str(table), "--out", str(tmp_path / "r"), "--registered-name", "team/router", *common], "team/router"),
        (["train", "--data", str(table), "--out", str(tmp_path / "r"), "--tracking-uri", str(tmp_path / "mlruns")], "tracking URI"),
        (["train", "--data", str(table), "--out", str(tmp_path / "r"), "--rounds", "-1", *common], "--rounds"),
        (["train", "--data", str(table), "--out", str(tmp_path / "r"), "--pca-dim", "-3", *common], "--pca-dim"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *common], "is a folder"),
        (["eval", "--data", str(table), "--router", "models/default", "--budgets", "0.01,abc", "--decisions-out",
          str(tmp_path / "d.parquet"), "--report-dir", str(tmp_path / "rep")], "--budgets"),
        (["retrain", "--db", f"sqlite:///{tmp_path / 'typo' / 'outcomes.sqlite'}", "--out", str(tmp_path / "c"), *common],
         "no outcome log"),
        (["retrain", "--db", f"sqlite:///{log}", "--router", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c"), *common],
         "not a router artifact"),
        (["retrain", "--db", f"sqlite:///{log}", "--gateway", "localhost:8080", "--out", str(tmp_path / "c"), *common],
         "--gateway"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "typo").exists()
    assert not (tmp_path / "c").exists()  # no candidate trained before the refusal
    with pytest.raises(SystemExit) as info:  # argparse's own usage error
        main(["serve", "--port", "abc"])
    assert info.value.code == 2 and "'abc' is not a port number" in capsys.readouterr().err


def test_base_data_without_costs_is_priced_by_prices(tmp_path):
    from training.data import ModelPrice
    from training.retrain import training_set

    table = tmp_path / "soft_labels.csv"  # as routerdc_7llm: soft labels, no cost columns
    table.write_text("prompt,quality__a,quality__b\n" + "".join(f"question {i}?,0.{i},0.5\n" for i in range(6)))
    with pytest.raises(ValueError, match="--prices"):
        training_set([str(table)], [])
    outcomes, X = training_set([str(table)], [], prices={"a": ModelPrice(1.0, 2.0), "b": ModelPrice(3.0, 4.0)})
    assert outcomes.models == ["a", "b"] and (outcomes.cost[:, 1] > outcomes.cost[:, 0]).all() and len(X) == 6


def test_a_candidate_is_never_written_over_an_existing_artifact(tmp_path, capsys):
    from service.cli import main

    live = tmp_path / "promoted-last-week"
    live.mkdir()
    (live / "manifest.json").write_text("{}")
    db = tmp_path / "outcomes.sqlite"
    db.touch()
    assert main(["retrain", "--db", f"sqlite:///{db}", "--out", str(live), "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]) == 2
    assert "already holds an artifact" in capsys.readouterr().err and (live / "manifest.json").read_text() == "{}"
