"""Size presets, and building, saving and loading Hugging Face causal LMs as plain model directories."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase)

from stillwatch.builtin import BUILTIN, BUILTIN_TEACHER_DIR, resolve_model_dir  # noqa: F401 (re-exported)
from stillwatch.errors import ConfigError, ModelDirError
from stillwatch.tokenizer import load_tokenizer

MODEL_CARD = "stillwatch_card.json"


Positions = Literal["rotary", "learned"]


@dataclass(frozen=True)
class Preset:
    """An architecture size: Llama-style (rotary positions) or GPT-2-style (learned absolute positions)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    tie_embeddings: bool = False
    max_positions: int = 256
    positions: Positions = "rotary"
    tokenizer: str = "a"  # the project tokenizer a new model of this preset uses (stillwatch.tokenizer.TOKENIZERS)


PRESETS: dict[str, Preset] = {
    # Teachers learn absolute positions: every built-in prompt has a fixed layout at its default difficulty, so
    # "which prompt digit does this step read" is one attention lookup from position to position. With rotary
    # positions the model must first learn to count steps, a late and seed-dependent phase transition.
    # Their embeddings are untied: tied input/output embeddings kept the story's topic from being copied.
    "default": Preset(hidden=96, layers=3, heads=4, intermediate=384, positions="learned"),
    "tiny": Preset(hidden=64, layers=2, heads=4, intermediate=256, positions="learned"),
    # Students, sized against the default teacher (at most 1/10 of its parameters). They learn absolute
    # positions too, for the same reason; tied embeddings and 128 positions keep the budget.
    "student": Preset(hidden=32, layers=2, heads=4, intermediate=96, tie_embeddings=True, max_positions=128,
                      positions="learned"),
    # The same student on tokenizer B ("▁" spaces after words, pieces across words: another family): 41,792
    # parameters, 1/10.7 of the default teacher. Cross-tokenizer distillation trains it on a harvest of a
    # tokenizer-A teacher.
    "student-b": Preset(hidden=32, layers=2, heads=4, intermediate=96, tie_embeddings=True, max_positions=128,
                        positions="learned", tokenizer="b"),
    "student-rotary": Preset(hidden=32, layers=2, heads=4, intermediate=96, tie_embeddings=True),
    "student-tiny": Preset(hidden=32, layers=1, heads=2, intermediate=96, tie_embeddings=True),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a clear error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def build_model(preset: Preset | str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM of the preset's architecture for `tokenizer`'s vocabulary."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.hidden % p.heads or min(p.hidden, p.layers, p.heads, p.intermediate) < 1:
        raise ConfigError(f"impossible model size: {asdict(p)}")
    torch.manual_seed(seed)
    if p.positions == "learned":
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_embd=p.hidden, n_layer=p.layers, n_head=p.heads, n_inner=p.intermediate,
            n_positions=p.max_positions, tie_word_embeddings=p.tie_embeddings,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # dropout only slows models trained on endless data
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        ))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.heads,
        intermediate_size=p.intermediate,
        max_position_embeddings=p.max_positions,
        tie_word_embeddings=p.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique trainable parameters (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path,
               card: dict | None = None) -> Path:
    """Write a normal HF model directory: config, safetensors, tokenizer and the stillwatch model card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    if card is not None:
        (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """`save_pretrained`, naming the class that transformers 4.x and 5.x both know.

    transformers 5 records its fast tokenizers as `TokenizersBackend`, a class 4.x lacks, so a directory saved
    here would not load there; `PreTrainedTokenizerFast` is the same tokenizer under a name both versions have.
    """
    tokenizer.save_pretrained(out)
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def load_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any HF causal LM directory (or `builtin`) with its tokenizer, or raise ModelDirError."""
    path = resolve_model_dir(path)
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path} is not a model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError, SafetensorError) as exc:
        raise ModelDirError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer


def read_card(path: str | Path) -> dict:
    """The stillwatch model card of a model directory, or {} for a foreign model."""
    card = resolve_model_dir(path) / MODEL_CARD
    return json.loads(card.read_text()) if card.is_file() else {}
