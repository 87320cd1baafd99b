"""Cross-tokenizer alignment: hand-made cases with known answers, the mass bookkeeping, and kd across tokenizers."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from stillwatch.cli import main
from stillwatch.distill.align import END, Aligner, Continuations, StudentVocab, TeacherTokens, align_row, teacher_tokens
from stillwatch.distill.run import DistillConfig, distill
from stillwatch.errors import ConfigError, TokenizerMismatchError
from stillwatch.harvest import HarvestStore
from stillwatch.tokenizer import load_tokenizer, token_bytes, token_strings, train_tokenizer_b

FAST = dict(batch_size=8, lr=3e-3, warmup=1, checkpoint_every=50, log_every=1, max_new_tokens=40)


def toy_student(vocab: list[str], merges: list[tuple[str, str]]) -> StudentVocab:
    """A character BPE student over an explicit vocabulary (ids in list order; eos last)."""
    ids = {t: i for i, t in enumerate(vocab + ["<eos>"])}
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    return StudentVocab(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>"))


def teacher(pieces: list[str], top: list[dict]) -> TeacherTokens:
    """Teacher pieces with their top-k as {string or END: probability}; the sampled piece's own p is listed."""
    listed = [[(s if s is END else s.encode(), math.log(p)) for s, p in pos.items()] for pos in top]
    own = [math.log(pos[p]) for p, pos in zip(pieces, top)]
    return TeacherTokens([p.encode() for p in pieces], own, listed)


def as_probs(target: list[tuple[int, float]], student: StudentVocab) -> dict[str, float]:
    names = {i: t for t, i in student.tokenizer.get_vocab().items()}
    return {names[v]: round(math.exp(lp), 6) for v, lp in target}


def test_teacher_ab_c_onto_student_a_bc() -> None:
    student = toy_student(["a", "b", "c", "d", "bc"], [("b", "c")])
    t = teacher(["ab", "c"], [{"ab": 0.6, "a": 0.3}, {"c": 0.8, "d": 0.2}])
    ids, targets, stats = align_row(t, "abc", student)
    assert [student.tokenizer.convert_ids_to_tokens(i) for i in ids] == ["a", "bc"]
    # "a" starts where the teacher does: every listed teacher token that begins with "a" (0.6 + 0.3), and the
    # teacher's unlisted 0.1 stays in the rest bucket.
    assert as_probs(targets[0], student) == {"a": 0.9}
    # "bc" starts inside the teacher's "ab": given the prefix "a", the teacher's paths are "ab" then "c" (0.8)
    # or "ab" then "d" (0.2, whose first student token is "b"); the split "a" | ? is conditioned away.
    assert as_probs(targets[1], student) == {"bc": 0.8, "b": 0.2}
    assert stats.positions == 2 and stats.shared_boundary == 1 and stats.same_token == 0
    assert stats.tail_mass == pytest.approx(0.1)
    assert stats.realised_mass == pytest.approx(0.9 + 0.8)


def test_one_student_token_over_two_teacher_tokens_is_the_chain_rule() -> None:
    # Digit pairs against single digits: p("07") = p("0") * p("7" | "0"); the alternatives of each step go
    # to the student tokens their known bytes begin with.
    vocab = ["0", "1", "7", "8", "=", "07", "08", "17", "=0"]
    student = toy_student(vocab, [("0", "7"), ("0", "8"), ("1", "7"), ("=", "0")])
    t = teacher(["=", "0", "7"], [{"=": 1.0}, {"0": 0.9, "1": 0.1}, {"7": 0.7, "8": 0.25}])
    ids, targets, stats = align_row(t, "=07", student)
    assert [student.tokenizer.convert_ids_to_tokens(i) for i in ids] == ["=", "07"]
    assert as_probs(targets[0], student) == {"=": 1.0}
    probs = as_probs(targets[1], student)
    # "1" in place of "0" is assumed to be followed by what followed "0" ("7"): the student's pair "17"
    assert probs == {"07": pytest.approx(0.63), "08": pytest.approx(0.225), "17": pytest.approx(0.1)}
    # the rest bucket is the teacher's unlisted mass at "7", carried by the path that reached it: 0.9 * 0.05
    assert 1 - sum(probs.values()) == pytest.approx(0.045)
    assert stats.approximate_mass == pytest.approx(0.1)  # placed through that assumed continuation: measured


