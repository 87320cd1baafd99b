"""Distillation batches from a harvest store or a list of rows, as a pure function of the training step.

A row becomes prompt ids + completion ids (+ the end token when the teacher stopped), with labels on the
completion only, and, when the harvest kept them, the teacher's top-k ids and logprobs aligned to the
completion positions. Rows are shuffled epoch by epoch with a seed: a store that fits the buffer is encoded
once and permuted per epoch; a larger one streams through a seeded shuffle buffer and is replayed from the
start of the epoch when a run resumes, so step s always sees the same global batch in any process.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from stillwatch.data import IGNORE
from stillwatch.errors import ConfigError, TokenizerMismatchError
from stillwatch.teachers.completion import Completion

Batch = dict[str, torch.Tensor]


@dataclass
class Row:
    """The part of a harvested row that distillation needs (a `HarvestRow` works too: same attribute names)."""

    prompt: str
    completion: Completion


@dataclass
class EncodedRow:
    """A row in token ids; `topk_*` are [completion tokens, k] arrays, absent when the harvest kept no top k."""

    prompt: str
    prompt_ids: np.ndarray
    completion_ids: np.ndarray  # ends with eos when the teacher stopped
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    teacher_tokens: int  # completion tokens the teacher produced for this row
    key: int | None = None  # the row's index in its source (storage order); None for on-policy samples


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary and special tokens: equal fingerprints mean equal token ids."""
    payload = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]),
               "eos": tokenizer.eos_token, "pad": tokenizer.pad_token}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=True).encode()).hexdigest()[:16]


def check_tokenizers(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase | str | None,
                     what: str = "teacher") -> None:
    """Raise TokenizerMismatchError when the student's tokenizer differs from the teacher's (or its fingerprint)."""
    if teacher is None:
        return
    theirs = teacher if isinstance(teacher, str) else tokenizer_fingerprint(teacher)
    ours = tokenizer_fingerprint(student)
    if theirs != ours:
        size = "" if isinstance(teacher, str) else f" ({len(teacher)} tokens vs the student's {len(student)})"
        raise TokenizerMismatchError(
            f"the {what}'s tokenizer (fingerprint {theirs}) differs from the student's ({ours}){size}: logits "
            "over one vocabulary cannot train a student on another; use --loss kd on a harvest (its top k is "
            "aligned across tokenizers) or --loss sft, or --init with a student on the teacher's tokenizer")


