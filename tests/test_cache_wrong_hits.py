"""Wrong answers a review found a running gateway's cache serving: a text to work on that differs
by its final mark, a name against the common noun it spells, questions about the moment of asking,
and a streamed tool-call replay that opened with empty text instead of null. The shipped verifier
and the real MiniLM embedder."""
from __future__ import annotations

import pytest

from router.cache.features import hard_mismatch
from router.cache.policy import asks_about_now, request_cacheable
from router.cache.same_question import plain_form
from service.sse import completion_to_chunks
from tests.test_cache_core import body, embed, get, new_cache, put, verifier  # noqa: F401 (fixtures)


@pytest.mark.parametrize("cached, asked", [
    # The final mark is part of the text handed over: a hit with probability 1 before, past the models.
    ("Reverse this text character by character: hello world", "Reverse this text character by character: hello world."),
    ("Add the missing punctuation: how are you", "Add the missing punctuation: how are you?"),
    ("Is the following sentence correctly punctuated: I am happy", "Is the following sentence correctly punctuated: I am happy."),
    ("How many characters are in this text: hello world", "How many characters are in this text: hello world?"),
    ("Fix the punctuation of this line:\nhello world", "Fix the punctuation of this line:\nhello world!"),
    ('Is "I am happy." punctuated correctly?', 'Is "I am happy" punctuated correctly?'),
    # A name and the common noun it spells: the verifier accepted these (0.904 for Python).
    ("What is Python?", "What is a python?"),
    ("What is Oracle?", "What is an oracle?"),
    ("What is Docker?", "What is a docker?"),
    ("What is Tesla worth?", "What is a tesla worth?"),
    ("What is Swift?", "What is a swift?"),
    ("What is Ruby?", "What is a ruby?"),
    ("What is Spark?", "What is a spark?"),
    # Opposite degrees, ordinals, an action and its undoing: the verifier scored most of these
    # 0.52-0.84 before, against 0.87, one reworded sentence from a wrong hit.
    ("What is the cheapest way to travel to Japan?", "What is the most expensive way to travel to Japan?"),
    ("Who was the first man on the moon?", "Who was the second man on the moon?"),
    ("What is the third largest city in France?", "What is the second largest city in France?"),
    ("What is the fastest animal?", "What is the slowest animal?"),
    ("What is the warmest month in London?", "What is the coldest month in London?"),
    ("How do I increase my credit score?", "How do I lower my credit score?"),
    ("What is the deepest lake in the world?", "What is the shallowest lake in the world?"),
    ("What is the largest planet in the solar system?", "What is the smallest planet in the solar system?"),
    ("When did World War 1 start?", "When did World War 1 end?"),
    ("How do I install Python on Windows?", "How do I uninstall Python on Windows?"),
    ("Which programming language should I learn first?", "Which programming language should I learn next?"),  # a test-split hit
    # One side asks for more: the other's answer answers part of it. The first was a test-split hit.
    ("What was life like before the Industrial Revolution?", "What was life like before and after the Industrial Revolution?"),
    ("What are the cons of nuclear power?", "What are the pros and cons of nuclear power?"),
    ("How does a trebuchet work?", "How does a trebuchet work and how is it built?"),
    ("Where can I sell used books in Bangalore?", "Where can I sell or buy used books in Bangalore?"),
])
def test_another_question_written_almost_alike_is_refused(verifier, embed, cached, asked):  # noqa: F811
    assert hard_mismatch(cached, asked) and hard_mismatch(asked, cached)
    for first, second in ((cached, asked), (asked, cached)):
        cache = new_cache(verifier)
        put(cache, embed, body(first), "cached answer")
        assert get(cache, embed, body(second)) is None


