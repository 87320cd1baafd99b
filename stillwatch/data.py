"""Turning (prompt, completion) text pairs into padded training batches with the loss on completions only."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


def encode_pairs(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str],
                 max_length: int = 256) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels`; labels are IGNORE on prompt and padding."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return encode_token_pairs(tokenizer, prompt_ids, [c + [tokenizer.eos_token_id] for c in completion_ids],
                              max_length)


def encode_token_pairs(tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[Sequence[int]],
                       completion_ids: Sequence[Sequence[int]], max_length: int = 256) -> dict[str, torch.Tensor]:
    """Like `encode_pairs`, from token ids (completions already carry their end token when they should)."""
    rows = [(list(p) + list(c))[:max_length] for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, p) in enumerate(zip(rows, prompt_ids)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        labels[i, len(p): len(row)] = input_ids[i, len(p): len(row)]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy on labelled tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    mask = target != IGNORE
    loss = torch.nn.functional.cross_entropy(logits[mask].float(), target[mask], reduction="sum")
    return loss, mask.sum()