def _prompt_text(prompt: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """A prompt string; chat messages (the HF datasets convention) go through the chat template."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False)
    raise ConfigError(f"a harvested prompt must be text or chat messages, got {type(prompt).__name__}")


def _target_arrays(targets: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-position (id, logprob) lists as dense [positions, k] arrays, -inf marking missing entries."""
    k = max((len(t) for t in targets), default=0) or 1
    top_ids = np.zeros((len(targets), k), dtype=np.int32)
    top_lp = np.full((len(targets), k), -np.inf, dtype=np.float32)
    for t, pos in enumerate(targets):
        for j, (tid, lp) in enumerate(pos):
            top_ids[t, j], top_lp[t, j] = tid, lp
    return top_ids, top_lp


def encode_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Any], retokenize: bool = False,
                aligner: Any = None) -> list[EncodedRow]:
    """Token ids for rows with `.prompt` and `.completion`; `retokenize` re-encodes the teacher's text (sft only).

    With an `aligner` (`distill.align.Aligner`, a student whose tokenizer is not the teacher's) the text is
    re-encoded too, and the teacher's top k is aligned onto the student's tokens (cross-tokenizer kd).
    """
    prompts = [_prompt_text(r.prompt, tokenizer) for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    texts = [r.completion.text for r in rows] if retokenize and aligner is None else None
    retok = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else None
    eos = tokenizer.eos_token_id
    out = []
    for i, (row, text, ids) in enumerate(zip(rows, prompts, prompt_ids)):
        c: Completion = row.completion
        top_ids = top_lp = None
        if aligner is not None:
            student_ids, targets = aligner(c)
            tokens = list(student_ids) + ([eos] if c.finish_reason == "stop" else [])
            if targets is not None:
                top_ids, top_lp = _target_arrays(targets)
            out.append(EncodedRow(text, np.asarray(ids, dtype=np.int32), np.asarray(tokens, dtype=np.int32),
                                  top_ids, top_lp, c.completion_tokens))
            continue
        tokens = list(retok[i]) if retok is not None else list(c.token_ids)
        if c.finish_reason == "stop":
            tokens.append(eos)
        if c.top_logprobs and not retokenize:
            k = max(len(p) for p in c.top_logprobs)
            n = min(len(c.top_logprobs), len(c.token_ids))
            top_ids = np.zeros((n, k), dtype=np.int32)
            top_lp = np.full((n, k), -np.inf, dtype=np.float32)  # -inf marks a missing entry
            for t, pos in enumerate(c.top_logprobs[:n]):
                for j, (tid, lp) in enumerate(pos):
                    if tid < 0:  # a candidate the endpoint named only by a string outside this vocabulary
                        continue
                    top_ids[t, j], top_lp[t, j] = tid, lp
        out.append(EncodedRow(text, np.asarray(ids, dtype=np.int32), np.asarray(tokens, dtype=np.int32),
                              top_ids, top_lp, c.completion_tokens))
    return out


def collate(rows: Sequence[EncodedRow], pad_id: int, max_length: int = 256, with_topk: bool = True) -> Batch:
    """Right-padded `input_ids`, `attention_mask`, `labels` (completion only) and, when any row has them,
    `topk_ids`/`topk_logprobs`/`topk_valid` [B, L, k] and `has_topk` [B, L] at each completion token's position.
    Also left-padded `prompt_ids`/`prompt_mask` for on-policy sampling."""
    seqs = [np.concatenate([r.prompt_ids, r.completion_ids])[:max_length] for r in rows]
    width = max(len(s) for s in seqs)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, seqs)):
        input_ids[i, : len(s)] = torch.from_numpy(s.astype(np.int64))
        attention[i, : len(s)] = 1
        labels[i, len(r.prompt_ids): len(s)] = input_ids[i, len(r.prompt_ids): len(s)]
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    pw = max(len(r.prompt_ids) for r in rows)
    prompt_ids = torch.full((b, pw), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, pw), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.prompt_ids)
        if n:
            prompt_ids[i, pw - n:] = torch.from_numpy(r.prompt_ids.astype(np.int64))
            prompt_mask[i, pw - n:] = 1
    batch.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    if with_topk and any(r.topk_ids is not None for r in rows):
        k = max(r.topk_ids.shape[1] for r in rows if r.topk_ids is not None)
        topk_ids = torch.zeros((b, width, k), dtype=torch.long)
        topk_lp = torch.full((b, width, k), float("-inf"))
        for i, (r, s) in enumerate(zip(rows, seqs)):
            if r.topk_ids is None:
                continue
            start = len(r.prompt_ids)
            n = max(0, min(len(r.topk_ids), len(s) - start))
            topk_ids[i, start:start + n, : r.topk_ids.shape[1]] = torch.from_numpy(r.topk_ids[:n].astype(np.int64))
            topk_lp[i, start:start + n, : r.topk_ids.shape[1]] = torch.from_numpy(r.topk_logprobs[:n])
        valid = torch.isfinite(topk_lp)
        batch.update(topk_ids=topk_ids, topk_logprobs=topk_lp.masked_fill(~valid, 0.0), topk_valid=valid,
                     has_topk=valid.any(-1))
    return batch


def completion_start(batch: Batch) -> int:
    """The first position whose logits any loss needs: the last prompt token of the shortest prompt."""
    if "prompt_mask" not in batch:
        return 0
    return max(0, int(batch["prompt_mask"].sum(1).min()) - 1)


def shift(batch: Batch, start: int = 0) -> Batch:
    """Align targets with logits: position t of the result is what logits[:, start + t] predicts (token start+t+1)."""
    out = {"labels": batch["labels"][:, start + 1:]}
    for key in ("topk_ids", "topk_logprobs", "topk_valid", "has_topk", "teacher_token_logprobs", "has_teacher_lp"):
        if key in batch:
            out[key] = batch[key][:, start + 1:]
    return out


def forward_logits(model: torch.nn.Module, batch: Batch, start: int = 0) -> torch.Tensor:
    """Next-token logits for positions [start, L - 1): the prompt head is skipped (the LM head is a large share
    of a small model's compute), and no KV cache is built during training."""
    width = batch["input_ids"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                logits_to_keep=width - start)
    return out.logits[:, :-1]