def test_an_alternative_is_read_with_what_the_teacher_writes_after_it() -> None:
    # The student merges a word with what follows it ("likes▁a", "sings."); the teacher's alternative
    # " likes" in place of the sentence's last verb " sings" is never followed by "." in its own text, so
    # it is read with what the teacher does write after it (" a" twice as often as " one"), not as "likes."
    merges = [("s", "."), ("e", "s."), ("l", "i"), ("li", "k"), ("e", "s"), ("lik", "es"), ("likes", " "),
              ("likes ", "a"), ("o", "n"), ("on", "e"), ("likes ", "one"), ("s", "i"), ("si", "n"),
              ("sin", "g"), ("sing", "s.")]
    vocab = list("likesnga. o") + ["".join(m) for m in merges]
    student = toy_student(vocab, merges)
    t = teacher(["sings", "."], [{"sings": 0.6, "likes": 0.4}, {".": 1.0}])
    _, plain, _ = align_row(t, "sings.", student)
    assert as_probs(plain[0], student) == {"sings.": 0.6, "lik": 0.4}  # "likes." as the student spells it
    habits = Continuations()
    for pieces in (["likes", " a"], ["likes", " a"], ["likes", " one"], ["sings", "."]):
        habits.learn(TeacherTokens([p.encode() for p in pieces], [0.0] * 2, [[], []]))
    _, read, stats = align_row(t, "sings.", student, continuations=habits)
    assert as_probs(read[0], student) == {"sings.": 0.6, "likes a": pytest.approx(0.4 * 2 / 3, abs=1e-6),
                                          "likes one": pytest.approx(0.4 / 3, abs=1e-6)}
    assert stats.approximate_mass == pytest.approx(0.4)


def test_end_of_text_and_misspelt_rows() -> None:
    student = toy_student(["a", "b", "ab"], [("a", "b")])
    t = teacher(["a", "b"], [{"a": 1.0}, {"b": 0.6, END: 0.4}])
    _, targets, _ = align_row(t, "ab", student)
    # "ab" spans both teacher tokens: the teacher's end candidate after "a" ends the text there, and the
    # student spells that "a" then its end token; the sampled path "a" "b" gives the student's own "ab".
    assert as_probs(targets[0], student) == {"ab": 0.6, "a": 0.4}
    # An end candidate where the student token starts ends the student's text at once.
    t0 = teacher(["ab"], [{"ab": 0.7, END: 0.3}])
    _, targets, _ = align_row(t0, "ab", student)
    assert as_probs(targets[0], student) == {"ab": 0.7, "<eos>": 0.3}
    # Pieces that do not spell the text: no targets, and the row is counted
    ids, targets, stats = align_row(teacher(["ax"], [{"ax": 1.0}]), "ab", student)
    assert targets is None and stats.rows_unaligned == 1 and ids


def test_the_same_tokenizer_gives_back_the_harvested_top_k(tiny_teacher: Path) -> None:
    from stillwatch.tasks import examples, get_task
    from stillwatch.teachers.completion import SamplingParams
    from stillwatch.teachers.local import LocalTeacher

    local = LocalTeacher.from_dir(tiny_teacher)
    prompts = [e.prompt for e in examples(get_task("story"), 4, 3)]
    outs = local.generate(prompts, SamplingParams(max_tokens=32, temperature=1.0, seed=1, top_logprobs=5))
    vocab = token_bytes(local.tokenizer)
    student = StudentVocab(local.tokenizer)
    checked = 0
    for (c,) in outs:
        tt = teacher_tokens(c, vocab, {local.tokenizer.eos_token_id})
        ids, targets, stats = align_row(tt, c.text, student)
        assert ids == c.token_ids and stats.same_token == stats.positions == len(ids)
        for sampled, pos, target in zip(c.token_ids, c.top_logprobs, targets):
            want = {t: math.exp(lp) for t, lp in pos}
            if sampled not in want:  # a sampled token outside the top k is one more known outcome
                continue
            got = {t: math.exp(lp) for t, lp in target}
            assert got.keys() == want.keys()
            assert max(abs(got[t] - want[t]) for t in want) < 1e-5
            checked += 1
    assert checked > 20


