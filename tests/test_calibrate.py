"""`openclaw-router calibrate`: the knob it prints gives the gateway's decisions the asked share."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai

import pytest
import yaml

from router.config import load_config
from router.engine import LearnedRouter, find_artifact
from router.outcome_log import read_outcomes
from router.request_view import view_chat_request
from service.cli import main
from service.serve_command import default_config_path
from training.data import read_frame

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "data" / "example_outcomes.csv"
STRONG = "gpt-4-1106-preview"


def _prompts() -> list[str]:
    return read_frame(PROMPTS)["prompt"].tolist()


def _config(tmp_path: Path, **profile) -> Path:
    raw = yaml.safe_load(default_config_path().read_text())
    raw["router"]["artifact"] = str(ROOT / "models" / "default")
    raw["router"]["profiles"] = {"team": {"willingness_to_pay": 0.01, **profile}}
    raw["router"]["default_profile"] = "team"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _calibrated(capsys, out: Path, shares: list[float], *argv: str, data: Path = PROMPTS) -> tuple[float, dict]:
    """The first of `shares` that calibrates, and its result. Which shares of 36 rows a knob can
    give turns on the predictions' last bits (int8 kernels differ between CPUs): several rows may
    move at one knob value here and one by one on another machine. Only that, a share the rows
    jump past, moves on to the next share; any other refusal fails the test."""
    for share in shares:
        capsys.readouterr()
        if main(["calibrate", "--data", str(data), "--model", STRONG, "--share", str(share), *argv, "--out", str(out)]) == 0:
            result = json.loads(out.read_text())
            assert abs(result["share"] - share) <= 1 / 36
            return share, result
        err = capsys.readouterr().err
        assert "share jumps past" in err, err
    raise AssertionError(f"every one of the shares {shares} is jumped past")


def _gateway_shares(config_path: Path, wtp: float) -> dict[str, float]:
    """What the gateway's decision picks for each prompt sent alone at that knob."""
    config = load_config(config_path)
    profile = config.router.profiles["team"].model_copy(update={"willingness_to_pay": wtp})
    router = LearnedRouter.load(find_artifact(config.router.artifact, config))
    picks = []
    for text in _prompts():
        request = view_chat_request({"messages": [{"role": "user", "content": text}]})
        try:
            picks.append(router.route(request, catalog=config.models, profile=profile).model)
        except ValueError:
            continue  # no eligible model: left out of the share, as calibrate leaves it out
    return {m: picks.count(m) / len(picks) for m in set(picks)}


@pytest.mark.parametrize("targets", [[0.25, 0.3, 0.2], [0.5, 0.45, 0.55]])
def test_the_printed_knob_sends_the_asked_share_through_the_gateways_decisions(tmp_path, capsys, targets):
    config = _config(tmp_path)
    _, result = _calibrated(capsys, tmp_path / "cal.json", targets, "--config", str(config))
    assert f"router.profiles.team.willingness_to_pay: {result['knob']}" in capsys.readouterr().out
    assert result["requests"] == 36 and result["profile"] == "team"
    shares = _gateway_shares(config, result["willingness_to_pay"])
    assert shares.get(STRONG, 0.0) == pytest.approx(result["share"])
    assert shares == pytest.approx({m: s for m, s in result["shares"].items() if s})


def test_a_profiles_cost_cap_is_respected_as_the_gateway_respects_it(tmp_path, capsys):
    # The cap is below the strong model's predicted cost on about half of the prompts: those can
    # never go to it, so 90 % is out of reach there while it is reachable without the cap.
    capped, free = _config(tmp_path / "capped", max_cost_usd=0.0075), _config(tmp_path / "free")
    _, result = _calibrated(capsys, tmp_path / "capped.json", [0.2, 0.25, 0.15, 0.3], "--config", str(capped))
    assert _gateway_shares(capped, result["willingness_to_pay"]).get(STRONG, 0.0) == pytest.approx(result["share"])
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.9", "--config", str(free)]) == 0
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.9", "--config", str(capped)]) == 2
    assert "is out of reach" in capsys.readouterr().err