@pytest.mark.parametrize("cached, asked", [
    ("What is the capital of France", "What is the capital of France?"),
    ('What does "carpe diem" mean', 'What does "carpe diem" mean?'),  # the mark follows the quote
    ("How do I learn Python?", "how do I learn python?"),  # case alone: the same question
    # The verifier doubted these (0.19, 0.33, 0.29 against a threshold of 0.87): a review saw them
    # miss in a running gateway.
    ("What is 17 * 23?", "what is 17 * 23?"),
    ("What is the capital of France?", "what is the capital of france"),
    ("What is 17 * 23?", "What's 17 * 23?"),
    ("What is 2 + 2?", "what’s 2 + 2?"),  # a typographic apostrophe
    ("Why don't cats like water?", "Why do not cats like water?"),
    ("I can't log in, what should I do?", "I cannot log in, what should I do?"),
    ("Where're you from?", "Where are you from?"),
    ("Is it safe to swim after eating?", "is it safe to swim after eating?"),  # a short word starting the question
])
def test_the_same_question_with_another_final_mark_case_or_contraction_hits(verifier, embed, cached, asked):  # noqa: F811
    assert not hard_mismatch(cached, asked) and not hard_mismatch(asked, cached)
    for first, second in ((cached, asked), (asked, cached)):
        cache = new_cache(verifier)
        put(cache, embed, body(first), "cached answer")
        hit = get(cache, embed, body(second))
        assert hit is not None and hit.kind == "semantic-hit" and hit.probability == 1.0


@pytest.mark.parametrize("cached, asked", [
    ("Is IT a good career?", "is it a good career?"),  # an acronym against a word: left to the verifier
    ("What is 17 * 23?", "What is 17 * 23"),  # a mark after a number may be the question: kept
    ("What is John's job?", "What is John is job?"),  # a possessive "'s" is not "is"
    ("How do I fix Rust?", "How do I fix rust?"),  # a name's case: a hard rule refuses it
    # A review found these served with probability 1 by the first version of the plain form: a
    # contraction on one side kept the rules that compare the same words from reading them, and
    # the case of a letter, a unit or a password, or a word talked about, was written away.
    ("What's ssh -L for?", "What is ssh -l for?"),
    ("What's the reverse of this text: Hello World", "What is the reverse of this text: hello world"),
    ("What's Mercury made of?", "What is mercury made of?"),
    ("How many letters are in cannot?", "How many letters are in can't?"),
    ("Count the letters in: don't", "Count the letters in: do not"),
    ("What is the ASCII code of A?", "What is the ASCII code of a?"),
    ("Convert 5 Mb to MB", "Convert 5 mb to MB"),
    ("Is Hunter2 a strong password?", "Is hunter2 a strong password?"),
    # A second review: a contraction talked about, not used; a capital that both careful askers
    # wrote on purpose (Java's Boolean, a text handed over without a colon); a typographic quote
    # that is the question, not an apostrophe.
    ("Can I use can't in formal writing?", "Can I use cannot in formal writing?"),
    ("Is cannot one word or two?", "Is can not one word or two?"),
    ("Can a Boolean be null in Java?", "Can a boolean be null in Java?"),
    ("What is the MD5 hash of Hello?", "What is the MD5 hash of hello?"),
    ("How do I type ’ on a Mac?", "How do I type ' on a Mac?"),
    # Words that trade places around "or" / "and" where the order is the question: a sequence,
    # numbers, a direction, roles, a text handed over, a careful capital. Two reviews found a
    # shortcut serving "the same alternatives in the other order" with probability 1 giving these
    # (and many more) the other question's answer; it was not kept (docs/CACHE.md).
    ("Should I peel and boil potatoes?", "Should I boil and peel potatoes?"),
    ("What is the difference of 7 and 3?", "What is the difference of 3 and 7?"),
    ("Is 5 or 3 bigger?", "Is 3 or 5 bigger?"),
    ("Convert dollars to rupees or euros", "Convert euros or dollars to rupees"),
    ("Why do men cheat and women forgive?", "Why do women cheat and men forgive?"),
    ("Sort these words: pears or apples", "Sort these words: apples or pears"),
    ("Can a Boolean or an int be null in Java?", "Can an int or a boolean be null in Java?"),
    ("Did Brazil beat Germany or France?", "Did France or Brazil beat Germany?"),
    ("Can I eat raw fish or eggs?", "Can I eat eggs or raw fish?"),
    ("After comparing recipes, should I peel and boil potatoes?", "After comparing recipes, should I boil and peel potatoes?"),
    ("What happens if I differentiate and integrate a function?", "What happens if I integrate and differentiate a function?"),
    ("What is the ratio between the circumference and the diameter?", "What is the ratio between the diameter and the circumference?"),
    ("Which months are between March and August?", "Which months are between August and March?"),
    ("What is the set difference between evens and primes?", "What is the set difference between primes and evens?"),
    ("What is the difference of fifty and twenty?", "What is the difference of twenty and fifty?"),
    ("What does None or False return in Python?", "What does False or None return in Python?"),
    ("What is True or False and False in Python?", "What is False or True and False in Python?"),
    ("What does x or y return in Python if x is an empty list?", "What does y or x return in Python if x is an empty list?"),
    ("Reverse the phrase cat or dog", "Reverse the phrase dog or cat"),
    ("Are Paris or Rome the capitals of Italy and France respectively?", "Are Rome or Paris the capitals of Italy and France respectively?"),
    ("What does [] or {} return in Python?", "What does {} or [] return in Python?"),
    ("Which textbook covers differential geometry and topology?", "Which textbook covers differential topology and geometry?"),
    ("What does strcmp return when I compare apple and banana?", "What does strcmp return when I compare banana and apple?"),
    ("Write hello or goodbye in uppercase", "Write goodbye or hello in uppercase"),
])
def test_a_pair_that_only_looks_alike_is_not_served_with_certainty(verifier, embed, cached, asked):  # noqa: F811
    cache = new_cache(verifier)
    put(cache, embed, body(cached), "cached answer")
    hit = get(cache, embed, body(asked))
    assert hit is None or hit.probability < 1.0


