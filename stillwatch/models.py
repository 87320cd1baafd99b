"""Size presets, and building, saving and loading Hugging Face causal LMs as plain model directories."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from stillwatch.errors import ConfigError, ModelDirError
from stillwatch.tokenizer import load_tokenizer

MODEL_CARD = "stillwatch_card.json"


@dataclass(frozen=True)
class Preset:
    """A Llama-style architecture size."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    tie_embeddings: bool = False
    max_positions: int = 256


PRESETS: dict[str, Preset] = {
    # Teachers. `default` is the demo's teacher; `tiny` trains in about a minute, for tests.
    "default": Preset(hidden=96, layers=3, heads=4, intermediate=256),
    "tiny": Preset(hidden=64, layers=2, heads=4, intermediate=176),
    # Students, sized against the default teacher (about 1/10 of its parameters).
    "student": Preset(hidden=32, layers=2, heads=4, intermediate=96, tie_embeddings=True),
    "student-tiny": Preset(hidden=32, layers=1, heads=2, intermediate=96, tie_embeddings=True),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a clear error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def build_model(preset: Preset | str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised Llama-style causal LM for `tokenizer`'s vocabulary."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.hidden % p.heads or min(p.hidden, p.layers, p.heads, p.intermediate) < 1:
        raise ConfigError(f"impossible model size: {asdict(p)}")
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
    torch.manual_seed(seed)
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
    tokenizer.save_pretrained(out)
    if card is not None:
        (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out


def load_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any HF causal LM directory with its tokenizer, or raise ModelDirError."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path} is not a model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise ModelDirError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer


def read_card(path: str | Path) -> dict:
    """The stillwatch model card of a model directory, or {} for a foreign model."""
    card = Path(path) / MODEL_CARD
    return json.loads(card.read_text()) if card.is_file() else {}