def test_calibrate_refuses_what_it_cannot_calibrate(tmp_path, capsys):
    def error(*argv: str) -> str:
        capsys.readouterr()
        assert main(["calibrate", "--data", str(PROMPTS), *argv]) == 2
        return capsys.readouterr().err

    assert "not a model of the router" in error("--model", "gpt-5", "--share", "0.3")
    assert "is out of reach" in error("--model", "claude-v2", "--share", "0.9")
    assert "give --config too" in error("--model", STRONG, "--share", "0.3", "--profile", "auto")
    only_cheap = _config(tmp_path, allowed_models=["mistral-7b-chat", "gpt-3.5-turbo-1106"])
    assert "not among the profile's allowed_models" in error("--model", STRONG, "--share", "0.3", "--config", str(only_cheap))
    assert "is not a profile of" in error("--model", STRONG, "--share", "0.3", "--config", str(only_cheap), "--profile", "x")
    missing = error("--model", STRONG, "--share", "0.3", "--request-template", str(tmp_path / "nowhere.json"))
    assert "error: --request-template " in missing and "cannot read it" in missing and len(missing.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "150%"])
    assert "not a share between 0 and 1" in capsys.readouterr().err


def test_without_a_config_the_artifacts_models_are_calibrated_at_their_training_prices(tmp_path, capsys):
    _, result = _calibrated(capsys, tmp_path / "plain.json", [0.5, 0.45, 0.55])
    router = LearnedRouter.load(ROOT / "models" / "default")
    requests = [view_chat_request({"messages": [{"role": "user", "content": t}]}) for t in _prompts()]
    from router.policy import choose_batch

    pred = router.predict(requests)
    picks = choose_batch(pred, result["willingness_to_pay"])
    assert (picks == pred.column(STRONG)).mean() == pytest.approx(result["share"])
    assert sorted(result["shares"]) == sorted(router.models) and result["profile"] is None