@pytest.mark.parametrize("text", [
    "What time is it right now?", "What is today's date?", "Is it raining in London now?", "What's the weather today?",
    "What's the latest news?", "Who is currently the prime minister of the UK?", "What's happening at the moment?",
    "I know the rules. What happened in the match tonight?",
    # the clock and the calendar, and "now" closing the question after a subject
    "What time is it now?", "What time is it?", "What's the time in Tokyo?", "What year is it?",
    "How much black money has been recovered till now?", "What is the current time?", "Do you know what time it is?",
])
def test_a_question_about_the_moment_of_asking_neither_reads_nor_writes_the_cache(text):
    assert asks_about_now(text)
    assert request_cacheable(body(text), False) == "time-relative question"


@pytest.mark.parametrize("text", [
    "What is the capital of France?", "I now know Python. What should I learn next?",
    "Now that I know Python, what should I learn?", "How do I save more from now on?", "What's the weather like in London?",
    "What time is it best to exercise?", "What is the time complexity of quicksort?", "What is the current time complexity of heapsort?", "Is it now possible to run Python on Android?",
])
def test_now_outside_a_question_about_the_present_is_cached(text):
    assert not asks_about_now(text)
    assert request_cacheable(body(text), False) is None
    # only the last user turn counts: an earlier question about today does not make this one stale
    assert request_cacheable(body(text, history=[("What's the weather today?", "Sunny.")]), False) is None


def test_a_streamed_tool_call_replay_opens_with_null_content():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    tool_answer = {"id": "c1", "object": "chat.completion", "created": 5, "model": "m",
                   "choices": [{"index": 0, "finish_reason": "tool_calls",
                                "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    assert completion_to_chunks(tool_answer)[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    text_answer = {**tool_answer, "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "Sunny."}}]}
    assert completion_to_chunks(text_answer)[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("text, plain", [
    ("What is the capital of France?", "what is the capital of france"),
    ("Is IT a good career?", "is IT a good career"),  # an acronym keeps its case
    ("Émile is here.", "Émile is here"),  # ASCII letters only are lowered, as the words are read
    ("I cannot come.", "i can not come"),
    ("Can I use can't here?", "can i use can't here"),  # talked about, not used: kept
    ("Why can’t I log in?", "why can not i log in"),
    ("ABC's price?", "ABC's price"),  # a possessive stays, and so does an acronym's case
    ("What is 17 * 23?", "what is 17 * 23?"),
    ("Cannot5 times", "Cannot5 times"),  # a token with digits keeps its case, and is no contraction
    ("How many letters are in can't?", "how many letters are in can't"),  # the last word is talked about
    ("Count the letters in: don't", "count the letters in: don't"),  # a text handed over
    ("What is the ASCII code of A?", "what is the ASCII code of A"),
    ("A dog bit me. Is it bad?", "a dog bit me. is it bad"),  # a sentence's first word is no letter talked about
])
def test_plain_form(text, plain):
    assert plain_form(text) == plain
