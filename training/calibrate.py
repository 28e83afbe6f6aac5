"""`openclaw-router calibrate`: the willingness to pay that sends a chosen share of traffic to
one model (RouteLLM's `calibrate_threshold`, for this router's knob).

The share is measured on requests the user supplies, each made into the chat request the
gateway would receive and viewed as the gateway views it (`view_chat_request`: the last user
turn embedded, the whole request counted in tokens, tools and JSON output as needs): a table
whose text column is sent as the user's message, after the messages of `--request-template`
(an agent's system prompt and tools, say), or a `messages` column holding whole chats. With
`--config`, they are decided over that config's catalog (its prices, context windows, tags)
under one of its routing profiles (its allowed models, tags, cost and latency limits, latency
weight); without it, over the router artifact's models at the prices it was trained with. A
request that no model may answer under the profile is left out of the share, and counted.

What it cannot see is the live latency the gateway measures: with a profile's latency weight
or latency limit, the gateway mixes measured latency into the prediction as calls come in,
and the share moves with it.
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
                        help="requests to calibrate on: parquet, CSV or JSONL with a text column (each sent as the user's "
                        "message; a wide outcome table will do) or a `messages` column of whole chats")
    parser.add_argument("--model", required=True, help="the model whose share of requests is set")
    parser.add_argument("--share", required=True, type=share_arg, help="share of the prompts it should get: 0.3 or 30%%")
    parser.add_argument("--text-column", help="column holding the prompt text (default: messages, else prompt, then query)")
    parser.add_argument("--request-template", metavar="FILE.json",
                        help="a chat-completions body each prompt is sent in, as its last user message: the "
                        "application's system prompt, tools, max_completion_tokens... (a `messages` chat is taken whole)")
    parser.add_argument("--config", help="gateway config YAML: decide over its catalog under one of its profiles "
                        "(default: the router artifact's models at the prices it was trained with)")
    parser.add_argument("--profile", help="routing profile of --config whose knob is calibrated (default: its default_profile)")
    parser.add_argument("--router", help="router artifact folder (default: the config's router.artifact, else models/default)")
    parser.add_argument("--out", help="also write the result as JSON here")


def chat_bodies(path: str | Path, text_column: str | None = None, template: dict | None = None) -> list[dict]:
    """The chat request each row of the file stands for: its `messages` column as the chat,
    else its text as the user's message after the template's messages."""
    from training.data import read_frame
    from training.texts import TEXT_COLUMNS, pick_text_column

    df = read_frame(path, text_only=True)  # a prompt that reads "007" is not the number 7
    # As train and eval choose it (an empty `prompt` beside a full `query` is passed over), a chat first.
    column, _, _ = pick_text_column(df, text_column, Path(path), tuple(dict.fromkeys(("messages", *TEXT_COLUMNS))))
    base = dict(template or {})
    head = list(base.pop("messages", None) or [])
    bodies = []
    for i, value in enumerate(df[column].tolist()):
        missing = value is None or (isinstance(value, float) and np.isnan(value))  # an empty cell
        if column == "messages":
            try:
                chat = [] if missing else json.loads(value) if isinstance(value, str) else list(value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: row {i}: `messages` is not a JSON list of chat messages: {exc}") from None
            if not isinstance(chat, list) or not all(isinstance(m, dict) for m in chat):
                raise ValueError(f"{path}: row {i}: `messages` is not a list of chat messages")
            bodies.append({**base, "messages": chat})
        else:
            bodies.append({**base, "messages": [*head, {"role": "user", "content": "" if missing else str(value)}]})
    return bodies


def load_template(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        template = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--request-template {path}: not JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--request-template {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(template, dict) or not isinstance(template.get("messages", []), list):
        raise ValueError(f"--request-template {path}: must be a chat-completions body (an object; `messages` a list)")
    return template


def template_limits(template: dict | None, config, profile_name: str | None) -> tuple[str | None, object]:
    """The profile a template's `model` names and the limits of its `"router": {...}`, as the
    gateway reads them from each request sent with it."""
    from router.types import Constraints

    template = template or {}
    named = template.get("model")
    if named is not None and config is None:
        raise ValueError("--request-template names a `model`: give the gateway --config whose profile it is")
    if named is not None:
        if named not in config.router.profiles:
            raise ValueError(f"--request-template's model {named!r} is not a routing profile of the config "
                             f"({sorted(config.router.profiles)}): a named model is not routed")
        if profile_name is not None and profile_name != named:
            raise ValueError(f"--profile {profile_name!r} and the template's model {named!r} disagree")
        profile_name = named
    if template.get("router") is None:
        return profile_name, Constraints()
    if config is None:
        raise ValueError("--request-template sets `router` limits: give --config, whose catalog they name")
    from service.errors import ApiError
    from service.routing import build_constraints
    from service.schemas import router_options

    try:
        return profile_name, build_constraints(router_options(template["router"]), {}, config)
    except ApiError as exc:
        raise ValueError(f"--request-template: {exc.message}") from None


def calibrate(requests, embeddings, router, model: str, share: float, catalog=None, profile=None,
              constraints=None) -> dict:
    """Everything but I/O: the calibrated knob and what it does on these requests."""
    from router.policy import calibrate_willingness_to_pay, choose_batch, eligibility, shortest_knob
    from router.predictor import Predictions
    from router.types import Constraints

    pred = router.predict(requests, embeddings, catalog)
    if model not in pred.models:
        raise ValueError(f"--model {model!r} is not a model of the {'catalog' if catalog else 'router'}: {pred.models}")
    latency_weight = 0.0
    eligible = np.isfinite(pred.p_good) & np.isfinite(pred.cost_usd)
    if profile is not None:
        if profile.allowed_models is not None and model not in profile.allowed_models:
            raise ValueError(f"--model {model!r} is not among the profile's allowed_models {sorted(profile.allowed_models)}")
        latency_weight = profile.latency_weight
        eligible &= eligibility(pred, requests, catalog, profile, constraints or Constraints())
    answerable = eligible.any(axis=1)
    if not answerable.any():
        raise ValueError("no request has a model that may answer it under these constraints")
    pred = Predictions(pred.models, *(a[answerable] for a in (pred.p_good, pred.p_good_std, pred.output_tokens,
                                                        pred.cost_usd, pred.latency_s)))
    eligible = eligible[answerable]
    wtp = calibrate_willingness_to_pay(pred, model, share, latency_weight, eligible=eligible)
    knob = shortest_knob(wtp, lambda w: tuple(choose_batch(pred, w, latency_weight, eligible=eligible)))
    chosen = choose_batch(pred, float(knob), latency_weight, eligible=eligible)
    counts = {m: int(np.sum(chosen == j)) for j, m in enumerate(pred.models)}
    shares = {m: n / len(chosen) for m, n in counts.items()}
    return {
        "model": model, "target_share": share, "willingness_to_pay": float(knob), "knob": knob,
        "share": shares[model], "shares": shares, "counts": counts, "requests": int(answerable.sum()),
        "requests_without_eligible_model": int((~answerable).sum()), "latency_weight": latency_weight,
        "mean_predicted_quality": float(pred.p_good[np.arange(len(chosen)), chosen].mean()),
        "mean_predicted_cost_usd": float(pred.cost_usd[np.arange(len(chosen)), chosen].mean()),
    }


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.embedding import encode_cached
    from router.engine import LearnedRouter, default_artifact, find_artifact, find_router_option
    from router.request_view import view_chat_request
    from training.outputs import check_output_file

    if args.out:
        check_output_file(args.out, "--out")
    config = profile = catalog = None
    template = load_template(args.request_template)
    if args.profile and not args.config:
        raise ValueError("--profile names a routing profile of a gateway config: give --config too")
    if args.config:
        config = load_config(args.config)
    profile_name, constraints = template_limits(template, config, args.profile)
    if config is not None:
        profile_name = profile_name or config.router.default_profile
        if profile_name not in config.router.profiles:
            raise ValueError(f"--profile {profile_name!r} is not a profile of {args.config}: {sorted(config.router.profiles)}")
        profile, catalog = config.router.profiles[profile_name], config.models
    # --router from the working directory, then the shipped folder; the config's own artifact
    # as the gateway finds it.
    if args.router:
        artifact = find_router_option(args.router)
    else:
        artifact = find_artifact(config.router.artifact, config) if config is not None else default_artifact()
        if not artifact.exists():
            raise FileNotFoundError(f"{artifact}: no such router artifact")
    requests = [view_chat_request(b) for b in chat_bodies(args.data, args.text_column, template)]
    keep = [i for i, r in enumerate(requests) if r.text.strip()]
    if not keep:
        raise ValueError(f"{args.data}: every request's user message is empty")
    empty = len(requests) - len(keep)
    if empty:
        log.warning("%d requests with an empty user message in %s left out", empty, args.data)
    requests = [requests[i] for i in keep]
    router = LearnedRouter.load(artifact)
    result = calibrate(requests, encode_cached([r.text for r in requests]), router, args.model, args.share, catalog, profile,
                       constraints)
    result.update(data=str(args.data), router=str(artifact), config=args.config, profile=profile_name,
                  request_template=args.request_template, empty_requests=empty)
    print(format_result(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def format_result(r: dict) -> str:
    lines = [
        f"willingness_to_pay {r['knob']} USD per +1.0 expected quality (P(good)) sends {r['model']} "
        f"{r['share']:.1%} of {r['requests']} requests (asked {r['target_share']:.1%})",
        f"predicted mean quality {r['mean_predicted_quality']:.3f} at ${r['mean_predicted_cost_usd']:.6f} per request; shares:",
        *(f"  {m:<32} {r['shares'][m]:6.1%} ({n})" for m, n in sorted(r["counts"].items(), key=lambda kv: -kv[1]) if n),
    ]
    if r["requests_without_eligible_model"]:
        lines.append(f"{r['requests_without_eligible_model']} requests left out: no model may answer them under the profile")
    if not r.get("config"):
        lines.append(f"without --config the share is over all {len(r['shares'])} models of the router artifact; "
                     "--config calibrates over the gateway's catalog")
    where = f"router.profiles.{r['profile']}" if r["profile"] else "a routing profile (router.profiles.NAME)"
    lines.append(f"in the gateway config, {where}.willingness_to_pay: {r['knob']}")
    return "\n".join(lines)
