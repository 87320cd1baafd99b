"""LocalTeacher: exact logprobs, batching, sampling controls and scoring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from stillwatch.errors import ConfigError
from stillwatch.teachers import SamplingParams, open_teacher
from stillwatch.teachers.local import LocalTeacher

PROMPTS = ["add: 1234+5678\n", "story: fox\n", "chain: 1+2*3\n"]


@pytest.fixture(scope="module")
def teacher(tiny_teacher: Path) -> LocalTeacher:
    return LocalTeacher.from_dir(tiny_teacher)


def test_logprobs_equal_log_softmax_of_the_models_logits(teacher: LocalTeacher) -> None:
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=5, top_logprobs=4)
    for prompt, (completion,) in zip(PROMPTS, teacher.generate(PROMPTS, params)):
        prompt_ids = teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + completion.token_ids])
        with torch.no_grad():
            expected = teacher.model(ids).logits[0].log_softmax(-1)[len(prompt_ids) - 1: -1]
        got = torch.tensor(completion.logprobs)
        want = expected.gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(got, want, atol=1e-4)
        top_ids = [[i for i, _ in pos] for pos in completion.top_logprobs]
        assert top_ids == expected.topk(4, dim=-1).indices.tolist()
        assert completion.prompt_tokens == len(prompt_ids)


def test_batched_greedy_equals_one_at_a_time(teacher: LocalTeacher) -> None:
    greedy = SamplingParams(max_tokens=20, temperature=0.0)
    together = [c[0].token_ids for c in teacher.generate(PROMPTS, greedy)]
    alone = [teacher.generate([p], greedy)[0][0].token_ids for p in PROMPTS]
    assert together == alone


def test_seed_n_samples_and_finish_reasons(teacher: LocalTeacher) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, n=3, seed=11)
    story = [PROMPTS[1]]  # the open task: a trained teacher is confident on arithmetic, not on stories
    first, again = teacher.generate(story, params), teacher.generate(story, params)
    assert len(first[0]) == 3
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]
    assert len({tuple(c.token_ids) for c in first[0]}) > 1
    for c in first[0]:
        assert c.finish_reason in ("stop", "length")
        assert c.completion_tokens <= 8
        assert c.finish_reason == "stop" or c.completion_tokens == 8


def test_stop_strings_end_the_text(teacher: LocalTeacher) -> None:
    free = teacher.generate(["story: cat\n"], SamplingParams(max_tokens=30, temperature=0.0))[0][0].text
    assert " " in free
    stopped = teacher.generate(["story: cat\n"], SamplingParams(max_tokens=30, temperature=0.0, stop=(" ",)))[0][0]
    assert stopped.text == free.split(" ")[0]
    assert stopped.finish_reason == "stop"


def test_score_matches_generation_and_context_is_checked(teacher: LocalTeacher) -> None:
    c = teacher.generate(PROMPTS[:1], SamplingParams(max_tokens=10, temperature=1.0, seed=2))[0][0]
    scored = asyncio.run(teacher.score(PROMPTS[0], c.token_ids, top_k=2))
    assert scored.logprobs == pytest.approx(c.logprobs, abs=1e-4)
    assert len(scored.top_logprobs) == len(c.token_ids)
    with pytest.raises(ConfigError):
        teacher.generate(PROMPTS[:1], SamplingParams(max_tokens=10_000))


def test_open_teacher_needs_exactly_one_source(tiny_teacher: Path) -> None:
    with pytest.raises(ConfigError):
        open_teacher()
    with pytest.raises(ConfigError):
        open_teacher(model_dir=tiny_teacher, endpoint="http://127.0.0.1:1/v1")
    assert isinstance(open_teacher(model_dir=tiny_teacher), LocalTeacher)
