"""`openclaw-router cache-eval` end to end on a QQP subsample, the split, the threshold rule,
and the verifier's hard rules."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router.cache.features import hard_mismatch, numbers
from service.cli import main
from tests.conftest import require_dataset
from training.qqp import default_pairs, group_split
from training.train_verifier import choose_threshold

needs_qqp = pytest.mark.usefixtures("qqp_pairs")


@pytest.fixture
def qqp_pairs():
    require_dataset(default_pairs())


def test_cache_eval_writes_rows_and_scores(tmp_path, capsys):
    pairs = pd.DataFrame({
        "text_a": ["How can I improve my English speaking skills?", "How many calories are in 2 eggs?",
                   "What is the capital of France?", "How do I convert Celsius to Fahrenheit?", "Where is the Eiffel Tower?"],
        "text_b": ["What is the best way to improve my English speaking skills?", "How many calories are in 3 eggs?",
                   "What is the capital of France?", "How do I convert Fahrenheit to Celsius?", "What is the capital of Germany?"],
        "label": [1, 0, 1, 0, 0],
    })
    src, out = tmp_path / "pairs.parquet", tmp_path / "hits.parquet"
    pairs.to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    result = pd.read_parquet(out)
    assert list(result.columns) == ["row", "hit", "similarity", "score", "reason"] and result["hit"].dtype == bool
    assert result["row"].tolist() == [0, 1, 2, 3, 4]
    assert result["hit"].tolist() == [True, False, True, False, False]
    printed = capsys.readouterr().out
    assert "precision 1.0000" in printed and "recall 1.0000" in printed


def test_cache_eval_without_label_and_bad_input(tmp_path, capsys):
    src, out = tmp_path / "pairs.parquet", tmp_path / "hits.parquet"
    pd.DataFrame({"text_a": ["What is AI?"], "text_b": ["What is AI?"]}).to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["hit"].tolist() == [True]
    assert "precision" not in capsys.readouterr().out
    pd.DataFrame({"question": ["x"]}).to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 2
    assert "text_a" in capsys.readouterr().err
    assert main(["cache-eval", "--pairs", str(tmp_path / "missing.parquet"), "--out", str(out)]) == 2
    capsys.readouterr()
    # --out naming the pairs themselves had replaced them with the verdicts, exit 0
    pd.DataFrame({"text_a": ["What is AI?"], "text_b": ["What is AI?"]}).to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(src)]) == 2
    assert "is the --pairs file" in capsys.readouterr().err and list(pd.read_parquet(src).columns) == ["text_a", "text_b"]
    # a label that is a list (a JSON Lines cell) is refused naming its row, not a traceback
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"text_a": "a?", "text_b": "a?", "label": 1}\n{"text_a": "b?", "text_b": "b?", "label": [1]}\n')
    assert main(["cache-eval", "--pairs", str(jsonl), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'label' must be 0 or 1" in err and "at row 1" in err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_labels_read_alike_in_every_format_and_odd_ones_are_refused(tmp_path, capsys, suffix):
    src, out = tmp_path / f"pairs{suffix}", tmp_path / "hits.parquet"
    frame = pd.DataFrame({"text_a": ["What is the capital of France?", "Where is the Eiffel Tower?", "What is AI?"],
                          "text_b": ["What is the capital of France", "What is the capital of Germany?", "What is AI?"],
                          "label": [True, False, None]})  # CSV writes True/False/"", JSONL true/false/null

    def write(f):
        {".csv": lambda: f.to_csv(src, index=False), ".jsonl": lambda: f.to_json(src, orient="records", lines=True),
         ".parquet": lambda: f.to_parquet(src)}[suffix]()

    write(frame)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision 1.0000  recall 1.0000 (1 pairs without a label not scored)" in printed
    write(frame.assign(label=[0.9, 0.0, 1.0]))  # a soft label is not a 0/1 verdict
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'label' must be 0 or 1" in err and "at row 0" in err


def test_a_nullable_integer_label_with_missing_cells_is_scored_where_it_has_one(tmp_path, capsys):
    src, out = tmp_path / "pairs.parquet", tmp_path / "hits.parquet"
    frame = pd.DataFrame({"text_a": ["What is the capital of France?", "Where is the Eiffel Tower?", "What is AI?"],
                          "text_b": ["What is the capital of France", "What is the capital of Germany?", "What is AI?"],
                          "label": pd.array([1, 0, pd.NA], dtype="Int64")})
    frame.to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert "precision 1.0000  recall 1.0000 (1 pairs without a label not scored)" in capsys.readouterr().out
    # No label at all: nothing to score, although there are hits.
    frame.assign(label=pd.array([pd.NA] * 3, dtype="Int64")).to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 hits" in printed and "no labelled pairs (3 pairs without a label not scored)" in printed
    assert "no hits" not in printed


@needs_qqp
def test_split_keeps_question_groups_apart():
    df = pd.read_parquet(default_pairs()).head(4000)
    split = group_split(df)
    assert set(split) == {"train", "val", "test"}
    part_of: dict[str, str] = {}
    for a, b, s in zip(df["text_a"], df["text_b"], split):
        for t in (a, b):
            assert part_of.setdefault(t, s) == s
    assert (group_split(df.iloc[::-1].reset_index(drop=True)) == split[::-1]).all()


def test_threshold_is_the_loosest_that_holds_precision():
    rng = np.random.default_rng(0)
    label = rng.random(5000) < 0.4
    prob = np.clip(label * 0.35 + rng.random(5000) * 0.65, 0, 1)
    t = choose_threshold(prob, label, 0.95)
    accepted = prob >= t
    assert accepted.sum() >= 150 and label[accepted].mean() >= 0.95
    looser = np.sort(prob[prob < t])[::-1][:200]
    assert all(label[prob >= u].mean() < 0.95 for u in looser)
    with pytest.raises(ValueError):
        choose_threshold(prob, np.zeros_like(label), 0.95)


def test_cross_encoder_selection_uses_the_same_threshold_rule():
    """training/train_cross_encoder.py scores epochs with the rule train_verifier ships."""
    from training.train_cross_encoder import recall_at_precision

    rng = np.random.default_rng(1)
    label = rng.random(5000) < 0.4
    prob = np.clip(label * 0.35 + rng.random(5000) * 0.65, 0, 1)
    served = np.ones_like(label)
    recall, t = recall_at_precision(prob, label, served)
    assert t == choose_threshold(prob, label, 0.95)
    assert recall == pytest.approx((label & (prob >= t)).sum() / label.sum())
    # pairs the cache never scores cannot be accepted, however high their score
    served[np.argsort(-prob)[:100]] = False
    _, t_served = recall_at_precision(prob, label, served)
    assert t_served == choose_threshold(np.where(served, prob, 0.0), label, 0.95)


def test_numbers_and_negations_are_hard_mismatches():
    assert numbers("I have 2 cats and 1,000 fish") == {"2", "1000"}
    assert numbers("two cats") == numbers("2 cats")
    assert hard_mismatch("calories in 2 eggs", "calories in 3 eggs")
    assert hard_mismatch("is it safe", "isn't it safe")
    assert hard_mismatch("why can't I sleep", "why can I sleep")
    assert not hard_mismatch("why can't I sleep", "why cannot I sleep")
    assert not hard_mismatch("calories in two eggs", "calories in 2 eggs")


@pytest.mark.parametrize("question, rewording, other_time", [
    # a rewording names the same span in other words, or none, or one more (on QQP "... today?" /
    # "...?" are often duplicates, so a time word only one side has is left to the models)
    ("What happened in the stock market yesterday?", "What happened in the stock market?",
     "What happened in the stock market today?"),
    ("What are you doing tonight?", "What are you doing this evening?", "What are you doing tomorrow?"),
    ("What were the best movies of last year?", "What were the best movies of the past year?",
     "What were the best movies of this year?"),
    ("What's today's date?", "What is the date today?", "What was yesterday's date?"),
    ("Which stocks should I buy next week?", "Which stocks should I buy?", "Which stocks should I buy this week?"),
    ("What are the plans for next weekend?", "What are the plans for the coming weekend?",
     "What are the plans for last weekend?"),
    ("What was the weather like in London last month?", "What was the weather like in London?",
     "What was the weather like in London yesterday?"),
    ("What would you do if you knew you would die tomorrow?",  # labelled duplicates on QQP
     "If you knew you were going to die tomorrow, what would you like to finish today?",
     "What would you do if you knew you would die next week?"),
])
def test_different_time_words_are_hard_mismatches_and_the_same_or_one_sided_are_not(question, rewording, other_time):
    assert not hard_mismatch(question, rewording) and not hard_mismatch(rewording, question)
    assert hard_mismatch(question, other_time) and hard_mismatch(other_time, question)


def test_swapped_roles_are_hard_mismatches_but_commuting_words_are_not():
    assert hard_mismatch("Do Indian women find Pakistani men attractive?", "Do Pakistani women find Indian men attractive?")
    assert hard_mismatch("What do people in Denver think of Seattle?", "What do people in Seattle think of Denver?")
    assert hard_mismatch("Can I work in India after a degree from abroad?", "Can I work abroad after a degree from India?")
    # adjacent words and words joined by "and" / "or" trade places without changing the question
    assert not hard_mismatch("What is the best diet for muscle building?", "What is the best diet for building muscle?")
    assert not hard_mismatch("What is the difference between real gas and ideal gas?",
                             "What is the difference between ideal gas and real gas?")
    assert not hard_mismatch("Should I learn Java programming or Python programming?",
                             "Should I learn Python programming or Java programming?")
    assert not hard_mismatch("Do Indian women find Pakistani men attractive?", "Do Indian women find Pakistani men attractive")


def test_the_per_text_memo_keeps_question_sized_texts_only():
    from router.cache.features import words

    document = "Summarise this report. " + "The quarterly numbers rose again. " * 2000
    held = words.cache_info().currsize
    assert words(document) == ("summarise", "this", "report") + ("the", "quarterly", "numbers", "rose", "again") * 2000
    assert words.cache_info().currsize == held  # a pasted document is split again, not held
    words("How would a zebra reset the password of account 7316?")  # a question no other test asks
    assert words.cache_info().currsize == held + 1


def test_a_word_whose_capital_is_its_meaning_is_a_hard_mismatch_but_a_names_case_is_not():
    assert hard_mismatch("How do I say thank you in Polish?", "How do I say thank you in polish?")
    assert hard_mismatch("Where can I buy polish for my shoes?", "Where can I buy Polish for my shoes?")
    assert hard_mismatch("Is it cheap to fly to Turkey?", "Is it cheap to fly a turkey?")
    # acronyms and a month that spell a common word (served as one question, similarity 1.000)
    for cased, lower in (("What is AIDS?", "What is aids?"), ("What is SAD?", "What is sad?"), ("What is May?", "What is may?")):
        assert hard_mismatch(cased, lower) and hard_mismatch(lower, cased)
    assert not hard_mismatch("Why is he so sad?", "why is he so sad")
    # askers write names in lower case all the time; and a title says nothing by its capitals
    assert not hard_mismatch("What is fulfillment by Amazon?", "What is fulfillment by amazon?")
    assert not hard_mismatch("How To Polish Shoes", "how to polish shoes")
    assert not hard_mismatch("Polish is hard. Why?", "polish is hard. why?")


def test_cache_eval_reads_csv_and_jsonl_like_parquet(tmp_path, capsys):
    pairs = pd.DataFrame({
        "text_a": ["What is the capital of France?", "How many calories are in 2 eggs?", "NA"],
        "text_b": ["What is the capital of France?", "How many calories are in 3 eggs?", "NA"],
        "label": [1, 0, 1],
    })
    results = {}
    for name, write in (("pairs.parquet", pairs.to_parquet), ("pairs.csv", lambda p: pairs.to_csv(p, index=False)),
                        ("pairs.jsonl", lambda p: pairs.to_json(p, orient="records", lines=True))):
        src, out = tmp_path / name, tmp_path / f"{name}.hits.parquet"
        write(src)
        assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
        results[name] = pd.read_parquet(out)["hit"].tolist()
        assert "precision" in capsys.readouterr().out
    assert results["pairs.csv"] == results["pairs.jsonl"] == results["pairs.parquet"] == [True, False, True]
    (tmp_path / "pairs.xlsx").write_text("x")
    assert main(["cache-eval", "--pairs", str(tmp_path / "pairs.xlsx"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "unsupported file type" in capsys.readouterr().err


@pytest.mark.parametrize("content,says", [("text_a,text_b,label\n", "empty"),
                                          ("text_a,text_b\nx,y\nx,y,z\n", "cannot read file")])
def test_cache_eval_names_an_empty_or_unreadable_pairs_file(tmp_path, capsys, content, says):
    (tmp_path / "pairs.csv").write_text(content)
    assert main(["cache-eval", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "hits.parquet")]) == 2
    err = capsys.readouterr().err
    assert says in err and "pairs.csv" in err and "Traceback" not in err


def test_pairs_with_a_missing_text_are_not_hits_and_a_disabled_cache_serves_nothing(tmp_path, capsys):
    pairs = pd.DataFrame({"text_a": ["", None, "What is AI?", "What is AI?"],
                          "text_b": ["", None, "What is AI?", "  "], "label": [0, 0, 1, 0]})
    src, out = tmp_path / "pairs.parquet", tmp_path / "hits.parquet"
    pairs.to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["hit"].tolist() == [False, False, True, False]
    printed = capsys.readouterr().out
    assert "3 pairs with an empty or missing text were not looked up" in printed and "precision 1.0000" in printed

    config = tmp_path / "off.yaml"
    config.write_text("providers: {sim: {kind: simulated, base_url: 'simulated://'}}\n"
                      "models: [{name: claude-v1, provider: sim, price: {input_per_1m: 1, output_per_1m: 1}}]\n"
                      "cache: {enabled: false}\n")
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out), "--config", str(config)]) == 0
    assert not pd.read_parquet(out)["hit"].any()
    printed = capsys.readouterr().out
    assert "cache.enabled: false" in printed and "precision n/a (no hits)" in printed


def test_qqps_own_column_names_stand_for_the_canonical_ones(tmp_path, capsys):
    same, other = "What is the capital of France?", "How many calories are in 3 eggs?"
    src, out = tmp_path / "qqp.csv", tmp_path / "hits.parquet"
    pd.DataFrame({"id": [0, 1], "qid1": [1, 3], "qid2": [2, 4], "question1": [same, "How many calories are in 2 eggs?"],
                  "question2": [same, other], "is_duplicate": [1, 0]}).to_csv(src, index=False)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["hit"].tolist() == [True, False]
    assert "precision 1.0000  recall 1.0000" in capsys.readouterr().out
    # A file with both names is read by the canonical ones.
    pd.DataFrame({"text_a": [same], "text_b": [same], "question1": [same], "question2": [other]}).to_csv(src, index=False)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["hit"].tolist() == [True]


def test_a_pair_the_gateway_would_not_cache_is_no_hit(tmp_path, capsys):
    # The same question twice is an exact hit, unless it asks about the moment of asking: the
    # gateway neither stores nor serves those, and cache-eval answers for the gateway.
    pairs = pd.DataFrame({"text_a": ["What is AI?", "What time is it right now?"],
                          "text_b": ["What is AI?", "What time is it right now?"]})
    src, out = tmp_path / "pairs.parquet", tmp_path / "hits.parquet"
    pairs.to_parquet(src)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    assert pd.read_parquet(out)["hit"].tolist() == [True, False]
