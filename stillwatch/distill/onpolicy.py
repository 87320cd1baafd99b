"""On-policy distillation (GKD): the student samples, the teacher scores the student's own tokens.

Agarwal et al. 2024, "On-Policy Distillation of Language Models" (GKD), Algorithm 1: at each step, with
probability lambda the batch is the student's own samples y ~ q(.|x) for the prompts x, otherwise the
harvested (off-policy) completions; the teacher then gives its distribution at every position of y and
the student minimises a divergence to it. Sampling is seeded by (seed, step, rank), so a resumed run
samples exactly what it would have sampled.

Teachers score through `TeacherScorer`s: an in-process model gives full logits (white-box) or only its top
k (what an API returns); an OpenAI-compatible endpoint scores through `/v1/completions` with echo and
max_tokens=0 (`OpenAITeacher.score`).
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol, Sequence

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel

from stillwatch.distill.data import Batch, EncodedRow, collate, completion_start
from stillwatch.teachers.completion import ScoredText


def is_on_policy_step(step: int, lmbda: float, seed: int = 0) -> bool:
    """GKD's coin flip for step `step`: on-policy with probability `lmbda`, the same in every process."""
    if lmbda >= 1.0:
        return True
    if lmbda <= 0.0:
        return False
    return random.Random(f"gkd:{seed}:{step}").random() < lmbda


@torch.no_grad()
def sample_continuations(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         max_new_tokens: int, temperature: float, seed: int, eos_id: int, pad_id: int
                         ) -> list[list[int]]:
    """Sample one continuation per left-padded prompt, seeded; each ends with eos when the model stopped."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else None, top_k=None, top_p=None,
                              pad_token_id=pad_id, eos_token_id=eos_id)
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    result = []
    for row in out[:, prompt_ids.shape[1]:].tolist():
        if eos_id in row:
            row = row[: row.index(eos_id) + 1]
        elif pad_id in row:
            row = row[: row.index(pad_id)]
        result.append(row)
    return result


def rows_from_samples(prompts: Sequence[EncodedRow], continuations: Sequence[list[int]]) -> list[EncodedRow]:
    """Student samples as rows (no teacher information yet)."""
    return [EncodedRow(p.prompt, p.prompt_ids, np.asarray(c, dtype=np.int32), None, None, 0)
            for p, c in zip(prompts, continuations)]


class TeacherScorer(Protocol):
    """Adds the teacher's view of a batch's completion tokens to the batch."""

    def __call__(self, batch: Batch, rows: Sequence[EncodedRow]) -> Batch:
        ...


def _topk_tensors(batch: Batch, per_row: Sequence[ScoredText], rows: Sequence[EncodedRow]) -> Batch:
    """Scattered top-k (or sampled-token) teacher logprobs at each completion token's position."""
    b, width = batch["input_ids"].shape
    k = max((len(p) for s in per_row if s.top_logprobs for p in s.top_logprobs), default=0)
    device = batch["input_ids"].device
    if k == 0:
        lp = torch.zeros((b, width))
        has = torch.zeros((b, width), dtype=torch.bool)
        for i, (s, r) in enumerate(zip(per_row, rows)):
            start = len(r.prompt_ids)
            n = min(len(s.logprobs), width - start)
            lp[i, start:start + n] = torch.tensor(s.logprobs[:n])
            has[i, start:start + n] = True
        return {**batch, "teacher_token_logprobs": lp.to(device), "has_teacher_lp": has.to(device)}
    ids = torch.zeros((b, width, k), dtype=torch.long)
    lps = torch.full((b, width, k), float("-inf"))
    for i, (s, r) in enumerate(zip(per_row, rows)):
        start = len(r.prompt_ids)
        for t, pos in enumerate((s.top_logprobs or [])[: width - start]):
            for j, (tid, v) in enumerate(pos[:k]):
                ids[i, start + t, j], lps[i, start + t, j] = int(tid), float(v)
    valid = torch.isfinite(lps)
    return {**batch, "topk_ids": ids.to(device), "topk_logprobs": lps.masked_fill(~valid, 0.0).to(device),
            "topk_valid": valid.to(device), "has_topk": valid.any(-1).to(device)}


