"""Distillation: batch alignment, pure-function data order, tokenizer checks, exact resume, and harvest -> distill -> eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stillwatch.cli import main
from stillwatch.data import IGNORE
from stillwatch.distill.data import (BatchMaker, Row, RowSource, collate, completion_start, encode_rows, forward_logits,
                                     shift)
from stillwatch.distill.losses import full_kd_loss, sparse_kd_loss
from stillwatch.distill.onpolicy import LocalScorer
from stillwatch.distill.run import DistillConfig, distill, distill_loss
from stillwatch.errors import ConfigError, TokenizerMismatchError
from stillwatch.models import read_card
from stillwatch.tasks import examples, get_task
from stillwatch.teachers.completion import Completion, SamplingParams
from stillwatch.teachers.local import LocalTeacher

FAST = dict(batch_size=8, lr=3e-3, warmup=1, checkpoint_every=50, log_every=1, max_new_tokens=40)


@pytest.fixture(scope="module")
def teacher(tiny_teacher: Path) -> LocalTeacher:
    return LocalTeacher.from_dir(tiny_teacher)


@pytest.fixture(scope="module")
def rows(teacher: LocalTeacher) -> list[Row]:
    """Teacher completions with top-5 logprobs for add and chain prompts, in memory (no store)."""
    prompts = [e.prompt for name in ("add", "chain") for e in examples(get_task(name), 12, 7)]
    outs = teacher.generate(prompts, SamplingParams(max_tokens=48, temperature=1.0, seed=3, top_logprobs=5))
    return [Row(p, o[0]) for p, o in zip(prompts, outs)]


@pytest.fixture(scope="module")
def store(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A harvest store written by the real `stillwatch harvest` command, with top-4 logprobs."""
    path = tmp_path_factory.mktemp("harvest") / "store.db"
    main(["harvest", "--teacher", str(tiny_teacher), "--task", "add", "--task", "chain", "--n", "16",
          "--out", str(path), "--logprobs", "4", "--max-tokens", "48", "--concurrency", "32", "--no-progress"])
    return path


def test_batches_align_labels_and_topk_with_the_teacher(teacher: LocalTeacher, rows: list[Row]) -> None:
    tok = teacher.tokenizer
    encoded = encode_rows(tok, rows[:6])
    batch = collate(encoded, tok.pad_token_id)
    for i, (r, e) in enumerate(zip(rows[:6], encoded)):
        start = len(e.prompt_ids)
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        expected = r.completion.token_ids + ([tok.eos_token_id] if r.completion.finish_reason == "stop" else [])
        assert labelled == expected and batch["labels"][i, :start].eq(IGNORE).all()
        assert batch["has_topk"][i].sum() == len(r.completion.token_ids)  # no top k for the end token
    # The teacher distilled into itself: zero KD loss on every harvested position, sparse and white-box.
    with torch.no_grad():
        logits = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    t = shift(batch)
    mask = t["has_topk"] & (t["labels"] != IGNORE)
    for beta in (0.0, 0.5, 1.0):
        loss, count = sparse_kd_loss(logits, t["topk_ids"], t["topk_logprobs"], t["topk_valid"], mask, beta)
        assert count > 50 and loss.item() / count.item() < 1e-4
    # White-box: the scorer's logits start where the shortest prompt ends, as the student's do in training.
    start = completion_start(batch)
    assert 0 < start < min(len(e.prompt_ids) for e in encoded)
    scored = LocalScorer(teacher.model)(batch, encoded)
    student = forward_logits(teacher.model, batch, start)
    labels = shift(batch, start)["labels"]
    assert labels[labels != IGNORE].numel() == (t["labels"] != IGNORE).sum()  # no completion token is cut
    assert full_kd_loss(student, scored["teacher_logits"][:, :-1], labels != IGNORE)[0].item() < 1e-3
    # The per-row teacher cache serves the same logits when the rows come back in another batch.
    for i, e in enumerate(encoded):
        e.key = i
    cached_scorer = LocalScorer(teacher.model)
    cached_scorer(batch, encoded)
    again = [encoded[3], encoded[0], encoded[5]]
    regrouped = collate(again, tok.pad_token_id)
    fresh = LocalScorer(teacher.model, cache_mb=0)(regrouped, again)["teacher_logits"]
    served = cached_scorer(regrouped, again)["teacher_logits"]
    kept = shift(regrouped, completion_start(regrouped))["labels"] != IGNORE
    assert len(cached_scorer._cache) == 6 and kept.sum() > 20
    torch.testing.assert_close(served[:, :-1][kept], fresh[:, :-1][kept], atol=1e-5, rtol=0)
    # And an untrained student is far from it.
    noise = torch.randn_like(logits)
    assert sparse_kd_loss(noise, t["topk_ids"], t["topk_logprobs"], t["topk_valid"], mask)[0].item() / count.item() > 0.5


