"""The unseen-model prior's output tokens follow the prompt, on a router `openclaw-router train` fitted.

RouterBench's answers are mostly one letter (multiple choice): each model's median length was 1
token, and a model the router never saw was predicted at 1 output token for every prompt, a code
prompt included, so it looked nearly free under a cost cap, a budget and the bandit's spend.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router.config import ModelSpec, Price
from router.engine import LearnedRouter, default_artifact
from router.request_view import view_prompt
from service.cli import main

MODELS = {"terse": 0.6, "middling": 1.0, "verbose": 1.6}  # how long each writes code, relative
ANIMALS = ["whale", "bat", "otter", "seal", "mole", "lynx", "yak", "hare", "ibex", "orca", "puma"]
TASKS = ["parses a CSV file into a dict of columns", "merges two sorted lists", "reverses a linked list",
         "validates an email address with a regular expression", "computes the Levenshtein distance",
         "serialises a binary tree to JSON", "implements an LRU cache", "finds all primes below n"]
# Prompts the router was not trained on, in the table's two kinds.
MC_PROMPT = "Question 500: which of these lives in water?\nA) carp\nB) newt\nC) cactus\nD) granite\nAnswer:"
CODE_PROMPT = "Write a Python function that flattens a nested list of integers (variant 500), with unit tests."


def _table(rng: np.random.Generator) -> pd.DataFrame:
    """Three in four prompts multiple choice, answered in one token; the rest code, answered at length."""
    rows = []
    for i in range(120):
        a, b = ANIMALS[i % len(ANIMALS)], ANIMALS[(i * 7 + 3) % len(ANIMALS)]
        rows.append((f"Question {i}: which of these lives in water?\nA) {a}\nB) {b}\nC) cactus\nD) granite\nAnswer:", 1.0))
    for i in range(40):
        rows.append((f"Write a Python function that {TASKS[i % len(TASKS)]} (variant {i}), with unit tests.", 220.0))
    frame = pd.DataFrame({"prompt": [t for t, _ in rows]})
    base = np.array([n for _, n in rows])
    for name, scale in MODELS.items():
        frame[f"quality__{name}"] = (rng.random(len(rows)) < 0.6).astype(float)
        frame[f"output_tokens__{name}"] = np.where(base > 1, np.round(base * scale * rng.uniform(0.8, 1.25, len(rows))), 1.0)
    return frame


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> LearnedRouter:
    tmp = tmp_path_factory.mktemp("unseen_tokens")
    _table(np.random.default_rng(0)).to_parquet(tmp / "mc_and_code.parquet")
    assert main(["train", "--data", str(tmp / "mc_and_code.parquet"), "--out", str(tmp / "router"), "--folds", "2",
                 "--rounds", "10", "--tracking-uri", f"sqlite:///{tmp / 'ml.db'}"]) == 0
    return LearnedRouter.load(tmp / "router")


def test_an_unseen_model_is_predicted_the_length_the_known_models_are_for_that_prompt(router):
    manifest = json.loads((router.path / "manifest.json").read_text())
    assert manifest["predictor"]["token_prior"] == [1.0, 1.0, 1.0]  # the per-model medians: the old prior
    catalog = [ModelSpec(name=m, provider="p", price=Price(input_per_1m=1, output_per_1m=2)) for m in MODELS]
    catalog.append(ModelSpec(name="newcomer", provider="p", price=Price(input_per_1m=1, output_per_1m=2)))
    pred = router.predict([view_prompt(MC_PROMPT), view_prompt(CODE_PROMPT)], catalog=catalog)
    known, new = pred.output_tokens[:, :3], pred.output_tokens[:, 3]
    assert known[1].min() > 50 and known[0].max() < 5  # what the router learnt of the known models
    np.testing.assert_allclose(new, np.median(known, axis=1))
    assert new[1] > 50 and new[0] < 5
    # Priced as it would write: a code answer costs the newcomer as much as the middling model.
    assert pred.cost_usd[1, 3] == pytest.approx(pred.cost_usd[1, 1])


def test_known_models_predict_the_same_with_an_unseen_model_beside_them(router):
    """On a fresh router and on the shipped one: an unseen catalog entry changes no known model's
    predictions (only its own column comes from the prior)."""
    shipped = LearnedRouter.load(default_artifact())
    requests = [view_prompt(MC_PROMPT), view_prompt(CODE_PROMPT), view_prompt("What is 17 * 23?")]
    for r in (router, shipped):
        names = r.models[:3]
        alone = [ModelSpec(name=m, provider="p", price=Price(input_per_1m=1, output_per_1m=2)) for m in names]
        mixed = alone[:1] + [ModelSpec(name="newcomer", provider="p", price=Price(input_per_1m=1, output_per_1m=2))] + alone[1:]
        a, b = r.predict(requests, catalog=alone), r.predict(requests, catalog=mixed)
        for field in ("p_good", "p_good_std", "output_tokens", "cost_usd", "latency_s"):
            assert np.array_equal(getattr(a, field), np.delete(getattr(b, field), 1, axis=1)), field
