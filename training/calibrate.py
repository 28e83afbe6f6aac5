"""`openclaw-router calibrate`: the willingness to pay that sends a chosen share of traffic to
one model (RouteLLM's `calibrate_threshold`, for this router's knob).

The share is measured on prompts the user supplies (any table with a text column: a wide
outcome table, or a sample of the application's own prompts), decided as the gateway decides:
with `--config`, over that config's catalog (its prices, context windows, tags) under one of
its routing profiles (its allowed models, tags, cost and latency limits, latency weight);
without it, over the router artifact's models at the prices it was trained with. A prompt
that no model may answer under the profile is left out of the share, and counted.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def share_arg(text: str) -> float:
    """A share of traffic: `0.3` or `30%`."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (0.3 or 30%)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1 (0% and 100%)")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="prompts to calibrate on: parquet, CSV or JSONL with a text column (a wide outcome table will do)")
    parser.add_argument("--model", required=True, help="the model whose share of requests is set")
    parser.add_argument("--share", required=True, type=share_arg, help="share of the prompts it should get: 0.3 or 30%%")
    parser.add_argument("--text-column", help="column holding the prompt text (default: prompt, then query)")
    parser.add_argument("--config", help="gateway config YAML: decide over its catalog under one of its profiles "
                        "(default: the router artifact's models at the prices it was trained with)")
    parser.add_argument("--profile", help="routing profile of --config whose knob is calibrated (default: its default_profile)")
    parser.add_argument("--router", help="router artifact folder (default: the config's router.artifact, else models/default)")
    parser.add_argument("--out", help="also write the result as JSON here")


def calibrate(texts, input_tokens, embeddings, router, model: str, share: float, catalog=None, profile=None) -> dict:
    """Everything but I/O: the calibrated knob and what it does on these prompts."""
    from router.policy import calibrate_willingness_to_pay, choose_batch, eligibility
    from router.predictor import Predictions
    from router.types import RoutingRequest

    requests = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(texts, input_tokens)]
    pred = router.predict(requests, embeddings, catalog)
    if model not in pred.models:
        raise ValueError(f"--model {model!r} is not a model of the {'catalog' if catalog else 'router'}: {pred.models}")
    latency_weight = 0.0
    eligible = np.isfinite(pred.p_good) & np.isfinite(pred.cost_usd)
    if profile is not None:
        if profile.allowed_models is not None and model not in profile.allowed_models:
            raise ValueError(f"--model {model!r} is not among the profile's allowed_models {sorted(profile.allowed_models)}")
        latency_weight = profile.latency_weight
        eligible &= eligibility(pred, requests, catalog, profile)
    answerable = eligible.any(axis=1)
    if not answerable.any():
        raise ValueError("no prompt has a model that may answer it under these constraints")
    pred = Predictions(pred.models, *(a[answerable] for a in (pred.p_good, pred.p_good_std, pred.output_tokens,
                                                        pred.cost_usd, pred.latency_s)))
    eligible = eligible[answerable]
    wtp = calibrate_willingness_to_pay(pred, model, share, latency_weight, eligible=eligible)
    chosen = choose_batch(pred, wtp, latency_weight, eligible=eligible)
    counts = {m: int(np.sum(chosen == j)) for j, m in enumerate(pred.models)}
    shares = {m: n / len(chosen) for m, n in counts.items()}
    return {
        "model": model, "target_share": share, "willingness_to_pay": wtp, "share": shares[model],
        "shares": shares, "counts": counts, "prompts": int(answerable.sum()), "prompts_without_eligible_model": int((~answerable).sum()),
        "latency_weight": latency_weight,
        "mean_predicted_quality": float(pred.p_good[np.arange(len(chosen)), chosen].mean()),
        "mean_predicted_cost_usd": float(pred.cost_usd[np.arange(len(chosen)), chosen].mean()),
    }


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.embedding import encode_cached
    from router.engine import LearnedRouter, default_artifact, find_artifact
    from training.data import load_prompts
    from training.outputs import check_output_file

    if args.out:
        check_output_file(args.out, "--out")
    config = profile = catalog = None
    profile_name = None
    if args.config:
        config = load_config(args.config)
        profile_name = args.profile or config.router.default_profile
        if profile_name not in config.router.profiles:
            raise ValueError(f"--profile {profile_name!r} is not a profile of {args.config}: {sorted(config.router.profiles)}")
        profile, catalog = config.router.profiles[profile_name], config.models
    elif args.profile:
        raise ValueError("--profile names a routing profile of a gateway config: give --config too")
    artifact = (find_artifact(args.router or config.router.artifact, config) if config is not None
                else Path(args.router) if args.router else default_artifact())
    if not artifact.exists():
        raise FileNotFoundError(f"{artifact}: no such router artifact")
    texts, input_tokens = load_prompts(args.data, args.text_column)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        raise ValueError(f"{args.data}: every prompt is empty")
    empty = len(texts) - len(keep)
    if empty:
        log.warning("%d empty prompts in %s left out", empty, args.data)
    texts, input_tokens = [texts[i] for i in keep], input_tokens[keep]
    router = LearnedRouter.load(artifact)
    result = calibrate(texts, input_tokens, encode_cached(texts), router, args.model, args.share, catalog, profile)
    result.update(data=str(args.data), router=str(artifact), config=args.config, profile=profile_name,
                  empty_prompts=empty)
    print(format_result(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def format_result(r: dict) -> str:
    lines = [
        f"willingness_to_pay {r['willingness_to_pay']:.6g} USD per quality point sends {r['model']} "
        f"{r['share']:.1%} of {r['prompts']} prompts (asked {r['target_share']:.1%})",
        f"predicted mean quality {r['mean_predicted_quality']:.3f} at ${r['mean_predicted_cost_usd']:.6f} per prompt; shares:",
        *(f"  {m:<32} {r['shares'][m]:6.1%} ({n})" for m, n in sorted(r["counts"].items(), key=lambda kv: -kv[1]) if n),
    ]
    if r["prompts_without_eligible_model"]:
        lines.append(f"{r['prompts_without_eligible_model']} prompts left out: no model may answer them under the profile")
    where = f"router.profiles.{r['profile']}" if r["profile"] else "a routing profile (router.profiles.NAME)"
    lines.append(f"in the gateway config, {where}.willingness_to_pay: {r['willingness_to_pay']:.6g}")
    return "\n".join(lines)
