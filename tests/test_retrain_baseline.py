"""retrain judges a candidate against the router serving now, not only against what the gateway served.

The log (tests/conftest.py's `world`) is real RouterBench prompts served by a uniformly
exploring policy, in a real SQLite outcome log with feedback. A router trained on the true labels
beats that exploring policy by a wide margin, so against the logged policy alone a candidate no
better than that router, or that router itself, looked like an improvement and was promoted.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from service.cli import main


def _split(db: str, eval_share: float = 0.5):
    """The training half and the held-out half, as retrain splits the log."""
    from training.offpolicy import load_traffic

    traffic = load_traffic(db)
    order = np.argsort(traffic.ts, kind="stable")
    n_eval = int(round(len(traffic) * eval_share))
    return traffic.rows(order[: len(traffic) - n_eval]), traffic.rows(order[len(traffic) - n_eval:])


@pytest.mark.parametrize("estimator", ["dr", "snips", "ips"])
def test_the_serving_router_judged_as_a_candidate_is_never_promoted(world, estimator):
    from router.engine import LearnedRouter
    from training.retrain import judge_candidate

    train, held = _split(world.db)
    live = LearnedRouter.load(world.routers["base"])
    same = LearnedRouter.load(world.routers["base"])  # the same artifact, loaded again: identical predictions
    vs_served, vs_live, verdict, each = judge_candidate(live, same, train, held, estimator, 100, seed=3)
    # What the old rule saw: better than the exploring logged policy, beyond the interval.
    assert each["vs_served"]["passed"] and vs_served["utility"]["difference"][estimator]["lo"] > 0
    assert not verdict.promote and not each["vs_live_router"]["passed"]
    assert vs_live["agreement"] == 1.0
    for est, d in vs_live["utility"]["difference"].items():
        assert d["value"] == 0.0, (est, d)  # paired on the same requests: exactly no difference
    assert verdict.reason.startswith(f"the candidate chooses as the serving router does on all {len(held)} held-out "
                                     f"requests: it cannot be better than the serving router's own choices")
    assert "only better than what the gateway served (exploration included), by +" in verdict.reason


def _retrain(world, tmp_path, name, *extra):
    out = tmp_path / name
    argv = ["retrain", "--db", world.db, "--router", str(world.routers["base"]), "--out", str(out), "--folds", "3",
            "--rounds", "60", "--seed", "3", "--min-requests", "100", "--registered-name", "baseline-test",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "baseline-test", *extra]
    return main(argv), out


def test_a_candidate_that_only_beats_the_exploring_log_is_refused_and_says_against_what(world, tmp_path, capsys):
    import mlflow

    # Trained on the serving router's own base table plus the log's training half: about as good as
    # it, far better than the uniform exploration that served the log. The old rule promoted it.
    code, out = _retrain(world, tmp_path, "cand", "--base-data", str(world.paths["base"]), "--exit-code")
    printed = capsys.readouterr().out
    assert code == 3, printed
    report = json.loads((out / "retrain_report.json").read_text())
    verdict = report["verdict"]
    assert not verdict["promote"] and verdict["vs_served"]["passed"] and not verdict["vs_live_router"]["passed"]
    assert report["ope"]["utility"]["difference"]["dr"]["lo"] > 0
    assert report["ope_vs_live_router"]["utility"]["difference"]["dr"]["lo"] <= 0
    assert report["ope_vs_live_router"]["support_baseline"]["verdict"] == "supported"
    assert verdict["reason"].startswith("candidate is not better than the serving router's own choices (without "
                                        "exploration) beyond the interval: utility difference ")
    assert "; only better than what the gateway served (exploration included), by +" in verdict["reason"]
    assert f"NOT PROMOTED {out}: {verdict['reason']}" in printed
    assert "Utility difference, candidate − what the gateway served, on 400 held-out logged requests" in printed
    assert "Utility difference, candidate − the serving router's own choices (greedy), on 400 held-out" in printed
    assert "Support of the serving router's own choices in the log (supported)" in printed

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("baseline-test").experiment_id])
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["ope_vs_served_utility_dr_diff_lo"] > 0 >= metrics["ope_vs_live_router_utility_dr_diff_lo"]
    assert metrics["ope_vs_live_router_utility_dr_diff"] == pytest.approx(
        report["ope_vs_live_router"]["utility"]["difference"]["dr"]["value"])
    assert "ope_vs_live_router_baseline_support_weight_mean" in metrics and "ope_support_weight_mean" in metrics
    assert tags["promoted"] == "false" and tags["passed_vs_served"] == "true" and tags["passed_vs_live_router"] == "false"
    assert not client.search_model_versions("name='baseline-test'")  # nothing registered


def test_too_few_held_out_requests_are_refused_before_any_training(world, tmp_path, capsys):
    import mlflow

    code, out = _retrain(world, tmp_path, "never", "--min-requests", "5000", "--exit-code")
    printed = capsys.readouterr().out
    assert code == 3
    assert printed.startswith("NOT PROMOTED: only 400 usable logged requests with rewards would be held out for "
                              "evaluation (the latest 50% of 800, --eval-share); need 5000 (--min-requests): no "
                              "candidate trained"), printed
    assert not out.exists()  # no candidate fitted, saved or reported
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("baseline-test")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
    code, _ = _retrain(world, tmp_path, "never2", "--min-requests", "5000")
    assert code == 0 and not (tmp_path / "never2").exists()  # without --exit-code: 0, as for any refusal


def test_a_promotion_without_gateway_says_no_gateway_was_reloaded_and_how_to(world, tmp_path, capsys):
    # The inverted-label router serves: a candidate trained on the true labels beats it and the log.
    code, out = _retrain(world, tmp_path, "good", "--base-data", str(world.paths["extra"]), "--router",
                         str(world.routers["inverted"]))
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "retrain_report.json").read_text())
    assert report["verdict"]["promote"] and report["verdict"]["vs_served"]["passed"]
    assert report["verdict"]["vs_live_router"]["passed"]
    assert report["verdict"]["reason"].startswith("candidate utility is better than what the gateway served "
                                                  "(exploration included) by +")
    assert "; and candidate utility is better than the serving router's own choices (without exploration) by +" in \
        report["verdict"]["reason"]
    assert f"PROMOTED {out} (MLflow baseline-test version 1, alias 'live'): " in printed
    assert ("No gateway was reloaded (no --gateway): a running gateway serves its router until it gets POST "
            f"/admin/router/reload {{\"path\": \"{out.resolve()}\"}} with the master key") in printed


def test_min_requests_zero_with_nothing_held_out_trains_a_candidate_and_does_not_promote_it(world, tmp_path, capsys):
    import mlflow

    from router.outcome_log import open_outcome_log

    empty = f"sqlite:///{tmp_path / 'new.sqlite'}"  # a gateway that has logged no request with feedback yet
    open_outcome_log(empty).close()
    code, out = _retrain(world, tmp_path, "first", "--db", empty, "--base-data", str(world.paths["base"]),
                         "--min-requests", "0", "--exit-code")
    printed = capsys.readouterr().out
    assert code == 3, printed
    reason = "no logged request with a reward is held out for evaluation: nothing to judge the candidate on"
    assert f"NOT PROMOTED {out}: {reason}" in printed and "Utility difference" not in printed
    report = json.loads((out / "retrain_report.json").read_text())
    assert report["verdict"]["promote"] is False and report["verdict"]["reason"] == reason
    assert report["params"]["logged_eval"] == 0 and report["params"]["rows"] > 0
    assert (out / "manifest.json").exists()  # the candidate, trained on the base data alone
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("baseline-test").experiment_id])
    assert run.data.tags["promoted"] == "false"
    assert not client.search_model_versions("name='baseline-test'")  # nothing registered