@pytest.mark.parametrize("buffer_rows", [1000, 5])  # in memory, and streaming through a 5-row shuffle buffer
def test_batches_are_a_pure_function_of_the_step(teacher: LocalTeacher, rows: list[Row], buffer_rows: int) -> None:
    def maker() -> BatchMaker:
        return BatchMaker(RowSource(rows, teacher.tokenizer, seed=1, buffer_rows=buffer_rows), 5,
                          teacher.tokenizer.pad_token_id)

    walked = maker()
    sequence = [[r.prompt for r in walked.global_rows(s)] for s in range(12)]  # 60 positions: 2.5 epochs
    epoch = [p for step in sequence for p in step][:len(rows)]
    assert sorted(epoch) == sorted(r.prompt for r in rows)  # one epoch visits every row once
    fresh = maker()
    for step in (9, 3, 11, 0):  # jumps forwards and backwards, as a resumed run does
        assert [r.prompt for r in fresh.global_rows(step)] == sequence[step]
    shards = [maker()(7, rank, 2)["input_ids"].shape[0] for rank in (0, 1)]
    assert shards == [3, 2]
    other_seed = BatchMaker(RowSource(rows, teacher.tokenizer, seed=2, buffer_rows=buffer_rows), 5, 0)
    assert [r.prompt for r in other_seed.global_rows(0)] != sequence[0]


def test_tokenizer_mismatch_is_caught_up_front(store: Path, tmp_path: Path) -> None:
    from stillwatch.tokenizer import train_tokenizer

    other = tmp_path / "other-tokenizer"
    train_tokenizer(vocab_size=300).save_pretrained(other)
    # An endpoint scores in its own token ids: on-policy through one needs the student's tokenizer.
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        distill(store, tmp_path / "op", DistillConfig(loss="on-policy", steps=2, **FAST), preset="student-tiny",
                tokenizer_dir=other, endpoint="http://127.0.0.1:9/v1", progress=False)
    # kd aligns the harvest's top k across tokenizers: the harvest recorded the teacher's vocabulary.
    card = distill(store, tmp_path / "kd", DistillConfig(loss="kd", steps=2, **FAST), preset="student-tiny",
                   tokenizer_dir=other, progress=False)
    assert card["data"]["aligned"] and (tmp_path / "kd" / "model.safetensors").exists()
    # Sequence-level KD only needs the text: it re-encodes it with the student's tokenizer.
    card = distill(store, tmp_path / "sft", DistillConfig(loss="sft", steps=2, **FAST), preset="student-tiny",
                   tokenizer_dir=other, progress=False)
    assert card["data"]["retokenized"] is True


def test_impossible_requests_fail_with_clear_errors(store: Path, tmp_path: Path, rows: list[Row]) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        distill(store, tmp_path / "a", DistillConfig(loss="on-policy", steps=2), progress=False)
    no_topk = [Row(r.prompt, Completion(r.completion.text, r.completion.token_ids, r.completion.logprobs,
                                        r.completion.finish_reason, r.completion.prompt_tokens)) for r in rows]
    with pytest.raises(ConfigError, match="--logprobs"):
        distill(no_topk, tmp_path / "b", DistillConfig(loss="kd", steps=2), progress=False)
    with pytest.raises(ConfigError):
        DistillConfig(loss="kd", divergence="sideways")  # type: ignore[arg-type]