class LocalScorer:
    """An in-process teacher: full logits (white-box), or only its top `top_k` logprobs (an API's view).

    Full logits of harvested rows are cached per row, up to `cache_mb`: a run of several epochs over a
    harvest runs the teacher once per row instead of once per visit (the teacher is frozen, so the values
    are identical). Student samples (on-policy) are never cached.
    """

    def __init__(self, model: PreTrainedModel, top_k: int = 0, cache_mb: float = 1024):
        self.model, self.top_k = model.eval(), top_k
        self.tokens_scored = 0
        self.cache_bytes, self._cache, self._cached_bytes = int(cache_mb * 2**20), {}, 0

    def _cached_logits(self, batch: Batch, rows: Sequence[EncodedRow], start: int) -> torch.Tensor | None:
        if not rows or any(r.key is None or r.key not in self._cache for r in rows):
            return None
        b, width = batch["input_ids"].shape
        first = next(iter(self._cache.values()))
        logits = torch.zeros((b, width - start, first.shape[-1]), dtype=first.dtype, device=first.device)
        for i, r in enumerate(rows):
            cached = self._cache[r.key]  # positions len(prompt) - 1 ... end - 2 of this row
            offset = len(r.prompt_ids) - 1 - start
            logits[i, offset:offset + len(cached)] = cached
        return logits

    def _remember(self, logits: torch.Tensor, rows: Sequence[EncodedRow], start: int, width: int) -> None:
        for i, r in enumerate(rows):
            if r.key is None or r.key in self._cache:
                continue
            end = min(len(r.prompt_ids) + len(r.completion_ids), width) - 1
            piece = logits[i, len(r.prompt_ids) - 1 - start:end - start].clone()
            if self._cached_bytes + piece.numel() * piece.element_size() > self.cache_bytes:
                return
            self._cache[r.key] = piece
            self._cached_bytes += piece.numel() * piece.element_size()

    @torch.no_grad()
    def __call__(self, batch: Batch, rows: Sequence[EncodedRow]) -> Batch:
        self.tokens_scored += int((batch["labels"] != -100).sum())
        if not self.top_k:  # full logits for the positions `distill_loss` reads (from completion_start on)
            start = completion_start(batch)
            width = batch["input_ids"].shape[1]
            logits = self._cached_logits(batch, rows, start)
            if logits is None:
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    use_cache=False, logits_to_keep=width - start).logits.float()
                if self.cache_bytes:
                    self._remember(logits, rows, start, width)
            return {**batch, "teacher_logits": logits}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).logits.float()
        # logits[:, t] predicts token t+1; store it at t+1, where collate puts a harvested top k.
        values, ids = logits.log_softmax(-1).topk(self.top_k, dim=-1)
        pad_ids = torch.zeros_like(ids[:, :1])
        ids = torch.cat([pad_ids, ids[:, :-1]], dim=1)
        values = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)
        has = batch["labels"] != -100
        valid = has[..., None].expand_as(ids)
        return {**batch, "topk_ids": ids, "topk_logprobs": values.masked_fill(~valid, 0.0), "topk_valid": valid,
                "has_topk": has}


