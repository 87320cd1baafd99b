"""Antidistillation sampling (Savani et al. 2025): poison the teacher's traces for whoever distills them.

The teacher samples from  softmax(z_T(·|x)/τ + λ·Δ(·|x))  where Δ(y|x) = ⟨ĝ, ∇_θ log p_θP(y|x)⟩ is how much a
gradient step of a proxy student θ_P on token y would move it along ĝ = ∇_θ L(θ_P; D_holdout)/‖∇_θ L‖, the direction
that raises its loss on held-out teacher traces. Tokens with Δ > 0 are the ones that, once distilled, make the
student worse at the task (Savani et al., Eq. 6-8).

Approximation (as in the paper): Δ for the whole vocabulary at once by a central finite difference,

    Δ(·|x) ≈ [log p_{θP + εĝ}(·|x) − log p_{θP − εĝ}(·|x)] / 2ε,

which costs two forward passes of the proxy per generated token instead of one backward pass per candidate token.
We normalise the direction (ĝ has unit norm), so λ is in logits per unit of directional derivative and ε is an
absolute step in parameter space. What is cached: the held-out gradient and the two perturbed proxies are built
once per processor; during generation each perturbed proxy keeps a KV cache, so a step costs one new token
through each (the cache is dropped whenever a new batch starts).
"""

from __future__ import annotations

import copy
import inspect
import random
from pathlib import Path
from typing import Sequence

import torch
from transformers import DynamicCache, LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from stillwatch.data import causal_lm_loss, encode_pairs
from stillwatch.errors import ConfigError, TokenizerMismatchError
from stillwatch.forensics.config import AntidistillConfig


def holdout_gradient(proxy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     completions: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
    """∇_θ L(θ_P; D): the gradient of the proxy's mean next-token loss on held-out (prompt, teacher trace) pairs."""
    if not prompts:
        raise ConfigError("antidistillation needs at least one held-out teacher trace")
    params = [p for p in proxy.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total = 0
    proxy.eval()
    for start in range(0, len(prompts), batch_size):
        batch = encode_pairs(tokenizer, prompts[start:start + batch_size], completions[start:start + batch_size])
        batch = {k: v.to(params[0].device) for k, v in batch.items()}
        loss_sum, count = causal_lm_loss(proxy, batch)
        for g, d in zip(grads, torch.autograd.grad(loss_sum, params, allow_unused=True)):
            if d is not None:
                g += d
        total += int(count)
    return [g / max(1, total) for g in grads]


def _perturbed(proxy: PreTrainedModel, direction: Sequence[torch.Tensor], step: float) -> PreTrainedModel:
    model = copy.deepcopy(proxy).eval()
    with torch.no_grad():
        for p, d in zip([p for p in model.parameters() if p.requires_grad], direction):
            p.add_(d, alpha=step)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _CachedLM:
    """A causal LM that remembers its KV cache between calls on a growing, left-padded batch."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int):
        self.model, self.pad = model, pad_token_id
        # transformers 5.x renamed `past_key_values` to `cache`; speak whichever this version knows.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache: DynamicCache | None = None
        self.seen: torch.Tensor | None = None

    @torch.inference_mode()
    def next_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        # Left padding only: a row is real from its first non-pad token on (later pads follow an end token).
        mask = ((input_ids != self.pad).long().cumsum(-1) > 0).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extends = (self.seen is not None and self.cache is not None and self.seen.shape[0] == input_ids.shape[0]
                   and self.seen.shape[1] + 1 == input_ids.shape[1] and torch.equal(self.seen, input_ids[:, :-1]))
        if extends:
            out = self.model(input_ids=input_ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                             use_cache=True, **{self._cache_arg: self.cache})
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self._cache_arg: DynamicCache()})
        self.cache, self.seen = getattr(out, self._cache_arg), input_ids
        return out.logits[:, -1].float().log_softmax(-1)


class AntidistillProcessor(LogitsProcessor):
    """Adds λ·Δ(·|x) to the teacher's logits, Δ from a central finite difference of a perturbed proxy pair."""

    def __init__(self, proxy: PreTrainedModel, gradient: Sequence[torch.Tensor], lam: float, epsilon: float,
                 pad_token_id: int):
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in gradient))
        if not torch.isfinite(norm) or norm == 0:
            raise ConfigError("the proxy's held-out gradient is zero or not finite: is the proxy trained?")
        direction = [g / norm for g in gradient]
        self.lam, self.epsilon, self.gradient_norm = lam, epsilon, float(norm)
        self.plus = _CachedLM(_perturbed(proxy, direction, +epsilon), pad_token_id)
        self.minus = _CachedLM(_perturbed(proxy, direction, -epsilon), pad_token_id)

    def delta(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Δ(·|x) ≈ [log p_{θ+εĝ} − log p_{θ−εĝ}] / 2ε for the next token of every row (Savani et al., Eq. 8)."""
        return (self.plus.next_logprobs(input_ids) - self.minus.next_logprobs(input_ids)) / (2 * self.epsilon)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.lam == 0:
            return scores
        d = self.delta(input_ids).to(scores.device, scores.dtype)
        width = min(d.shape[-1], scores.shape[-1])
        out = scores.clone()
        out[:, :width] += self.lam * d[:, :width]
        return out


def teacher_traces(teacher, tasks: Sequence[str], n: int, seed: int, max_tokens: int = 96) -> tuple[list[str], list[str]]:
    """Held-out prompts and the teacher's own greedy traces for them (the D of the held-out loss)."""
    from stillwatch.tasks import examples, get_task
    from stillwatch.teachers.completion import SamplingParams

    prompts = [e.prompt for name in tasks for e in examples(get_task(name), max(1, n // len(tasks)), seed)]
    random.Random(seed).shuffle(prompts)
    outputs = teacher.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return prompts, [o[0].text for o in outputs]


def antidistill_processor(teacher, proxy_dir: str | Path, config: AntidistillConfig | None = None) -> AntidistillProcessor:
    """Build the processor for a LocalTeacher: load the proxy, collect held-out traces, take the gradient once."""
    from stillwatch.models import load_model

    config = config or AntidistillConfig()
    proxy, proxy_tok = load_model(proxy_dir)
    if proxy_tok.get_vocab() != teacher.tokenizer.get_vocab():
        raise TokenizerMismatchError(f"the antidistillation proxy {proxy_dir} does not share the teacher's tokenizer")
    prompts, traces = teacher_traces(teacher, config.holdout_tasks, config.holdout_n, config.seed + 7_919)
    gradient = holdout_gradient(proxy, proxy_tok, prompts, traces)
    return AntidistillProcessor(proxy, gradient, config.lam, config.epsilon, proxy_tok.pad_token_id)


def gateway_processor(settings, teacher) -> AntidistillProcessor:
    """The gateway hook: the processor for degraded accounts (or everyone with `antidistill_all`)."""
    proxy = getattr(settings, "antidistill_proxy", None)
    if proxy is None:
        raise ConfigError("antidistillation sampling needs a proxy student: set STILLWATCH_ANTIDISTILL_PROXY "
                          "to a small model directory with the teacher's tokenizer")
    return antidistill_processor(teacher, proxy, AntidistillConfig.from_settings(settings))
