"""Filtered (--verify) and voted (--vote) harvests: what is kept, what is dropped and why, and resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillwatch.cli import main
from stillwatch.errors import ConfigError
from stillwatch.harvest import HarvestStore, PromptItem, harvest, prompt_id
from stillwatch.harvest.select import Selector
from stillwatch.teachers.completion import Completion, SamplingParams


class ScriptedTeacher:
    """An endpoint-like teacher whose sample j of a prompt is `answers[prompt][j]` after the answer mark."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[str]]):
        self.answers, self.calls = answers, []

    async def complete(self, prompts, params):
        self.calls += list(prompts)
        return [[Completion(text=f"trace -> {a}", token_ids=[1, 2, 3], logprobs=[-0.1] * 3, finish_reason="stop",
                            prompt_tokens=5) for a in self.answers[p][:params.n]] for p in prompts]

    async def aclose(self):
        pass


def _items(prompts: list[str], task: str | None = "add") -> list[PromptItem]:
    return [PromptItem(prompt_id(p, i), i, p, task) for i, p in enumerate(prompts)]


def test_verify_keeps_correct_samples_and_records_why_the_rest_went(tmp_path: Path) -> None:
    teacher = ScriptedTeacher({"add: 1+2\n": ["3", "4"], "add: 5+5\n": ["10", "10"], "mul: 3*3\n": ["6", "9"]})
    items = _items(["add: 1+2\n", "add: 5+5\n"]) + [PromptItem(prompt_id("mul: 3*3\n", 2), 2, "mul: 3*3\n")]
    with HarvestStore(tmp_path / "s.db", create=True) as store:
        result = harvest(teacher, items, store, SamplingParams(n=2), progress=False, selector=Selector(verify=True))
        meta, kept, dropped = store.meta(), list(store.iter_rows()), list(store.iter_dropped())
        assert result.rows_added == 4 and result.rows_dropped == 2
        # The task comes from the row, or from the prompt's prefix when the row has none.
        assert sorted(r.completion.text for r in kept) == ["trace -> 10", "trace -> 10", "trace -> 3", "trace -> 9"]
        assert [(d["kind"], d["sample_index"]) for d in dropped] == [("rejected", 1), ("rejected", 0)]
        assert "answer '4' is wrong" in dropped[0]["reason"]
        sel = meta["selection"]
        assert sel["verify"] == "builtin task scorers" and sel["kept"] == 4 and sel["dropped"] == {"rejected": 2}
        # What the harvest cost counts the dropped samples' tokens too.
        assert sel["consumed"]["completion_tokens"] == 18 == meta["completion_tokens"] + 6
        calls = len(teacher.calls)
        # A resumed run asks for nothing again: dropped samples are done, not missing.
        again = harvest(teacher, items, store, SamplingParams(n=2), progress=False, selector=Selector(verify=True))
        assert again.prompts_skipped == 3 and len(teacher.calls) == calls
        with pytest.raises(ConfigError, match="differs"):  # one store, one selection
            harvest(teacher, items, store, SamplingParams(n=2), progress=False, selector=Selector(vote=True))


def test_vote_keeps_the_majority_and_drops_ties(tmp_path: Path) -> None:
    teacher = ScriptedTeacher({"q1": ["7", "7", "8"], "q2": ["1", "2", "1"], "q3": ["4", "5", "6"]})
    with HarvestStore(tmp_path / "s.db", create=True) as store:
        harvest(teacher, _items(["q1", "q2", "q3"], task=None), store, SamplingParams(n=3), progress=False,
                selector=Selector(vote=True))
        kept = sorted((r.prompt, r.sample_index) for r in store.iter_rows())
        dropped = [d for d in store.iter_dropped() if d["kind"] == "minority"]
        assert kept == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 2)]
        assert store.meta()["selection"]["dropped"] == {"minority": 2, "tie": 3}
        assert "answer '8' lost to '7' (1 of 3 votes against 2)" in dropped[0]["reason"]


def test_vote_without_samples_and_bad_verifiers_are_one_line_errors(tmp_path: Path, capsys) -> None:
    base = ["harvest", "--teacher", "builtin", "--task", "add", "--n", "2", "--out", str(tmp_path / "s.db")]
    for extra, message in ((["--vote"], "--vote needs --samples"),
                           (["--verify", "--verifier", "nosuchmodule_xyz:f"], "cannot import nosuchmodule_xyz"),
                           (["--verify", "--verifier", "json:nothing"], "has no callable"),
                           (["--verifier", "json:loads"], "give --verify too")):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_user_verifier_from_a_file_through_the_cli(tiny_teacher: Path, tmp_path: Path) -> None:
    check = tmp_path / "check.py"
    check.write_text("def even_answer(prompt, completion):\n"
                     "    tail = completion.rpartition('->')[2].strip()\n"
                     "    return tail.isdigit() and int(tail) % 2 == 0\n")
    out = tmp_path / "s.db"
    main(["harvest", "--teacher", str(tiny_teacher), "--task", "add", "--n", "6", "--samples", "2",
          "--temperature", "1", "--max-tokens", "40", "--out", str(out), "--no-progress",
          "--verify", "--verifier", f"{check}:even_answer"])
    with HarvestStore(out) as store:
        meta, rows, dropped = store.meta(), list(store.iter_rows()), list(store.iter_dropped())
    assert meta["selection"]["verify"] == f"{check}:even_answer"
    assert len(rows) + len(dropped) == 12 and meta["selection"]["kept"] == len(rows)
    assert all(int(r.completion.text.rpartition("->")[2]) % 2 == 0 for r in rows)
    assert all(d["kind"] == "rejected" and "returned False" in d["reason"] for d in dropped)


def test_merging_selected_shards_keeps_the_dropped_samples(tmp_path: Path) -> None:
    teacher = ScriptedTeacher({"add: 1+2\n": ["3", "4"], "add: 5+5\n": ["10", "9"], "add: 2+2\n": ["5", "5"]})
    items = _items(["add: 1+2\n", "add: 5+5\n", "add: 2+2\n"])
    for i, shard in enumerate((items[:2], items[2:])):
        with HarvestStore(tmp_path / f"s{i}.db", create=True) as store:
            harvest(teacher, shard, store, SamplingParams(n=2), progress=False, selector=Selector(verify=True))
    main(["harvest", "merge", str(tmp_path / "all.db"), str(tmp_path / "s0.db"), str(tmp_path / "s1.db")])
    with HarvestStore(tmp_path / "all.db") as merged:
        sel = merged.meta()["selection"]
        assert merged.count() == 2 and sel["kept"] == 2 and sel["dropped"] == {"rejected": 4}
        assert sel["verify"] == "builtin task scorers" and sel["consumed"]["completion_tokens"] == 18