def test_on_policy_resume_is_exact(tiny_teacher: Path, store: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = DistillConfig(loss="on-policy", lmbda=0.5, steps=4, **{**FAST, "checkpoint_every": 2})
    kwargs = dict(preset="student-tiny", teacher=tiny_teacher, progress=False)
    straight = distill(store, tmp_path / "straight", cfg, **kwargs)

    real_call = BatchMaker.__call__

    def dies_at_step_3(self, step, rank=0, world=1):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return real_call(self, step, rank, world)

    monkeypatch.setattr(BatchMaker, "__call__", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        distill(store, tmp_path / "resumed", cfg, **kwargs)
    monkeypatch.setattr(BatchMaker, "__call__", real_call)
    resumed = distill(store, tmp_path / "resumed", cfg, **kwargs)
    assert resumed["train"]["resumed_from"] == 2
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert resumed["teacher_tokens"] == straight["teacher_tokens"] and straight["teacher_tokens"]["scored"] > 0


def test_harvest_distill_eval_end_to_end(tiny_teacher: Path, store: Path, tmp_path: Path) -> None:
    # Every loss trains a few steps from the harvested store; the first goes through the CLI contract.
    out = tmp_path / "sft"
    main(["distill", "--data", str(store), "--out", str(out), "--preset", "student-tiny", "--loss", "sft",
          "--steps", "3", "--batch-size", "8"])
    cards = {"sft": read_card(out)}
    settings = {"kd": ({}, {}), "kd-jsd-t2": ({"divergence": "jsd", "beta": 0.5, "temperature": 2.0, "ce_weight": 0.5}, {}),
                "kd-whitebox": ({}, {"teacher": tiny_teacher}),
                "on-policy": ({"lmbda": 1.0, "teacher_top_k": 4}, {"teacher": tiny_teacher})}
    for name, (extra, kwargs) in settings.items():
        loss = "on-policy" if name.startswith("on-policy") else "kd"
        cards[name] = distill(store, tmp_path / name, DistillConfig(loss=loss, steps=3, **FAST, **extra),  # type: ignore[arg-type]
                              preset="student-tiny", progress=False, **kwargs)
    for name, card in cards.items():
        assert card["kind"] == "stillwatch-student" and card["train"]["steps"] == 3, name
        assert card["train"]["final_loss"] == card["train"]["final_loss"], name  # not NaN
        assert (tmp_path / name / "model.safetensors").is_file() and not (tmp_path / name / "_run").exists()
    assert cards["sft"]["teacher_tokens"]["harvested"] > 0 and cards["sft"]["teacher_tokens"]["scored"] == 0
    assert cards["on-policy"]["teacher_tokens"]["harvested"] == 0  # lambda = 1: only the student's own samples
    assert cards["on-policy"]["teacher_tokens"]["scored"] > 0
    assert cards["kd"]["data"]["rows"] == 32 and cards["kd"]["data"]["rows_used"] == 24

    report = tmp_path / "eval.json"
    main(["eval", "--model", str(tmp_path / "kd"), "--reference", str(tiny_teacher), "--task", "add",
          "--n", "4", "--json", str(report)])
    comparison = json.loads(report.read_text())["comparison"]
    assert 0 < comparison["parameter_ratio"] < 0.5
    assert comparison["throughput_speedup"] > 0 and "agreement" in comparison["tasks"]["add"]


def test_distill_refuses_to_overwrite_a_foreign_directory(store: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an unfinished distillation run"):
        distill(store, tmp_path / "taken", DistillConfig(steps=1), progress=False)
    shutil.rmtree(tmp_path / "taken")


def test_endpoint_scoring_matches_in_process_scoring(teacher: LocalTeacher, rows: list[Row]) -> None:
    # EndpointScorer speaks the Teacher protocol's async `score` (OpenAITeacher: /v1/completions with echo);
    # LocalTeacher implements the same protocol, so both views of the same tokens must agree.
    from stillwatch.distill.onpolicy import EndpointScorer

    encoded = encode_rows(teacher.tokenizer, rows[:4])
    batch = collate(encoded, teacher.tokenizer.pad_token_id, with_topk=False)
    local = LocalScorer(teacher.model, top_k=4)(batch, encoded)
    remote_scorer = EndpointScorer(teacher, top_k=4)
    remote = remote_scorer(batch, encoded)
    torch.testing.assert_close(remote["has_topk"], local["has_topk"])
    has = local["has_topk"]
    torch.testing.assert_close(remote["topk_logprobs"][has], local["topk_logprobs"][has], atol=1e-4, rtol=0)
    assert torch.equal(remote["topk_ids"][has][:, 0], local["topk_ids"][has][:, 0])
    sampled_only = EndpointScorer(teacher, top_k=0)(batch, encoded)  # an endpoint without alternatives
    assert sampled_only["has_teacher_lp"].sum() == has.sum() and (sampled_only["teacher_token_logprobs"] <= 0).all()
    # The teacher as its own student: the per-token reverse-KL advantage log q - log p is zero everywhere.
    with torch.no_grad():
        loss, count = distill_loss(teacher.model, sampled_only, beta=1.0, temperature=1.0)
    assert count > 20 and abs(loss.item()) / count.item() < 1e-4
    remote_scorer.loop.close()
