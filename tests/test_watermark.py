"""Watermark: key derivation, green lists, known counts, agreement with transformers' WatermarkDetector, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import binom
from transformers import LlamaConfig, WatermarkDetector
from transformers.generation.logits_process import WatermarkLogitsProcessor

from stillwatch.errors import ConfigError
from stillwatch.forensics.watermark import (TRANSFORMERS_DEFAULT_KEY, WatermarkConfig, detect, gateway_processor,
                                            green_oracle, load_watermark_key, watermark_processor)

V = 453


def _chain(config: WatermarkConfig, pattern: str, start: list[int]) -> list[int]:
    """Tokens that follow `start`, each green (G) or red (R) for the window before it, all distinct bigrams."""
    oracle = green_oracle(config, V)
    seq, used = list(start), set()
    for want in pattern:
        window = seq[len(seq) - config.window:] if config.window else []
        for token in range(2, V):
            if oracle.is_green(window, token) == (want == "G") and (*window, token) not in used:
                break
        used.add((*window, token))
        seq.append(token)
    return seq[len(start):]


def test_key_is_derived_from_the_secret_and_never_the_public_default():
    a, b = WatermarkConfig(key="alpha"), WatermarkConfig(key="beta")
    assert a.hashing_key != b.hashing_key
    assert a.hashing_key == WatermarkConfig(key="alpha").hashing_key
    assert TRANSFORMERS_DEFAULT_KEY not in (a.hashing_key, b.hashing_key)
    assert 0 < a.hashing_key < 2**63
    assert "alpha" not in repr(a) and "alpha" not in json.dumps(a.public_dict())
    with pytest.raises(ConfigError):
        WatermarkConfig(key="")
    with pytest.raises(ConfigError):
        WatermarkConfig(key="k", gamma=1.0)


def test_key_loader_reads_file_then_env(tmp_path, monkeypatch):
    monkeypatch.delenv("STILLWATCH_WATERMARK_KEY", raising=False)
    assert load_watermark_key(None) is None
    monkeypatch.setenv("STILLWATCH_WATERMARK_KEY", "from-env")
    assert load_watermark_key(None) == "from-env"
    f = tmp_path / "key"
    f.write_text("from-file\n")
    assert load_watermark_key(f) == "from-file"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError):
        load_watermark_key(tmp_path / "empty")
    with pytest.raises(ConfigError):
        load_watermark_key(tmp_path / "missing")


def test_green_lists_are_transformers_own_for_one_token_windows():
    config = WatermarkConfig(key="k1")
    theirs = WatermarkLogitsProcessor(V, "cpu", greenlist_ratio=0.25, bias=2.0, hashing_key=config.hashing_key)
    oracle = green_oracle(config, V)
    for token in (5, 77, 300):
        expected = set(theirs._get_greenlist_ids(torch.tensor([9, token])).tolist())
        assert set(oracle.green_mask([token]).nonzero().squeeze(1).tolist()) == expected
        assert len(expected) == int(V * 0.25)


def test_processor_adds_delta_to_green_tokens_exactly_like_transformers():
    config = WatermarkConfig(key="k2", delta=1.5)
    ours = watermark_processor(config, V)
    theirs = WatermarkLogitsProcessor(V, "cpu", greenlist_ratio=0.25, bias=1.5, hashing_key=config.hashing_key)
    ids = torch.randint(2, V, (4, 7), generator=torch.Generator().manual_seed(0))
    scores = torch.randn(4, V + 3)  # models may pad their vocabulary beyond the tokenizer's
    assert torch.allclose(ours(ids, scores), theirs(ids, scores))
    bumped = (ours(ids, scores) - scores)[:, :V]
    assert ((bumped.abs() < 1e-5) | ((bumped - 1.5).abs() < 1e-5)).all()
    assert (bumped > 1).sum(dim=1).tolist() == [int(V * 0.25)] * 4


def test_wide_lefthash_window_uses_every_token_of_the_window():
    config = WatermarkConfig(key="k3", context_width=3)
    oracle = green_oracle(config, V)
    base = oracle.green_mask([10, 20, 30])
    assert not torch.equal(base, oracle.green_mask([11, 20, 30]))  # transformers would ignore the first token
    assert not torch.equal(base, oracle.green_mask([10, 21, 30]))
    assert torch.equal(base, oracle.green_mask([99, 10, 20, 30]))  # only the last three count


@pytest.mark.parametrize("width", [1, 2])
def test_detection_on_constructed_texts_with_known_counts(width):
    config = WatermarkConfig(key="counts", context_width=width)
    prompt = [40, 41, 42]
    pattern = "GGRGRRGGGGRG"  # 8 green of 12
    tokens = _chain_with_prompt(config, pattern, prompt)
    r = detect(tokens, config, prompt_ids=prompt, vocab_size=V)
    assert (r["num_tokens_scored"], r["num_green_tokens"]) == (12, 8)
    assert r["z_score"] == pytest.approx((8 - 0.25 * 12) / math.sqrt(12 * 0.25 * 0.75))
    assert r["p_value"] == pytest.approx(1 - 0.5 * math.erfc(-r["z_score"] / math.sqrt(2)), rel=1e-9)
    assert r["binomial_p_value"] == pytest.approx(binom.sf(7, 12, 0.25))
    assert r["prediction"] is (r["z_score"] >= 4.0)
    # the prompt is never scored: all-green prompt tokens add nothing
    r2 = detect(tokens, config, prompt_ids=prompt + [], vocab_size=V)
    assert r2["num_tokens_scored"] == 12
    # without the prompt, the first `width` tokens only serve as context
    r3 = detect(tokens, config, vocab_size=V)
    assert r3["num_tokens_scored"] == 12 - width


def _chain_with_prompt(config, pattern, prompt):
    return _chain(config, pattern, prompt)


def test_repeated_ngrams_are_scored_once():
    config = WatermarkConfig(key="repeats")
    green = _chain(config, "GGG", [50])
    text = [50] + green * 4  # the same bigrams again and again
    once = detect(text, config, vocab_size=V)
    every = detect(text, config, vocab_size=V, ignore_repeated_ngrams=False)
    assert every["num_tokens_scored"] == len(text) - 1
    assert once["num_tokens_scored"] == len({(a, b) for a, b in zip(text, text[1:])})
    assert once["num_tokens_scored"] < every["num_tokens_scored"]


@pytest.mark.parametrize("width,seeding", [(1, "lefthash"), (2, "selfhash")])
@pytest.mark.parametrize("ignore", [True, False])
def test_z_scores_agree_with_transformers_watermark_detector(width, seeding, ignore):
    config = WatermarkConfig(key="agree", context_width=width, seeding=seeding)
    model_config = LlamaConfig(vocab_size=V, bos_token_id=0)
    detector = WatermarkDetector(model_config=model_config, device="cpu", watermarking_config=config.to_transformers(),
                                 ignore_repeated_ngrams=ignore)
    rows = torch.randint(2, 40, (4, 48), generator=torch.Generator().manual_seed(1))  # small alphabet: repeats
    rows[0, 10:] = torch.tensor(_chain(config, "G" * 38, rows[0, :10].tolist()))  # one strongly green row
    theirs = detector(rows, return_dict=True)
    for i, row in enumerate(rows.tolist()):
        ours = detect(row, config, ignore_repeated_ngrams=ignore, vocab_size=V)
        assert ours["num_tokens_scored"] == theirs.num_tokens_scored[i]
        assert ours["num_green_tokens"] == theirs.num_green_tokens[i]
        assert ours["z_score"] == pytest.approx(theirs.z_score[i], abs=1e-9)
        assert ours["p_value"] == pytest.approx(float(theirs.p_value[i]), rel=1e-6, abs=1e-12)
    assert theirs.z_score[0] > 4


def test_watermarked_generation_is_detected_and_plain_is_not(tiny_teacher, one_thread):
    from stillwatch.tasks import examples, get_task
    from stillwatch.teachers.completion import SamplingParams
    from stillwatch.teachers.local import LocalTeacher

    teacher = LocalTeacher.from_dir(tiny_teacher)
    tok = teacher.tokenizer
    config = WatermarkConfig(key="gen")
    prompts = [e.prompt for e in examples(get_task("story"), 24, 3)]
    params = SamplingParams(max_tokens=48, temperature=1.0, seed=5)
    marked = teacher.generate(prompts, params, extra_processors=[watermark_processor(config, len(tok))])
    plain = teacher.generate(prompts, params)

    def pooled(outputs):
        ids = [(tok(p, add_special_tokens=False)["input_ids"], o[0].token_ids) for p, o in zip(prompts, outputs)]
        rs = [detect(c, config, p, vocab_size=len(tok)) for p, c in ids]
        n, g = sum(r["num_tokens_scored"] for r in rs), sum(r["num_green_tokens"] for r in rs)
        return (g - 0.25 * n) / math.sqrt(n * 0.25 * 0.75)

    assert pooled(marked) > 6
    assert abs(pooled(plain)) < 4


def test_gateway_processor_reads_the_settings(tiny_teacher):
    from stillwatch.guard.settings import GuardSettings
    from stillwatch.teachers.local import LocalTeacher

    teacher = LocalTeacher.from_dir(tiny_teacher)
    proc = gateway_processor(GuardSettings(watermark_key="s3cret", watermark_delta=1.0), teacher)
    assert proc.bias == 1.0 and proc.hash_key == WatermarkConfig(key="s3cret").hashing_key
    with pytest.raises(ConfigError):
        gateway_processor(GuardSettings(), teacher)


def test_cli_detect_text_and_file(tiny_teacher, tmp_path, monkeypatch, capsys):
    from stillwatch.cli import main
    from stillwatch.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_teacher)
    config = WatermarkConfig(key="cli-key")
    prompt = "story: fox\n"
    ids = _chain(config, "G" * 30, tok(prompt, add_special_tokens=False)["input_ids"])
    text = tok.decode(ids)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids  # text round-trips to the same tokens
    (tmp_path / "key").write_text("cli-key\n")
    monkeypatch.delenv("STILLWATCH_WATERMARK_KEY", raising=False)
    main(["watermark", "detect", "--text", text, "--prompt", prompt, "--tokenizer", str(tiny_teacher),
          "--watermark-key-file", str(tmp_path / "key"), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["prediction"] is True and r["num_green_tokens"] == r["num_tokens_scored"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": prompt, "completion": text}) + "\n"
                    + json.dumps({"prompt": prompt, "completion": "the cat sleeps."}) + "\n")
    monkeypatch.setenv("STILLWATCH_WATERMARK_KEY", "cli-key")
    main(["watermark", "detect", "--file", str(rows), "--tokenizer", str(tiny_teacher), "--json"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["prediction"] for o in out] == [True, False]
    monkeypatch.delenv("STILLWATCH_WATERMARK_KEY")
    with pytest.raises(SystemExit) as exc:
        main(["watermark", "detect", "--text", text, "--tokenizer", str(tiny_teacher)])
    assert exc.value.code == 2