def test_a_share_that_jumps_past_the_target_is_an_error_naming_the_shares_either_side(tmp_path, capsys):
    # One prompt asked 200 times moves 200 of the 236 rows at once: wherever on the knob it moves,
    # its jump spans at least 15 % to 85 %, so no knob gives half of them.
    texts = _prompts() + ["Explain the proof of Fermat's last theorem in detail."] * 200
    data = tmp_path / "dups.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    capsys.readouterr()
    assert main(["calibrate", "--data", str(data), "--model", STRONG, "--share", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "share jumps past 50.0%" in err
    import re

    knobs = re.findall(r"at willingness_to_pay ([0-9.e+-]+)", err)
    assert len(knobs) == 2 and knobs[0] != knobs[1]  # each printed with the digits that give its own share


def test_the_printed_knob_as_written_in_a_config_gives_the_printed_share_on_a_running_gateway(tmp_path, capsys):
    """The whole path: prompts sent after an agent's system prompt and tools (the template), the
    knob pasted into a config, the real `serve` and the `openai` SDK; the log says what it chose."""
    template = {"messages": [{"role": "system", "content": "You are a coding agent. " + "Follow the house rules. " * 400}],
                "tools": [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
                          for i in range(11)],
                "max_completion_tokens": 4096}
    (tmp_path / "template.json").write_text(json.dumps(template))
    config = _config(tmp_path)
    _, result = _calibrated(capsys, tmp_path / "cal.json", [0.45, 0.4, 0.5], "--config", str(config),
                            "--request-template", str(tmp_path / "template.json"))
    raw = yaml.safe_load(config.read_text())
    raw["router"]["profiles"]["team"]["willingness_to_pay"] = float(result["knob"])
    config.write_text(yaml.safe_dump(raw))

    db = f"sqlite:///{tmp_path}/outcomes.sqlite"
    env = {**os.environ, "OPENCLAW_SIM_TIME_SCALE": "0.01", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", "0", "--db", db],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("openclaw-router listening on http://"), line + proc.stderr.read()
        client = openai.OpenAI(base_url=f"{line.split()[3]}/v1", api_key="unused", max_retries=0)
        for text in _prompts():
            client.chat.completions.create(model="team", messages=[*template["messages"], {"role": "user", "content": text}],
                                           tools=template["tools"], max_completion_tokens=4096)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    chosen = read_outcomes(db).chosen_model.tolist()
    assert len(chosen) == 36
    assert chosen.count(STRONG) / 36 == pytest.approx(result["share"])


def test_a_templates_router_limits_and_profile_are_applied_as_the_gateway_applies_them(tmp_path, capsys):
    from router.types import Constraints

    config = _config(tmp_path)
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"model": "team", "router": {"max_cost_usd": 0.0075}}))
    _, result = _calibrated(capsys, tmp_path / "cal.json", [0.2, 0.25, 0.15, 0.3], "--config", str(config),
                            "--request-template", str(template))
    assert result["profile"] == "team"
    loaded = load_config(config)
    profile = loaded.router.profiles["team"].model_copy(update={"willingness_to_pay": result["willingness_to_pay"]})
    router = LearnedRouter.load(find_artifact(loaded.router.artifact, loaded))
    picks = [router.route(view_chat_request({"messages": [{"role": "user", "content": t}]}), catalog=loaded.models,
                          profile=profile, constraints=Constraints(max_cost_usd=0.0075)).model for t in _prompts()]
    assert picks.count(STRONG) / len(picks) == pytest.approx(result["share"])
    # A limit naming a model the catalog lacks, or a template routed elsewhere, is refused as the gateway refuses it.
    template.write_text(json.dumps({"router": {"allowed_models": ["gpt-5"]}}))
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.2", "--config", str(config),
                 "--request-template", str(template)]) == 2
    assert "names unknown models: gpt-5" in capsys.readouterr().err
    template.write_text(json.dumps({"router": {"max_cost": 0.01}}))  # pydantic's own words had been printed
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.2", "--config", str(config),
                 "--request-template", str(template)]) == 2
    said = capsys.readouterr().err
    assert "'router.max_cost' is not a known field (did you mean max_cost_usd?)" in said and "pydantic" not in said
    template.write_text(json.dumps({"model": STRONG}))
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.2", "--config", str(config),
                 "--request-template", str(template)]) == 2
    assert "a named model is not routed" in capsys.readouterr().err
    template.write_text(json.dumps({"model": "team"}))
    assert main(["calibrate", "--data", str(PROMPTS), "--model", STRONG, "--share", "0.2", "--config", str(config),
                 "--profile", "other", "--request-template", str(template)]) == 2
    assert "disagree" in capsys.readouterr().err


def test_a_messages_column_is_taken_whole_and_a_bad_cell_is_named(tmp_path, capsys):
    chats = [json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": t}]) for t in _prompts()]
    data = tmp_path / "chats.csv"
    import pandas as pd

    pd.DataFrame({"messages": [*chats, ""]}).to_csv(data, index=False)  # an empty cell: no request, left out
    _, result = _calibrated(capsys, tmp_path / "cal.json", [0.3, 0.25, 0.35], data=data)
    assert result["requests"] == 36 and result["empty_requests"] == 1
    pd.DataFrame({"messages": [chats[0], "[{not json"]}).to_csv(data, index=False)
    capsys.readouterr()
    assert main(["calibrate", "--data", str(data), "--model", STRONG, "--share", "0.3"]) == 2
    assert "row 1: `messages` is not a JSON list" in capsys.readouterr().err


def test_calibrate_reads_the_column_train_and_eval_read(tmp_path):
    # A file with an empty `prompt` beside a full `query`: calibrating on empty prompts would
    # calibrate a knob on text no request carries.
    import pandas as pd

    from training.calibrate import chat_bodies

    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": [None, None], "query": ["What is 2+2?", "Name a prime."]}).to_parquet(path)
    assert [b["messages"][-1]["content"] for b in chat_bodies(path)] == ["What is 2+2?", "Name a prime."]
    chats = tmp_path / "c.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                 "prompt": "Hi"}) + "\n")
    assert chat_bodies(chats)[0]["messages"][0] == {"role": "system", "content": "Be brief."}  # a chat first, whole
