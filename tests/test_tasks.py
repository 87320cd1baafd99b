"""Task generators are deterministic and scorers are exact and never raise."""

from __future__ import annotations

import random

import pytest

from stillwatch.errors import ConfigError, UnknownTaskError
from stillwatch.tasks import (REASONING_TASKS, TASK_NAMES, Addition, ModularChain, Multiplication, Story, examples,
                              extract_answer, get_task, task_for_prompt)
from stillwatch.tasks.story import parse_sentence

ADVERSARIAL = ["", " ", "->", "-> ", "\x00\x01", "ünïcödé -> ∞", "🙂" * 1000, "-> 1" * 5000, "9" * 100_000,
               "->\n->", None, 12345]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_deterministic_and_reference_scores_correct(name: str) -> None:
    task = get_task(name)
    first, again, other = examples(task, 50, 7), examples(task, 50, 7), examples(task, 50, 8)
    assert first == again
    assert first != other
    assert all(task.score(e.prompt, e.trace) for e in first)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_adversarial_completions_score_false_without_raising(name: str) -> None:
    task = get_task(name)
    prompt = examples(task, 1, 0)[0].prompt
    for bad in ADVERSARIAL:
        assert task.score(prompt, bad) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("name", REASONING_TASKS)
def test_reasoning_scores_answer_only_and_rejects_wrong_or_partial(name: str) -> None:
    task = get_task(name)
    for ex in examples(task, 20, 3):
        assert task.score(ex.prompt, ex.answer_only)
        wrong = str(int(ex.answer) + 1)
        assert not task.score(ex.prompt, ex.trace.rsplit("->", 1)[0] + "-> " + wrong)
        assert not task.score(ex.prompt, ex.trace.rsplit("->", 1)[0])  # trace cut before the answer
        assert not task.score(ex.prompt, ex.answer_only[:-1] if len(ex.answer) > 1 else "-> x")
        assert not task.score("garbage prompt", ex.trace)


def test_traces_show_the_carries() -> None:
    ex = Addition(digits=4).example(random.Random(0))
    a, b = (int(x) for x in ex.prompt[5:].strip().split("+"))
    assert ex.answer == str(a + b)
    assert len(ex.trace.split("->")[0].split()) == 4
    mul = Multiplication(digits=3).example(random.Random(0))
    assert mul.trace.split()[0].endswith(f"={int(mul.prompt.split('*')[0][-1]) * int(mul.prompt.split('*')[1]):02d}")


def test_chain_is_left_to_right_mod_10() -> None:
    task = ModularChain(steps=3)
    assert task.reference_answer("chain: 7+5*3-2\n") == "4"
    assert task.score("chain: 7+5*3-2\n", "7+5=2 2*3=6 6-2=4 -> 4")
    assert not task.score("chain: 7/5\n", "-> 4")


@pytest.mark.parametrize("task, size", [(Addition, "digits"), (Multiplication, "digits"), (ModularChain, "steps")])
def test_difficulty_is_a_parameter(task, size: str) -> None:
    short = examples(task(**{size: 2}), 5, 0)
    long = examples(task(**{size: 8}), 5, 0)
    assert max(len(e.trace) for e in short) < min(len(e.trace) for e in long)
    with pytest.raises(ConfigError):
        task(**{size: 0})


def test_story_grammar_checker() -> None:
    story = Story(sentences=2)
    assert parse_sentence("the red cat sees a small dog") == "cat"
    assert parse_sentence("a fox sleeps quickly") == "fox"
    assert parse_sentence("cat sees dog") is None
    assert parse_sentence("the cat sees") is None
    assert story.score("story: cat\n", "the cat runs. a dog sleeps.")
    assert not story.score("story: cat\n", "the dog runs. a cat sleeps.")  # first sentence off topic
    assert not story.score("story: cat\n", "the cat runs.")  # too few sentences
    assert not story.score("story: cat\n", "the cat runs. a dog sleeps")  # unterminated


def test_story_has_many_valid_answers_per_prompt() -> None:
    rng = random.Random(0)
    task = Story()
    stories = {task.example(rng).trace for _ in range(200)}
    by_topic = {}
    for s in stories:
        by_topic.setdefault(parse_sentence(s.split(".")[0]), set()).add(s)
    assert len(stories) == 200
    assert max(len(v) for v in by_topic.values()) > 5


def test_registry_and_prompt_routing() -> None:
    with pytest.raises(UnknownTaskError):
        get_task("nope")
    assert task_for_prompt("mul: 12*3\n").name == "mul"
    assert task_for_prompt("hello") is None
    assert extract_answer("a -> b -> 42 ") == "42"
    assert extract_answer("no mark") is None


def test_task_difficulty_from_a_spec() -> None:
    from stillwatch.errors import ConfigError, UnknownTaskError

    task = get_task("chain:steps=7")
    ex = examples(task, 1, 0)[0]
    assert task.name == "chain" and ex.trace.count("=") == 7 and task.score(ex.prompt, ex.trace)
    assert len(examples(get_task("add:digits=6"), 1, 0)[0].answer) >= 6
    for bad in ("add:steps=3", "add:digits", "add:digits=x"):
        with pytest.raises(ConfigError, match="difficulty is NAME:FIELD=INT"):
            get_task(bad)
    with pytest.raises(UnknownTaskError):
        get_task("nope:digits=3")
    with pytest.raises(ConfigError, match="between 1 and 12"):
        get_task("add:digits=40")