class RowSource:
    """An epoch-shuffled stream of encoded rows where global position p is a pure function of (seed, p).

    `source` is a path to a harvest store or a sequence of rows. Stores of at most `buffer_rows` rows are
    encoded once and permuted per epoch; larger ones stream through a shuffle buffer of that size (memory
    bounded), and a jump backwards (a resumed run) replays the epoch from its start.
    """

    def __init__(self, source: str | Path | Sequence[Any], tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                 retokenize: bool = False, buffer_rows: int = 50_000, read_batch: int = 1000, with_top: bool = True,
                 aligner: Any = None):
        self.source, self.tokenizer, self.seed, self.with_top = source, tokenizer, seed, with_top
        self.aligner = aligner  # cross-tokenizer kd: see `encode_rows`
        self.retokenize, self.buffer_rows, self.read_batch = retokenize, buffer_rows, read_batch
        self._store = None
        self.n = self._count()
        if self.n == 0:
            raise ConfigError(f"no rows to distill from in {source if isinstance(source, (str, Path)) else 'the list'}")
        self._cache: list[EncodedRow] | None = None
        self._stream: Iterator[EncodedRow] | None = None
        self._stream_pos, self._stream_epoch = -1, -1
        self._epoch_orders: dict[int, list[int]] = {}

    # -- reading -------------------------------------------------------------------------------------
    def _open(self):
        if self._store is None:
            from stillwatch.harvest.store import HarvestStore

            self._store = HarvestStore(self.source)
        return self._store

    def _count(self) -> int:
        if isinstance(self.source, (str, Path)):
            return int(self._open().count())
        return len(self.source)

    def _raw(self) -> Iterator[list[Any]]:
        """Rows in storage order, in chunks."""
        if isinstance(self.source, (str, Path)):
            chunk: list[Any] = []
            with_top = self.with_top and (not self.retokenize or self.aligner is not None)
            for row in self._open().iter_rows(batch_size=self.read_batch, with_top=with_top):
                chunk.append(row)
                if len(chunk) == self.read_batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        else:
            for i in range(0, self.n, self.read_batch):
                yield list(self.source[i:i + self.read_batch])

    def first_rows(self, limit: int) -> Iterator[Any]:
        """Up to `limit` rows as stored, unencoded, in storage order."""
        seen = 0
        for chunk in self._raw():
            for row in chunk[:limit - seen]:
                yield row
            seen += len(chunk)
            if seen >= limit:
                return

    def _encoded(self) -> Iterator[EncodedRow]:
        key = 0
        for chunk in self._raw():
            for row in encode_rows(self.tokenizer, chunk, self.retokenize, self.aligner):
                row.key, key = key, key + 1
                yield row

    def meta(self) -> dict:
        """The store's metadata, or {} for a list of rows."""
        return dict(self._open().meta() or {}) if isinstance(self.source, (str, Path)) else {}

    def close(self) -> None:
        """Close the store if one is open."""
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- ordering ------------------------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        return self.n <= self.buffer_rows

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_orders:
            order = list(range(self.n))
            random.Random(f"distill:{self.seed}:{epoch}").shuffle(order)
            self._epoch_orders = {epoch: order}  # keep one epoch: bounded memory
        return self._epoch_orders[epoch]

    def _buffered_epoch(self, epoch: int) -> Iterator[EncodedRow]:
        """A seeded shuffle-buffer pass over the store (uniform once the buffer holds everything)."""
        rng = random.Random(f"distill:{self.seed}:{epoch}")
        buffer: list[EncodedRow] = []
        for row in self._encoded():
            if len(buffer) < self.buffer_rows:
                buffer.append(row)
                continue
            i = rng.randrange(len(buffer))
            yield buffer[i]
            buffer[i] = row
        rng.shuffle(buffer)
        yield from buffer

    def row_at(self, position: int) -> EncodedRow:
        """The row at global stream position `position` (epoch = position // n)."""
        epoch, offset = divmod(position, self.n)
        if self.in_memory:
            if self._cache is None:
                self._cache = list(self._encoded())
            return self._cache[self._order(epoch)[offset]]
        if self._stream is None or position <= self._stream_pos or epoch != self._stream_epoch:
            self._stream, self._stream_pos, self._stream_epoch = self._buffered_epoch(epoch), epoch * self.n - 1, epoch
        row = None
        while self._stream_pos < position:
            row = next(self._stream)
            self._stream_pos += 1
        return row  # type: ignore[return-value]

    def rows(self, start: int, count: int) -> list[EncodedRow]:
        """`count` consecutive rows from global position `start`."""
        return [self.row_at(p) for p in range(start, start + count)]

    def indices_used(self, positions: Iterable[int]) -> set[int] | None:
        """Distinct store rows behind these positions (in-memory mode), or None when streaming."""
        if not self.in_memory:
            return None
        return {self._order(p // self.n)[p % self.n] for p in sorted(positions)}

    def teacher_tokens(self, indices: Iterable[int]) -> int:
        """Completion tokens the teacher produced for these row indices (in-memory mode)."""
        if self._cache is None:
            self._cache = list(self._encoded())
        return sum(self._cache[i].teacher_tokens for i in indices)


class BatchMaker:
    """`make_batch(step, rank, world)` for the shared training loop: this rank's share of global batch `step`."""

    def __init__(self, source: RowSource, batch_size: int, pad_id: int, max_length: int = 256,
                 with_topk: bool = True):
        self.source, self.batch_size, self.pad_id = source, batch_size, pad_id
        self.max_length, self.with_topk = max_length, with_topk

    @lru_cache(maxsize=4)
    def global_rows(self, step: int) -> list[EncodedRow]:
        """The rows of global batch `step`: positions [step * B, (step + 1) * B) of the shuffled stream."""
        return self.source.rows(step * self.batch_size, self.batch_size)

    def shard(self, step: int, rank: int, world: int) -> list[EncodedRow]:
        """This rank's rows of global batch `step` (strided, so every rank gets a near-equal share)."""
        return self.global_rows(step)[rank::world]

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        return collate(self.shard(step, rank, world), self.pad_id, self.max_length, self.with_topk)
