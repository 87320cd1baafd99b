"""The project's tokenizer round-trips task text; models save and load as plain HF directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from stillwatch.errors import ConfigError, ModelDirError
from stillwatch.models import PRESETS, build_model, count_parameters, load_model, save_model
from stillwatch.tasks import TASK_NAMES, examples, get_task
from stillwatch.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer()


def test_round_trip_on_every_task_and_hostile_text(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    texts = [e.prompt + e.trace for n in TASK_NAMES for e in examples(get_task(n), 100, 11)]
    texts += ["héllo 世界 \x00\t  trailing  ", "🙂🙂", "  leading", "a\r\nb"]
    for text in texts:
        for tok in (tokenizer, loaded):
            assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_one_token_each(tokenizer) -> None:
    ids = tokenizer("add: 123456+7", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567")


def test_chat_template_gives_the_task_prompt(tokenizer) -> None:
    msgs = [{"role": "user", "content": "add: 1+2"}]
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == "add: 1+2\n"


def test_presets_and_save_load(tokenizer, tmp_path: Path) -> None:
    sizes = {name: count_parameters(build_model(name, tokenizer)) for name in PRESETS}
    assert sizes["student"] * 10 <= sizes["default"]
    assert sizes["tiny"] < sizes["default"]
    model = build_model("student-tiny", tokenizer, seed=3)
    save_model(model, tokenizer, tmp_path / "m", card={"kind": "test"})
    assert (tmp_path / "m" / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    again, tok = load_model(tmp_path / "m")
    ids = torch.tensor([tok("mul: 12*3\n")["input_ids"]])
    assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5)
    assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)


def test_bad_model_dirs_and_sizes(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError):
        load_model(tmp_path / "missing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError):
        load_model(corrupt)
    with pytest.raises(ConfigError):
        build_model("enormous", tokenizer)
    from stillwatch.models import Preset
    with pytest.raises(ConfigError):
        build_model(Preset(hidden=30, layers=1, heads=4, intermediate=8), tokenizer)