def test_every_target_is_a_distribution_with_its_rest_bucket(tiny_teacher: Path) -> None:
    # Real teacher rows onto tokenizer B: masses in [0, 1], summing to at most 1; the rest is the bucket.
    from stillwatch.tasks import examples, get_task
    from stillwatch.teachers.completion import SamplingParams
    from stillwatch.teachers.local import LocalTeacher

    local = LocalTeacher.from_dir(tiny_teacher)
    prompts = [e.prompt for name in ("add", "story") for e in examples(get_task(name), 3, 5)]
    outs = local.generate(prompts, SamplingParams(max_tokens=48, temperature=1.0, seed=2, top_logprobs=8))
    aligner = Aligner(StudentVocab(train_tokenizer_b()), token_bytes(local.tokenizer), {local.tokenizer.eos_token_id})
    for (c,) in outs:
        ids, targets = aligner(c)
        assert targets is not None and len(targets) == len(ids)
        for target in targets:
            total = sum(math.exp(lp) for _, lp in target)
            assert target and total <= 1 + 1e-6 and all(lp <= 1e-6 for _, lp in target)
    s = aligner.stats.summary()
    assert s["rows_unaligned"] == 0 and s["positions"] > 50
    assert 0 < s["shared_boundary_fraction"] < 1 and 0 <= s["mean_tail_mass"] < 0.5