class CrossTokenizerScorer:
    """An in-process teacher with another tokenizer: white-box kd and on-policy across tokenizers.

    Each row's completion (the harvested text, or the student's own sample) is spelled in the teacher's tokens,
    scored in one forward pass, and the teacher's top `top_k` at each of its tokens is aligned onto the
    student's tokens (`distill.align`, the same chain rule as a harvest's top k). Full logits cannot cross: the
    student's vocabulary cannot index the teacher's, so white-box here means "any k the teacher is asked for".
    Harvested rows are cached per row (the teacher is frozen); student samples are scored afresh.
    """

    def __init__(self, model: PreTrainedModel, teacher_tokenizer, student_tokenizer, top_k: int = 32):
        from stillwatch.distill.align import AlignStats, StudentVocab
        from stillwatch.tokenizer import token_bytes

        self.model, self.top_k = model.eval(), top_k
        self.teacher_tokenizer, self.student_tokenizer = teacher_tokenizer, student_tokenizer
        self.vocab = token_bytes(teacher_tokenizer)
        self.end_ids = {teacher_tokenizer.eos_token_id}
        self.student = StudentVocab(student_tokenizer)
        self.stats = AlignStats()
        self.tokens_scored = 0
        self._cache: dict[int, list | None] = {}

    def _targets(self, rows: Sequence[EncodedRow]) -> list[list | None]:
        from stillwatch.distill.align import TeacherTokens, align_row

        eos = self.student_tokenizer.eos_token_id
        own = [[int(t) for t in r.completion_ids if t != eos] for r in rows]
        texts = [self.student_tokenizer.decode(ids, skip_special_tokens=True) for ids in own]
        prompts = self.teacher_tokenizer([r.prompt for r in rows], add_special_tokens=False)["input_ids"]
        comps = self.teacher_tokenizer(texts, add_special_tokens=False)["input_ids"]
        seqs = [list(p) + list(c) for p, c in zip(prompts, comps)]
        width = max(len(x) for x in seqs)
        pad = self.teacher_tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logp = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                              use_cache=False).logits.float().log_softmax(-1).cpu()
        out = []
        for i, (p, c, text) in enumerate(zip(prompts, comps, texts)):
            if not c:
                out.append(None)
                continue
            lp = logp[i, len(p) - 1: len(p) + len(c) - 1]
            values, top = lp.topk(min(self.top_k, lp.shape[-1]), dim=-1)
            sampled = lp.gather(1, torch.tensor(c)[:, None]).squeeze(1).tolist()

            def spell(t: int):
                return None if t in self.end_ids else self.vocab[t]

            listed = [[(spell(t), v) for t, v in zip(ti, vi) if t in self.end_ids or self.vocab[t] is not None]
                      for ti, vi in zip(top.tolist(), values.tolist())]
            teacher = TeacherTokens([self.vocab[t] or b"" for t in c], sampled, listed)
            _, targets, stats = align_row(teacher, text, self.student, student_ids=own[i])
            self.stats.add(stats)
            out.append(targets)
        self.tokens_scored += sum(len(c) for c in comps)
        return out

    def __call__(self, batch: Batch, rows: Sequence[EncodedRow]) -> Batch:
        todo = [i for i, r in enumerate(rows) if r.key is None or r.key not in self._cache]
        fresh = dict(zip(todo, self._targets([rows[i] for i in todo]))) if todo else {}
        per_row = []
        for i, r in enumerate(rows):
            if i in fresh:
                if r.key is not None:
                    self._cache[r.key] = fresh[i]
                per_row.append(fresh[i])
            else:
                per_row.append(self._cache[r.key])
        b, width = batch["input_ids"].shape
        k = max((len(t) for targets in per_row if targets for t in targets), default=1)
        topk_ids = torch.zeros((b, width, k), dtype=torch.long)
        topk_lp = torch.full((b, width, k), float("-inf"))
        for i, (r, targets) in enumerate(zip(rows, per_row)):
            start = len(r.prompt_ids)
            for t, target in enumerate((targets or [])[: max(0, width - start)]):
                for j, (v, lp) in enumerate(target):
                    topk_ids[i, start + t, j], topk_lp[i, start + t, j] = v, lp
        valid = torch.isfinite(topk_lp)
        device = batch["input_ids"].device
        return {**batch, "topk_ids": topk_ids.to(device), "topk_logprobs": topk_lp.masked_fill(~valid, 0.0).to(device),
                "topk_valid": valid.to(device), "has_topk": valid.any(-1).to(device)}


class EndpointScorer:
    """A teacher behind an OpenAI-compatible endpoint: `OpenAITeacher.score` per row, concurrently."""

    def __init__(self, teacher, top_k: int = 5):
        self.teacher, self.top_k = teacher, top_k
        self.loop = asyncio.new_event_loop()  # one loop for the run: the HTTP client's connections live on it
        self.tokens_scored = 0

    def __call__(self, batch: Batch, rows: Sequence[EncodedRow]) -> Batch:
        async def score_all() -> list[ScoredText]:
            return list(await asyncio.gather(*(self.teacher.score(r.prompt, r.completion_ids.tolist(), self.top_k)
                                               for r in rows)))

        scored = self.loop.run_until_complete(score_all())
        self.tokens_scored += sum(len(r.completion_ids) for r in rows)
        return _topk_tensors(batch, scored, rows)

    def close(self) -> None:
        """Close the client and the loop."""
        self.loop.run_until_complete(self.teacher.aclose())
        self.loop.close()


def on_policy_batch(model: PreTrainedModel, batch: Batch, rows: Sequence[EncodedRow], *, pad_id: int, eos_id: int,
                    max_new_tokens: int, temperature: float, seed: int, max_length: int = 256
                    ) -> tuple[Batch, list[EncodedRow]]:
    """Replace a batch's completions with the student's own samples for the same prompts."""
    device = batch["input_ids"].device
    continuations = sample_continuations(model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens,
                                         temperature, seed, eos_id, pad_id)
    new_rows = rows_from_samples(rows, continuations)
    new_batch = {k: v.to(device) for k, v in collate(new_rows, pad_id, max_length, with_topk=False).items()}
    return new_batch, new_rows
