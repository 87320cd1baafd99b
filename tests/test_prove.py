"""Radioactivity and `prove`: the exact binomial tail, the de-duplicated tape, and a tiny end-to-end with controls."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy.stats import binom

from stillwatch.errors import ConfigError
from stillwatch.forensics.prove import Evidence, ProveSettings, evidence_check, load_evidence, prove
from stillwatch.forensics.radioactivity import (EvidenceText, TupleTape, binomial_tail, log_binomial_tail,
                                                radioactivity_test)
from stillwatch.forensics.watermark import WatermarkConfig, watermark_processor

KEY = "prove-test-secret"
N_PROMPTS = 300
CONTROL_SEEDS = (0, 1, 2)


@pytest.mark.parametrize("k,n,p", [(0, 10, 0.25), (1, 1, 0.25), (3, 10, 0.25), (30, 100, 0.25), (60, 100, 0.25),
                                   (400, 1000, 0.25), (7, 12, 0.5), (250, 1000, 0.1), (999, 1000, 0.9)])
def test_binomial_tail_matches_scipy(k, n, p):
    expected = binom.sf(k - 1, n, p)
    assert binomial_tail(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert log_binomial_tail(k, n, p) == pytest.approx(math.log(expected), rel=1e-9, abs=1e-12)


def test_binomial_tail_stays_exact_where_floats_underflow():
    assert log_binomial_tail(2000, 2000, 0.25) == pytest.approx(2000 * math.log(0.25), rel=1e-12)
    assert log_binomial_tail(1999, 2000, 0.25) == pytest.approx(
        1999 * math.log(0.25) + math.log(2000 * 0.75 + 0.25), rel=1e-9)
    assert log_binomial_tail(5, 4, 0.25) == -math.inf
    assert log_binomial_tail(-3, 4, 0.25) == 0.0


def test_tape_deduplicates_and_skips_prompt_and_earlier_windows():
    tape = TupleTape(window=1)
    # prompt [1, 2]; completion [3, 4, 3, 5]; predictions at each completion position
    tape.add_text([1, 2], [3, 4, 3, 5], [7, 8, 9, 8], skip_repeated_windows=True)
    # t=2: window (2,) is in the prompt; t=3: (3,)->8; t=4: (4,)->9; t=5: window (3,) seen at t=3
    assert tape.tuples == [((3,), 8), ((4,), 9)]
    assert tape.excluded == {"window_in_prompt": 1, "window_seen_earlier_in_text": 1}
    tape.add_text([1, 2], [3, 4], [7, 8], skip_repeated_windows=True)  # (3,)->8 again in another text
    assert tape.tuples == [((3,), 8), ((4,), 9)] and tape.excluded["duplicate"] == 1
    closed = TupleTape(window=1)
    closed.add_text([1], [3, 4, 3, 4], [3, 4, 3, 4], skip_repeated_windows=False)
    assert closed.tuples == [((3,), 4), ((4,), 3)] and closed.excluded == {"window_in_prompt": 1, "duplicate": 1}
    with pytest.raises(ConfigError):
        TupleTape(window=0)


def test_per_window_votes_score_each_windows_most_chosen_tokens():
    tape = TupleTape(window=1, per_window_top=1)
    # closed mode: the suspect wrote 3 4 3 4 3 5 after prompt [1]: (3,) chose 4 twice and 5 once, (4,) chose 3 twice
    tape.add_text([1], [3, 4, 3, 4, 3, 5], [3, 4, 3, 4, 3, 5], skip_repeated_windows=False)
    assert tape.scored() == [((3,), 4), ((4,), 3)] and tape.tuples == []
    assert tape.excluded == {"window_in_prompt": 1}
    tape.add_text([1], [3, 5], [3, 5], skip_repeated_windows=False)  # (3,) now ties 4 and 5: the lower id wins
    assert tape.scored() == [((3,), 4), ((4,), 3)]
    tape.per_window_top = 2
    assert tape.scored() == [((3,), 4), ((3,), 5), ((4,), 3)]
    config = WatermarkConfig(key=KEY)
    assert radioactivity_test(tape, config, 453, "closed").num_tuples_scored == 3
    with pytest.raises(ConfigError):
        TupleTape(window=1, per_window_top=0)


def test_green_count_of_a_tape_is_binomial_tested():
    config = WatermarkConfig(key=KEY)
    from stillwatch.forensics.watermark import green_oracle

    oracle = green_oracle(config, 453)
    tape = TupleTape(window=1)
    tape.tuples = [((w,), t) for w in range(2, 42) for t in range(2, 453) if oracle.is_green((w,), t)][:60]
    tape.tuples += [((w,), t) for w in range(2, 42) for t in range(2, 453) if not oracle.is_green((w,), t)][:40]
    r = radioactivity_test(tape, config, 453, "open")
    assert (r.num_tuples_scored, r.num_green) == (100, 60)
    assert r.p_value == pytest.approx(binom.sf(59, 100, 0.25), rel=1e-9)


# --- tiny end-to-end: watermarked harvest -> student -> prove; controls on plain outputs ---------------------------

def _train_student(tok, prompts, completions, seed, out: Path):
    import torch

    from stillwatch.data import causal_lm_loss, encode_pairs
    from stillwatch.models import build_model, save_model
    from stillwatch.train import TrainConfig, train

    torch.manual_seed(seed)
    model = build_model("tiny", tok, seed=seed)  # capable enough to inherit the bias in 200 steps

    def make_batch(step, rank, world):
        rng = random.Random(f"student:{seed}:{step}")
        idx = [rng.randrange(len(prompts)) for _ in range(32)][rank::world]
        return encode_pairs(tok, [prompts[i] for i in idx], [completions[i] for i in idx])

    train(model, make_batch, causal_lm_loss, TrainConfig(steps=200, lr=5e-3, warmup=10, checkpoint_every=10**6,
                                                         seed=seed), out / "_run", progress=False)
    return save_model(model, tok, out)


@pytest.fixture(scope="module")
def world(tiny_teacher, tmp_path_factory, one_thread):
    """Watermarked and plain story harvests of the tiny teacher, a student on each, and the evidence."""
    from stillwatch.tasks import examples, get_task
    from stillwatch.teachers.completion import SamplingParams
    from stillwatch.teachers.local import LocalTeacher

    root = tmp_path_factory.mktemp("prove")
    teacher = LocalTeacher.from_dir(tiny_teacher)
    tok = teacher.tokenizer
    config = WatermarkConfig(key=KEY)
    prompts = [e.prompt for e in examples(get_task("story"), N_PROMPTS, 11)]
    marked = [o[0] for o in teacher.generate(prompts, SamplingParams(max_tokens=40, temperature=1.0, seed=1),
                                             extra_processors=[watermark_processor(config, len(tok))])]
    suspect = _train_student(tok, prompts, [c.text for c in marked], 0, root / "suspect")
    controls = []
    for seed in CONTROL_SEEDS:  # same prompts, same architecture, un-watermarked teacher outputs
        plain = teacher.generate(prompts, SamplingParams(max_tokens=40, temperature=1.0, seed=100 + seed))
        controls.append(_train_student(tok, prompts, [o[0].text for o in plain], seed, root / f"control{seed}"))
    evidence = Evidence(texts=[EvidenceText(tuple(tok(p, add_special_tokens=False)["input_ids"]), tuple(c.token_ids),
                                            "story") for p, c in zip(prompts, marked)], source="memory")
    jsonl = root / "evidence.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p, "task": "story", "completion": c.to_dict()}) + "\n"
                             for p, c in zip(prompts, marked)))
    return SimpleNamespace(root=root, tok=tok, config=config, prompts=prompts, marked=marked, suspect=suspect,
                           controls=controls, evidence=evidence, jsonl=jsonl, teacher_dir=tiny_teacher)


def test_open_model_trained_on_watermarked_outputs_is_named_and_controls_are_cleared(world):
    report = prove(world.evidence, world.config, world.tok, suspect_dir=world.suspect,
                   control_dirs=world.controls[:1])
    assert report["verdict"] == "derived", report["reason"]
    assert report["test"]["p_value"] < 1e-4 and report["test"]["num_tuples_scored"] >= 50
    assert report["controls"]["evidence_watermark"]["passed"]
    assert report["controls"]["wrong_keys"]["passed"]
    assert report["controls"]["reference_models"][0]["passed"]
    votes = ProveSettings(per_window_top=2)
    assert prove(world.evidence, world.config, world.tok, suspect_dir=world.suspect,
                 settings=votes)["test"]["p_value"] < 1e-3
    for control in world.controls:  # several seeds: a false accusation is the worst bug here
        for settings in (None, votes):
            r = prove(world.evidence, world.config, world.tok, suspect_dir=control, settings=settings)
            assert r["test"]["p_value"] >= 0.01, (control, settings, r["test"])
            assert r["verdict"] == "not shown"


def test_closed_model_through_the_teacher_protocol(world):
    from stillwatch.teachers.local import LocalTeacher

    settings = ProveSettings(max_prompts=150, samples_per_prompt=2, max_tokens=40)
    derived = prove(world.evidence, world.config, world.tok, suspect_teacher=LocalTeacher.from_dir(world.suspect),
                    settings=settings)
    assert derived["mode"] == "closed" and derived["test"]["p_value"] < 1e-3, derived["test"]
    control = prove(world.evidence, world.config, world.tok,
                    suspect_teacher=LocalTeacher.from_dir(world.controls[0]), settings=settings)
    assert control["test"]["p_value"] >= 0.01 and control["verdict"] == "not shown"
    votes = ProveSettings(max_prompts=150, samples_per_prompt=32, temperature=0.5, max_tokens=40, per_window_top=2)
    logprobs = dataclasses.replace(votes, samples_per_prompt=8, temperature=1.0, closed_logprobs=True)
    for settings in (votes, logprobs):
        for model, derived in ((world.suspect, True), *((c, False) for c in world.controls)):
            r = prove(world.evidence, world.config, world.tok, suspect_teacher=LocalTeacher.from_dir(model),
                      settings=settings)
            assert (r["test"]["p_value"] < 1e-3) if derived else (r["test"]["p_value"] >= 0.01), (model, r["test"])
            assert "Per-window votes" in r["method"]
            if settings.closed_logprobs:
                assert r["sampling"]["samples_scored_by_logprobs"] > 0.9 * r["sampling"]["prompts"] * 8


def test_closed_logprobs_score_the_most_likely_token_only_when_tokens_line_up():
    from stillwatch.forensics.prove import _top1
    from stillwatch.teachers.completion import Completion

    c = Completion(text="x", token_ids=[5, 6], logprobs=[-1.0, -1.0], finish_reason="stop", prompt_tokens=1,
                   top_logprobs=[[(7, -0.5), (5, -1.0)], [(6, -0.1), (8, -2.0)]])
    assert _top1(c, [5, 6]) == [7, 6]
    assert _top1(c, [5, 9, 6]) is None  # the suspect's tokens are not the teacher's: score what it wrote
    assert _top1(Completion(text="x", token_ids=[5], logprobs=[-1.0], finish_reason="stop", prompt_tokens=1),
                 [5]) is None


def test_wrong_key_finds_nothing_and_makes_the_verdict_inconclusive(world):
    wrong = WatermarkConfig(key="not-the-key")
    report = prove(world.evidence, wrong, world.tok, suspect_dir=world.suspect)
    assert not report["controls"]["evidence_watermark"]["passed"]
    assert report["verdict"] == "inconclusive" and report["test"]["p_value"] >= 0.01


def test_cli_prove_on_a_harvest_store_writes_the_report(world, tmp_path, monkeypatch):
    from stillwatch.cli import main
    from stillwatch.harvest.store import HarvestStore

    store_path = tmp_path / "h.db"
    with HarvestStore(store_path, create=True) as store:
        store.record_teacher("local:teacher", {"model_dir": str(world.teacher_dir),
                                               "watermark": world.config.public_dict()})
        items = [SimpleNamespace(prompt_id=f"p{i}", position=i, prompt=p, task="story", answer="")
                 for i, p in enumerate(world.prompts)]
        store.add([(item, 0, c, "local:teacher", {}) for item, c in zip(items, world.marked)])
    monkeypatch.setenv("STILLWATCH_WATERMARK_KEY", KEY)
    out = tmp_path / "report"
    main(["prove", "--suspect", str(world.suspect), "--evidence", str(store_path), "--out", str(out),
          "--format", "html"])
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "derived" and report["tokenizer"] == str(world.teacher_dir)
    assert "DERIVED" in (out / "report.html").read_text()
    main(["prove", "--suspect", str(world.suspect), "--evidence", str(store_path), "--out", str(out / "votes"),
          "--per-window-top", "2"])
    votes = json.loads((out / "votes" / "report.json").read_text())
    assert votes["settings"]["per_window_top"] == 2 and "Per-window votes" in votes["method"]
    monkeypatch.setenv("STILLWATCH_WATERMARK_KEY", "another-key")  # the store knows its key's fingerprint
    with pytest.raises(SystemExit) as exc:
        main(["prove", "--suspect", str(world.suspect), "--evidence", str(store_path), "--out", str(out)])
    assert exc.value.code == 2


def test_evidence_from_the_gateway_audit_db_per_account(world, tmp_path):
    from sqlalchemy import insert

    from stillwatch.guard.db import make_engine, upgrade, write_transaction
    from stillwatch.guard.tables import Account, AuditRecord, utcnow

    url = f"sqlite:///{tmp_path / 'guard.db'}"
    upgrade(url)
    engine = make_engine(url)
    with write_transaction(engine) as conn:
        for i, name in enumerate(("mallory", "alice"), start=1):
            conn.execute(insert(Account).values(id=i, name=name, blocked=False, degraded=False, created_at=utcnow()))
        for p, c in zip(world.prompts[:60], world.marked[:60]):
            conn.execute(insert(AuditRecord).values(created_at=utcnow(), account_id=1, endpoint="/v1/completions",
                                                    params={}, prompt=p, completion=c.text, status=200))
            conn.execute(insert(AuditRecord).values(
                created_at=utcnow(), account_id=2, endpoint="/v1/chat/completions", params={}, status=200,
                prompt=json.dumps([{"role": "user", "content": p}]), completion="the cat sleeps. a dog runs."))
    engine.dispose()
    mallory = load_evidence(url, world.tok, account="mallory")
    alice = load_evidence(url, world.tok, account="alice")
    assert len(mallory.texts) == 60 and len(alice.texts) == 60
    assert len(load_evidence(url, world.tok, account="alice", task="story").texts) == 60  # chat prompts too
    with pytest.raises(ConfigError):
        load_evidence(url, world.tok, account="alice", task="add")
    assert mallory.texts[0].prompt_ids == world.evidence.texts[0].prompt_ids  # chat messages render the same
    assert alice.texts[0].prompt_ids == world.evidence.texts[0].prompt_ids
    assert evidence_check(mallory, world.config, len(world.tok))["passed"]
    assert not evidence_check(alice, world.config, len(world.tok))["passed"]
    with pytest.raises(Exception):
        load_evidence(url, world.tok, account="nobody")