@pytest.fixture(scope="module")
def cross_store(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A harvest of the tiny teacher (tokenizer A) with top-4 logprobs, and its vocabulary recorded."""
    path = tmp_path_factory.mktemp("cross") / "store.db"
    main(["harvest", "--teacher", str(tiny_teacher), "--task", "add", "--task", "story", "--n", "12",
          "--out", str(path), "--logprobs", "4", "--max-tokens", "48", "--concurrency", "32", "--no-progress"])
    with HarvestStore(path) as store:
        info = store.meta()["tokenizer"]
        if "tokens" not in info:  # a harvest that kept only ids: record what spells them
            store.set_meta(tokenizer={**info, "tokens": token_strings(load_tokenizer(tiny_teacher))})
    return path


def test_kd_across_tokenizers_end_to_end(cross_store: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "kd-b"
    main(["distill", "--data", str(cross_store), "--out", str(out), "--preset", "student-b", "--loss", "kd",
          "--steps", "3", "--batch-size", "8"])
    from stillwatch.models import load_model, read_card

    card = read_card(out)
    assert card["train"]["steps"] == 3 and card["train"]["final_loss"] == card["train"]["final_loss"]
    aligned = card["data"]["aligned"]
    assert aligned["rows"] == 24 and aligned["rows_unaligned"] == 0 and aligned["positions"] > 100
    assert card["teacher_tokens"]["total"] > 0
    _, tok = load_model(out)
    assert len(tok) == len(train_tokenizer_b()) != len(load_tokenizer(tiny_teacher))
    # An in-process teacher scores the text in its own tokens, and its top k is aligned the same way: white-box
    # kd over the harvest's text, and on-policy over the student's own samples.
    for loss, extra in (("kd", {}), ("on-policy", {"lmbda": 1.0, "teacher_top_k": 8})):
        card = distill(cross_store, tmp_path / loss, DistillConfig(loss=loss, steps=2, **FAST, **extra),  # type: ignore[arg-type]
                       preset="student-b", teacher=tiny_teacher, progress=False)
        assert card["train"]["final_loss"] == card["train"]["final_loss"], loss
        assert card["teacher_tokens"]["scored"] > 0 and card["data"]["aligned"]["positions"] > 0, loss
    # An endpoint scores token ids of its own vocabulary: on-policy through one cannot cross tokenizers.
    with pytest.raises(TokenizerMismatchError, match="not supported across tokenizers"):
        distill(cross_store, tmp_path / "op-endpoint", DistillConfig(loss="on-policy", steps=2, **FAST),
                preset="student-b", endpoint="http://127.0.0.1:9/v1", progress=False)


def test_an_id_only_harvest_without_its_vocabulary_is_refused(cross_store: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.db"
    shutil.copy(cross_store, bare)
    with HarvestStore(bare) as store:
        info = store.meta()["tokenizer"]
        store.set_meta(tokenizer={k: v for k, v in info.items() if k != "tokens"})
    with pytest.raises(ConfigError, match="vocabulary"):
        distill(bare, tmp_path / "kd", DistillConfig(loss="kd", steps=2, **FAST), preset="student-b", progress=False)
    assert not (tmp_path / "kd" / "model.safetensors").exists()


def test_strings_with_cut_characters_spell_the_text() -> None:
    # What an OpenAI-like endpoint returns for "café" cut inside "é": the byte pieces as surrogate escapes.
    from stillwatch.teachers.completion import UNKNOWN_ID, Completion

    c = Completion(text="café", token_ids=[UNKNOWN_ID] * 3, logprobs=[0.0, 0.0, 0.0], finish_reason="stop",
                   prompt_tokens=1, top_logprobs=[[(UNKNOWN_ID, 0.0)]] * 3, tokens=["caf", "\udcc3", "\udca9"],
                   top_tokens=[["caf"], ["\udcc3"], ["\udca9"]])
    t = teacher_tokens(c, None)
    assert b"".join(t.pieces) == "café".encode() and t.top[1] == [(b"\xc3", 0.0)]


def test_kd_from_a_gateway_that_returns_token_strings(tiny_teacher: Path, tmp_path: Path) -> None:
    # Black box as OpenAI serves it: --server openai sends standard parameters only, and tokens come back as
    # strings. Both a student on another tokenizer and one on the teacher's own learn from that harvest.
    from gateway_helpers import ServerThread

    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.app import create_app
    from stillwatch.guard.db import make_engine, upgrade
    from stillwatch.guard.settings import GuardSettings

    db = f"sqlite:///{tmp_path / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    _, key = AccountStore(engine).create_key("distiller")
    engine.dispose()
    store = tmp_path / "store.db"
    with ServerThread(create_app(GuardSettings(teacher=tiny_teacher, db_url=db, detection=False))) as server:
        main(["harvest", "--endpoint", server.base, "--api-key", key, "--server", "openai", "--task", "add",
              "--n", "6", "--logprobs", "4", "--max-tokens", "40", "--out", str(store), "--no-progress"])
    with HarvestStore(store) as s:
        row = next(iter(s.iter_rows()))
        assert row.completion.tokens and not (s.meta().get("tokenizer") or {}).get("tokens")  # strings only
    for preset in ("student-b", "student-tiny"):
        card = distill(store, tmp_path / preset, DistillConfig(loss="kd", steps=2, **FAST), preset=preset,
                       progress=False)
        aligned = card["data"]["aligned"]
        assert aligned["rows"] == 6 and aligned["rows_unaligned"] == 0 and aligned["positions"] > 30, preset
    # The same tokenizer, spelled by strings: every student token is one teacher token
    assert aligned["same_token_fraction"] == 1.0


def test_tokenizer_b_is_another_family_over_the_same_text() -> None:
    from stillwatch.models import build_model, count_parameters
    from stillwatch.tasks import examples, get_task
    from stillwatch.tokenizer import train_tokenizer

    a, b = train_tokenizer(), train_tokenizer_b()
    shared = {"add": 0, "story": 0}
    total = dict(shared)
    for name in shared:
        for e in examples(get_task(name), 20, 4):
            text = e.prompt + e.trace
            ids = b(text, add_special_tokens=False)["input_ids"]
            assert b.decode(ids) == text and b.unk_token_id not in ids  # lossless on the task world
            cuts_a = {s for s, _ in a(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]}
            cuts_b = [s for s, _ in b(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
            shared[name] += sum(c in cuts_a for c in cuts_b)
            total[name] += len(cuts_b)
    # digits one per token in both, as Llama's and Qwen's; the answer marker and everything around words differ
    assert b.convert_ids_to_tokens(b("85 -> 7", add_special_tokens=False)["input_ids"]) == ["8", "5", "\u2581->\u2581", "7"]
    assert a.convert_ids_to_tokens(a("85 -> 7", add_special_tokens=False)["input_ids"]) == ["8", "5", "\u0120->", "\u0120", "7"]
    assert shared["story"] / total["story"] < 0.5  # the two cut stories at other places
    assert len(b.get_vocab().keys() & a.get_vocab().keys()) < 0.5 * len(b)
    assert count_parameters(build_model("student-b", b)) * 10 <= count_parameters(build_model("default", a))
