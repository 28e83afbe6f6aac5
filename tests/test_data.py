"""Outcome-table loading and validation: wide files (parquet/CSV/JSONL), prices, long logs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.data import concat_outcomes, datasets_dir, load_outcomes, load_prices, long_to_outcomes
from tests.conftest import require_dataset

DATASETS = datasets_dir()


def wide_frame(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "uid": [f"u{i}" for i in range(n)],
        "prompt": [f"question number {i}?" for i in range(n)],
        "task": ["a", "b"] * (n // 2),
        "quality__small": rng.integers(0, 2, n).astype(float),
        "quality__big": np.ones(n),
        "cost_usd__small": np.full(n, 1e-5),
        "cost_usd__big": np.full(n, 1e-3),
    })


@pytest.mark.parametrize("ext", ["parquet", "csv", "tsv", "csv.gz", "jsonl", "json"])
def test_wide_formats_load_alike(tmp_path, ext):
    df = wide_frame()
    path = tmp_path / f"t.{ext}"
    {"parquet": lambda: df.to_parquet(path), "csv": lambda: df.to_csv(path, index=False),
     "tsv": lambda: df.to_csv(path, index=False, sep="\t"), "csv.gz": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "json": lambda: df.to_json(path, orient="records")}[ext]()
    t = load_outcomes(path)
    assert t.models == ["small", "big"]
    assert t.quality.shape == (6, 2) and t.cost.shape == (6, 2)
    np.testing.assert_allclose(t.quality[:, 0], df["quality__small"])
    assert t.texts[1] == "question number 1?"
    assert list(t.task[:2]) == ["a", "b"]
    assert (t.input_tokens >= 1).all()
    assert set(t.prices) == {"small", "big"}


def test_text_column_default_order_and_override(tmp_path):
    df = wide_frame().rename(columns={"prompt": "query"})
    df["other"] = "x"
    df.to_parquet(tmp_path / "q.parquet")
    assert load_outcomes(tmp_path / "q.parquet").texts[0] == "question number 0?"
    assert load_outcomes(tmp_path / "q.parquet", text_column="other").texts[0] == "x"


def _error(tmp_path, df: pd.DataFrame, name: str = "bad.parquet", **kw) -> str:
    path = tmp_path / name
    df.to_parquet(path)
    with pytest.raises(ValueError) as exc:
        load_outcomes(path, **kw)
    msg = str(exc.value)
    assert str(path) in msg
    return msg


def test_missing_text_column_names_file_and_columns(tmp_path):
    msg = _error(tmp_path, wide_frame().drop(columns=["prompt"]))
    assert "prompt" in msg and "query" in msg and "--text-column" in msg


@pytest.mark.parametrize("name", ["prompt_full", "text", "question"])
def test_a_file_with_only_a_later_default_text_column_needs_no_flag(tmp_path, name):
    # The shared datasets name the prompt with its exemplars `prompt_full`: a file carrying only
    # that had needed --text-column.
    df = wide_frame().rename(columns={"prompt": name})
    df.to_parquet(tmp_path / "t.parquet")
    assert load_outcomes(tmp_path / "t.parquet").texts[2] == "question number 2?"


@pytest.mark.parametrize("name, orient, lines", [
    ("array.jsonl", "records", False), ("lines.json", "records", True), ("array.jsonl.gz", "records", False),
    ("columns.json", "columns", False), ("pretty.json.gz", "pretty", False)])
def test_json_is_read_by_what_it_holds_not_its_name(tmp_path, name, orient, lines):
    # A JSON array saved as .jsonl had crashed on its integer column names (a traceback); pandas'
    # own orients, written by a plain `to_json`, are one document however they begin.
    path = tmp_path / name
    frame = wide_frame()
    if orient == "pretty":
        frame.to_json(path, indent=2)  # pandas' default orient, columns, as a person would print it
    else:
        frame.to_json(path, orient=orient, lines=lines)
    t = load_outcomes(path)
    assert t.models == ["small", "big"] and t.texts[1] == "question number 1?"


def test_explicit_text_column_missing(tmp_path):
    assert "'question'" in _error(tmp_path, wide_frame(), text_column="question")


def test_nan_label_names_column(tmp_path):
    df = wide_frame()
    df.loc[3, "quality__big"] = np.nan
    msg = _error(tmp_path, df)
    assert "quality__big" in msg and "row 3" in msg


def test_label_out_of_range(tmp_path):
    df = wide_frame()
    df.loc[0, "quality__small"] = 2.0
    assert "quality__small" in _error(tmp_path, df)


def test_model_without_cost_names_column(tmp_path):
    assert "cost_usd__big" in _error(tmp_path, wide_frame().drop(columns=["cost_usd__big"]))


def test_label_off_the_range_by_rounding_is_clipped_and_further_out_names_row_and_value(tmp_path):
    df = wide_frame()
    df.loc[3, "quality__big"], df.loc[2, "quality__small"] = 1.0 + 1e-12, -1e-12
    df.to_parquet(tmp_path / "eps.parquet")
    t = load_outcomes(tmp_path / "eps.parquet")
    assert t.quality[3, 1] == 1.0 and t.quality[2, 0] == 0.0
    df.loc[4, "quality__big"] = 1.01
    msg = _error(tmp_path, df)
    assert "'quality__big'" in msg and "row 4" in msg and "1.01" in msg
    # The outcome log alike, its row counted before the unlabelled rows go.
    log = pd.DataFrame({"request_id": ["r0", "r1", "r2"], "text": ["a", "b", "c"], "model": ["m", "m", "m"],
                        "quality": [None, 1 + 1e-9, -0.5], "cost_usd": 1e-4, "latency_s": 1.0, "output_tokens": 5,
                        "input_tokens": 5})
    with pytest.raises(ValueError, match=r"log\.sqlite.*'quality'.*row 2: -0\.5"):
        long_to_outcomes(log, path="log.sqlite")
    assert long_to_outcomes(log.head(2), path="log.sqlite").quality[0, 0] == 1.0


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_true_false_words_as_labels_read_as_1_and_0_in_every_format(tmp_path, ext):
    df = wide_frame()
    df["quality__small"] = df["quality__small"].map({1.0: "True", 0.0: "false"})
    df["quality__big"] = " yes"
    path = tmp_path / f"t.{ext}"
    {"parquet": lambda: df.to_parquet(path), "csv": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[ext]()
    t = load_outcomes(path)
    np.testing.assert_array_equal(t.quality[:, 0], wide_frame()["quality__small"])
    assert (t.quality[:, 1] == 1.0).all()
    df.loc[5, "quality__big"] = "maybe"
    msg = _error(tmp_path, df)
    assert "'quality__big'" in msg and "row 5: 'maybe'" in msg


def test_nan_cost_names_column_and_row(tmp_path):
    df = wide_frame()
    df.loc[1, "cost_usd__small"] = np.nan
    msg = _error(tmp_path, df)
    assert "cost_usd__small" in msg and "row 1" in msg


def test_negative_cost_names_column_and_row(tmp_path):
    df = wide_frame()
    df.loc[2, "cost_usd__big"] = -1.0
    err = _error(tmp_path, df)
    assert "cost_usd__big" in err and "negative" in err and "row 2" in err


def test_no_quality_columns(tmp_path):
    assert "quality__" in _error(tmp_path, wide_frame().drop(columns=["quality__small", "quality__big"]))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("prompt,quality__a,cost_usd__a\n")
    with pytest.raises(ValueError, match="empty"):
        load_outcomes(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"t\.xlsx.*unsupported file type"):
        load_outcomes(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_outcomes("/nonexistent/table.parquet")


def test_no_costs_needs_prices(tmp_path):
    df = wide_frame().drop(columns=["cost_usd__small", "cost_usd__big"])
    msg = _error(tmp_path, df)
    assert "--prices" in msg and "cost_usd__small" in msg
    prices = tmp_path / "models.json"
    # The shared datasets' models.json spelling is accepted as it is.
    prices.write_text(json.dumps({"small": {"input_price_usd_per_1M": 0.2, "output_price_usd_per_1M": 0.4},
                                  "big": {"input_per_1m": 10, "output_per_1m": 30}}))
    t = load_outcomes(tmp_path / "bad.parquet", prices=prices)
    assert t.cost is not None and (t.cost[:, 1] > t.cost[:, 0]).all()
    assert t.prices["big"].output_per_1m == 30
    # A models.json beside the table (as the shared datasets ship) is used when no prices are given.
    beside = load_outcomes(tmp_path / "bad.parquet")
    np.testing.assert_allclose(beside.cost, t.cost)


def test_prices_file_errors(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"a": {"input_per_1m": 1}}))
    with pytest.raises(ValueError, match="'a'.*output_per_1m"):
        load_prices(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="p.json"):
        load_prices(p)
    for bad in ([1], "abc", -1, True, None):
        p.write_text(json.dumps({"m": {"input_per_1m": 1, "output_per_1m": bad}}))
        with pytest.raises(ValueError, match=r"p.json: model 'm'"):
            load_prices(p)


def test_responses_file_gives_output_tokens(tmp_path):
    df = wide_frame()
    df.to_parquet(tmp_path / "t_train.parquet")
    pd.DataFrame({"uid": df["uid"], "response__small": ["x" * 40] * 6, "response__big": ["y" * 400] * 6}).to_parquet(
        tmp_path / "t_train_responses.parquet")
    t = load_outcomes(tmp_path / "t_train.parquet")
    np.testing.assert_allclose(t.output_tokens[:, 0], 10)
    np.testing.assert_allclose(t.output_tokens[:, 1], 100)


def test_a_uid_repeated_in_the_responses_file_keeps_the_files_rows(tmp_path):
    df = wide_frame()
    df.to_parquet(tmp_path / "t_train.parquet")
    responses = pd.DataFrame({"uid": df["uid"], "response__small": ["x" * 40] * 6, "response__big": ["y" * 400] * 6})
    pd.concat([responses, responses.iloc[:2]]).to_parquet(tmp_path / "t_train_responses.parquet")
    t = load_outcomes(tmp_path / "t_train.parquet")
    assert len(t) == len(df) and list(t.texts) == list(df["prompt"])


def test_long_layout_pivots_with_unobserved_cells():
    df = pd.DataFrame({
        "request_id": ["r1", "r1", "r2", "r3"],
        "text": ["hello", "hello", None, "bye"],
        "model": ["a", "b", "a", "b"],
        "quality": [1.0, 0.0, 0.5, None],  # r3 has no feedback yet
        "cost_usd": [1e-4, 2e-3, 1e-4, 2e-3],
        "latency_s": [0.5, 1.5, 0.4, 1.0],
        "output_tokens": [10, 20, 12, 30],
        "input_tokens": [5, 5, 7, 3],
    })
    t = long_to_outcomes(df, path="log.sqlite")
    assert t.models == ["a", "b"] and len(t) == 2
    np.testing.assert_array_equal(t.quality, [[1.0, 0.0], [0.5, np.nan]])
    assert t.texts == ["hello", ""]
    assert t.latency[0, 1] == 1.5 and t.input_tokens[1] == 7
    with pytest.raises(ValueError, match="log.sqlite.*'latency_s'"):
        long_to_outcomes(df.drop(columns=["latency_s"]), path="log.sqlite")


def test_concat_tables_union_of_models(tmp_path):
    a = wide_frame()
    b = wide_frame().rename(columns={"quality__big": "quality__other", "cost_usd__big": "cost_usd__other"})
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    t = concat_outcomes([load_outcomes(tmp_path / "a.parquet"), load_outcomes(tmp_path / "b.parquet")])
    assert t.models == ["small", "big", "other"] and len(t) == 12
    assert np.isnan(t.quality[6:, 1]).all() and np.isnan(t.quality[:6, 2]).all()


def test_shared_routerbench_loads():
    path = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"
    if not path.exists():
        require_dataset(path)
    t = load_outcomes(path)
    assert t.quality.shape == (len(t), 11) and t.output_tokens is not None
    # Cost is modelled on the full prompt (exemplars included), the embedding on the query.
    assert t.input_tokens.mean() > np.mean([len(x) for x in t.texts]) / 4
    implied = t.prices["gpt-4-1106-preview"]
    assert 8 < implied.input_per_1m < 12 and 25 < implied.output_per_1m < 35


def test_a_tables_own_prices_fill_in_what_prices_leave_out(tmp_path):
    from training.data import ModelPrice

    df = wide_frame().drop(columns=["cost_usd__small", "cost_usd__big"])
    (tmp_path / "models.json").write_text(json.dumps({"small": {"input_per_1m": 1, "output_per_1m": 2},
                                                      "big": {"input_per_1m": 10, "output_per_1m": 20}}))
    df.to_parquet(tmp_path / "t.parquet")
    # --prices names another table's model (several tables stacked): the table's models.json still prices its own
    t = load_outcomes(tmp_path / "t.parquet", prices={"other": ModelPrice(5, 5), "big": ModelPrice(30, 60)})
    assert t.prices["small"].input_per_1m == 1 and t.prices["big"].input_per_1m == 30  # an explicit price wins


def test_csv_text_that_reads_like_a_missing_value_stays_text(tmp_path):
    df = wide_frame(4)
    df["prompt"] = ["NA", "null", "None", "007"]
    df.to_csv(tmp_path / "t.csv", index=False)
    assert load_outcomes(tmp_path / "t.csv").texts == ["NA", "null", "None", "007"]


@pytest.mark.parametrize("name,content", [("empty.csv", ""), ("ragged.csv", "prompt,quality__a\nx,1\ny,1,2,3\n"),
                                          ("broken.jsonl", '{"prompt": "x"}\n{"prompt": \n')])
def test_unreadable_files_are_named(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=name):
        load_outcomes(tmp_path / name)


def test_a_missing_token_count_is_estimated_from_the_text(tmp_path):
    df = wide_frame(4)
    df["input_tokens"] = [10.0, np.nan, 30.0, np.nan]
    df.to_parquet(tmp_path / "t.parquet")
    tokens = load_outcomes(tmp_path / "t.parquet").input_tokens
    assert tokens[0] == 10 and tokens[2] == 30 and tokens[1] == tokens[3] == 5  # "question number 1?" is 18 characters


def test_a_missing_full_prompt_is_estimated_from_the_text(tmp_path):
    df = wide_frame(4)
    df["prompt_full"] = ["x" * 400, None, "", "y" * 40]
    df.to_parquet(tmp_path / "t.parquet")
    tokens = load_outcomes(tmp_path / "t.parquet").input_tokens
    assert tokens[0] == 100 and tokens[3] == 10 and tokens[1] == tokens[2] == 5  # the routed text's 18 characters


def _logged(caplog, level: str) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelname == level)


def test_a_table_with_neither_costs_nor_prices_is_priced_flat_and_says_so(tmp_path, caplog):
    from training.data import FLAT_PRICE_PER_1M

    # RouterDC's layout: no cost_usd__ columns, no models.json beside the file.
    df = wide_frame().drop(columns=["cost_usd__small", "cost_usd__big"])
    df.to_parquet(tmp_path / "rdc.parquet")
    with caplog.at_level("WARNING"):
        t = load_outcomes(tmp_path / "rdc.parquet", flat_price=True)
    assert {m: (p.input_per_1m, p.output_per_1m) for m, p in t.prices.items()} == {
        "small": (FLAT_PRICE_PER_1M, FLAT_PRICE_PER_1M), "big": (FLAT_PRICE_PER_1M, FLAT_PRICE_PER_1M)}
    np.testing.assert_array_equal(t.cost[:, 0], t.cost[:, 1])  # no answer lengths: one cost per prompt
    said = _logged(caplog, "WARNING")
    assert "rdc.parquet" in said and "priced alike" in said and "every model costs the same" in said and "--prices" in said
    # With answers, the lengths are all that tells models apart, and the warning says that instead.
    caplog.clear()
    pd.DataFrame({"uid": df["uid"], "response__small": ["x" * 40] * 6, "response__big": ["y" * 400] * 6}).to_parquet(
        tmp_path / "rdc_responses.parquet")
    with caplog.at_level("WARNING"):
        t = load_outcomes(tmp_path / "rdc.parquet", flat_price=True)
    assert (t.cost[:, 1] > t.cost[:, 0]).all()
    assert "only by their answers' lengths" in _logged(caplog, "WARNING")


def test_prices_for_some_models_of_a_table_without_costs_is_an_error(tmp_path):
    from training.data import ModelPrice

    df = wide_frame().drop(columns=["cost_usd__small", "cost_usd__big"])
    msg = _error(tmp_path, df, prices={"big": ModelPrice(10, 30)}, flat_price=True)
    assert "'small'" in msg and "--prices" in msg and "['big']" in msg


def test_an_empty_prompt_column_gives_way_to_query_and_the_choice_is_logged(tmp_path, caplog):
    df = wide_frame()
    df["query"] = df["prompt"]
    df["prompt"] = None
    df.to_parquet(tmp_path / "t.parquet")
    with caplog.at_level("INFO"):
        t = load_outcomes(tmp_path / "t.parquet")
    assert t.texts[1] == "question number 1?"
    assert "'prompt' holds no text" in _logged(caplog, "WARNING") and "embedding column 'query'" in _logged(caplog, "INFO")
    # Named, a column is used as it is.
    assert load_outcomes(tmp_path / "t.parquet", text_column="prompt").texts == [""] * 6


def test_a_row_without_a_prompt_is_routed_on_its_query_and_the_count_is_logged(tmp_path, caplog):
    df = wide_frame()
    df["query"] = [f"query {i}" for i in range(6)]
    df["prompt"] = ["only prompt", None, "", "  ", "another", None]
    df.to_parquet(tmp_path / "t.parquet")
    with caplog.at_level("WARNING"):
        t = load_outcomes(tmp_path / "t.parquet")
    assert t.texts == ["only prompt", "query 1", "query 2", "query 3", "another", "query 5"]
    warned = _logged(caplog, "WARNING")
    assert warned.count("4 of 6 rows have no text in column 'prompt'") == 1 and "'query': 4" in warned
    # Named, a column is used alone.
    assert load_outcomes(tmp_path / "t.parquet", text_column="prompt").texts[1] == ""


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_a_chat_column_is_routed_on_its_last_user_turn_and_billed_whole(tmp_path, ext):
    from router.request_view import view_chat_request

    system = {"role": "system", "content": "You are terse. " * 50}
    # Parquet stores one type per field: there every content is a string; JSON Lines may mix in a parts list.
    last = (lambda i: f"follow-up number {i}?") if ext == "parquet" else (lambda i: [{"type": "text", "text": f"follow-up number {i}?"}])
    chats = [[system, {"role": "user", "content": "first question?"}, {"role": "assistant", "content": "an answer"},
              {"role": "user", "content": last(i)}] for i in range(6)]
    df = wide_frame().drop(columns=["prompt"]).assign(prompt=chats)
    path = tmp_path / f"chats.{ext}"
    df.to_parquet(path) if ext == "parquet" else df.to_json(path, orient="records", lines=True)
    t = load_outcomes(path)
    assert t.texts[3] == "follow-up number 3?"  # what the gateway embeds, not the list's repr
    assert t.input_tokens[3] == view_chat_request({"messages": chats[3]}).input_tokens > 150  # the history is billed


def test_a_csv_chat_column_of_json_text_is_read_as_the_chat(tmp_path):
    from router.request_view import view_chat_request

    chat = [{"role": "system", "content": "You are terse. " * 50}, {"role": "user", "content": "first question?"},
            {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "follow-up?"}]
    cells = [json.dumps(chat),
             json.dumps([{"role": "user", "content": [{"type": "text", "text": "parts?"}]}]),
             '["not", "a chat"]',  # JSON, but no chat: a prompt as it is
             '[{"role": "user", "content": "cut off"',  # not all of it JSON
             '[{"name": "x", "content": "no role"}]',
             "plain question?"]
    df = wide_frame().drop(columns=["prompt"]).assign(messages=cells)
    df.to_csv(tmp_path / "chats.csv", index=False)
    t = load_outcomes(tmp_path / "chats.csv")
    assert t.texts == ["follow-up?", "parts?", *cells[2:]]
    assert t.input_tokens[0] == view_chat_request({"messages": chat}).input_tokens > 150  # the history is billed


def test_prices_for_a_file_given_prices_and_a_routers_training_prices(tmp_path):
    from training.data import ModelPrice, prices_for_file

    trained = {"small": (0.1, 0.2), "big": (1.0, 2.0)}
    bare = ["prompt", "quality__small", "quality__big"]
    assert prices_for_file(bare, trained) == {"small": ModelPrice(0.1, 0.2), "big": ModelPrice(1.0, 2.0)}
    assert prices_for_file(bare, {}) is None  # nothing from the router: the loader's own fallbacks
    costed = bare + ["cost_usd__big"]
    assert prices_for_file(costed, trained) is None  # recorded costs are the scale
    # a cost column of a model the command drops does not make the file a costed one
    assert prices_for_file(costed, trained, keep=lambda m: m != "big") == prices_for_file(bare, trained)
    given = tmp_path / "prices.json"
    given.write_text(json.dumps({"small": {"input_per_1m": 3, "output_per_1m": 4}}))
    assert prices_for_file(costed, trained, str(given)) == {"small": ModelPrice(3.0, 4.0)}  # --prices always wins


def test_a_frame_already_read_is_loaded_without_reading_the_file_again(tmp_path, monkeypatch):
    import training.data as data

    wide_frame().to_parquet(tmp_path / "t.parquet")
    expected = load_outcomes(tmp_path / "t.parquet")
    frame = data.read_frame(tmp_path / "t.parquet")
    monkeypatch.setattr(data, "read_frame", lambda *a, **k: pytest.fail("read again"))
    t = load_outcomes(tmp_path / "t.parquet", frame=frame)
    assert t.texts == expected.texts and t.models == expected.models
    np.testing.assert_array_equal(t.cost, expected.cost)


def test_empty_cells_are_told_apart_from_values_alike_everywhere():
    from training.texts import is_blank, is_missing

    for empty in (None, np.nan, float("nan"), pd.NA, pd.NaT, np.float32("nan")):
        assert is_missing(empty) and is_blank(empty)
    for value in ("", " \n", "NA", 0, 0.0, False, [], {}, [None], np.array([np.nan])):
        assert not is_missing(value)  # lists and dicts are values, even empty or of NaNs
    assert is_blank("") and is_blank(" \t\n") and not is_blank("NA") and not is_blank(0) and not is_blank([])
    # the outcome log: an empty text or token count of any kind is a missing one, not "<NA>" or an error
    log = pd.DataFrame({"request_id": ["r1", "r2"], "text": pd.array([pd.NA, "hi"], dtype="string"), "model": ["a", "a"],
                        "quality": [1.0, 0.0], "cost_usd": [1e-4, 1e-4], "latency_s": [0.5, 0.5],
                        "output_tokens": [10, 10], "input_tokens": pd.array([pd.NA, 7], dtype="Int64")})
    t = long_to_outcomes(log)
    assert t.texts == ["", "hi"] and list(t.input_tokens) == [1.0, 7.0]
