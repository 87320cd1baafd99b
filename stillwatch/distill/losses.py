"""Distillation losses as small pure functions over logits, in the style of TRL's `generalized_jsd_loss`.

Conventions shared by every function here:

* Tensors are already aligned: position t of `student_logits` is the student's prediction for token t of
  `labels` / of the teacher's distribution (callers shift by one, see `distill.data.shift`).
* `mask` (bool, same leading shape) marks the positions that count. Every loss returns
  `(loss_sum, count)`: the shared training loop divides by the count summed over all ranks, which makes
  DDP gradients equal to single-process ones.
* Divergences follow TRL's generalized JSD (Agarwal et al. 2024, "On-Policy Distillation of Language
  Models", GKD, Eq. 1) with `beta` interpolating: beta = 0 is forward KL(teacher || student), beta = 1 is
  reverse KL(student || teacher), and 0 < beta < 1 is

      JSD_beta(P || Q) = beta * KL(P || M) + (1 - beta) * KL(Q || M),   M = beta * P + (1 - beta) * Q

  with P the teacher and Q the student.
* Temperature T softens both distributions (Hinton et al. 2015) and the loss is multiplied by T^2 so that
  gradient magnitudes do not depend on T.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE = -100
# A finite stand-in for log(0). Using -inf would make 0 * (-inf) and logsumexp(all -inf) produce NaN
# gradients; exp(NEG) underflows to exactly 0 in float32, so nothing else changes.
NEG = -1e4
# Smallest tail mass we let a teacher leave outside its top k (endpoints and stores round logprobs, so the top k
# can sum to slightly more than 1).
MIN_TAIL = 1e-12

Divergence = Literal["forward", "reverse", "jsd"]


def divergence_beta(divergence: Divergence, beta: float = 0.5) -> float:
    """The generalized-JSD beta that implements `divergence` (forward = 0, reverse = 1, jsd = `beta`)."""
    if divergence == "forward":
        return 0.0
    if divergence == "reverse":
        return 1.0
    if divergence == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        return float(beta)
    raise ValueError(f"unknown divergence {divergence!r}; choose forward, reverse or jsd")


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = sum_i p_i (log p_i - log q_i) over the last dimension, with 0 log 0 = 0."""
    # Clamping log(0) = -inf to NEG makes p_i = 0 exactly without 0 * inf = NaN; F.kl_div is the fused kernel.
    return F.kl_div(log_q.clamp(min=NEG), log_p.clamp(min=NEG), reduction="none", log_target=True).sum(-1)


def generalized_jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Per-position generalized JSD between normalised log-distributions (GKD Eq. 1, TRL's beta convention).

    beta = 0: KL(P_teacher || Q_student) (forward); beta = 1: KL(Q_student || P_teacher) (reverse);
    otherwise beta KL(P || M) + (1 - beta) KL(Q || M) with M = beta P + (1 - beta) Q. Symmetric at beta = 0.5.
    """
    if beta == 0.0:
        return kl_divergence(teacher_logp, student_logp)
    if beta == 1.0:
        return kl_divergence(student_logp, teacher_logp)
    b = torch.tensor(beta, dtype=student_logp.dtype, device=student_logp.device)
    mixture = torch.logsumexp(torch.stack([teacher_logp + torch.log(b), student_logp + torch.log1p(-b)]), dim=0)
    return beta * kl_divergence(teacher_logp, mixture) + (1 - beta) * kl_divergence(student_logp, mixture)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.bool()
    return torch.where(mask, values, torch.zeros_like(values)).sum(), mask.sum()


def sft_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level KD (Kim & Rush 2016): sum of -log q(y_t) over labelled (completion) tokens, and their count."""
    mask = labels != IGNORE
    loss = F.cross_entropy(student_logits[mask].float(), labels[mask], reduction="sum")
    return loss, mask.sum()


def full_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                 beta: float = 0.0, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """White-box KD over the whole vocabulary: T^2 * JSD_beta(softmax(t/T) || softmax(s/T)) summed over `mask`."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return _masked_sum(generalized_jsd(t, s, beta) * temperature**2, mask)


def topk_with_tail(log_probs: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Collapse a full distribution to k+1 outcomes: log q at `ids`, then log of the mass on every other token.

    `log_probs` [..., V] normalised; `ids`/`valid` [..., k]. Invalid slots get NEG (zero mass) and are not
    excluded from the tail. Returns [..., k+1], a proper distribution (up to the MIN_TAIL floor on the tail).
    """
    top = log_probs.gather(-1, ids).masked_fill(~valid, NEG)
    # scatter_add, not scatter: a padded slot may repeat a real id, and scatter's order on duplicates is undefined.
    in_top = torch.zeros_like(log_probs).scatter_add(-1, ids, valid.to(log_probs.dtype)) > 0
    # logsumexp over the complement, exactly: no 1 - sum(exp(top)) cancellation when the top k hold nearly all.
    tail = torch.logsumexp(log_probs.masked_fill(in_top, NEG), dim=-1, keepdim=True)
    # The same floor as the teacher's tail: when the k ids cover the vocabulary both tails are ~0, and the
    # teacher's 1 - sum(top k) is float rounding noise that an exact 0 here would turn into a large KL term.
    tail = tail.clamp(min=math.log(MIN_TAIL))
    return torch.cat([top, tail], dim=-1)


def teacher_topk_with_tail(topk_logprobs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A teacher's harvested top-k logprobs plus a tail bucket of mass max(1 - sum exp(top k), MIN_TAIL), renormalised."""
    top = topk_logprobs.float().masked_fill(~valid, NEG)
    tail_mass = (1.0 - top.exp().sum(-1, keepdim=True)).clamp(min=MIN_TAIL)
    return torch.log_softmax(torch.cat([top, tail_mass.log()], dim=-1), dim=-1)


def sparse_kd_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                   topk_valid: torch.Tensor, mask: torch.Tensor, beta: float = 0.0,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse logit KD from a teacher's top-k logprobs, with the tail outside the top k as one extra outcome.

    A harvest keeps only the teacher's k most likely tokens at each position, so the teacher distribution is
    known on those k ids and only in total elsewhere. Both distributions are therefore compared over the same
    k+1 outcomes: the k ids, plus one "rest" bucket.

        P = (p_1, ..., p_k, 1 - sum_i p_i)                          teacher, from the harvest
        Q = (q_1, ..., q_k, sum_{v not in top k} q_v)               student, from its full softmax

    Both are proper distributions, so every divergence is >= 0 and exactly 0 when the student matches the
    teacher on the k ids (then it also matches on the rest bucket). Dropping the bucket and renormalising
    over k instead would let the student put arbitrary mass outside the top k for free; ignoring it without
    renormalising would make KL negative. Temperature T is applied to the (k+1)-outcome distributions,
    P_T proportional to P^(1/T), with the bucket treated as one outcome: exact at T = 1, and the same
    operation on both sides so the zero-at-identity property holds at every T. Loss is scaled by T^2.

    Across tokenizers the same loss applies to aligned targets (`distill.align`): the ids are then student
    tokens, each p_i the teacher's byte-level chain-rule mass of the continuations whose first student token is
    i, and 1 - sum_i p_i is everything the harvest cannot place (the teacher's unlisted tails along the path,
    and candidates the student cannot spell): the bucket means "some other student token" on both sides.

    `topk_ids`, `topk_logprobs`, `topk_valid`: [B, T, k]; `valid` marks real entries (endpoints may return
    fewer than k). `mask` [B, T] marks positions with a teacher distribution.
    """
    student = topk_with_tail(F.log_softmax(student_logits.float(), dim=-1), topk_ids, topk_valid)
    teacher = teacher_topk_with_tail(topk_logprobs, topk_valid)
    if temperature != 1.0:
        student = F.log_softmax(student / temperature, dim=-1)
        teacher = F.log_softmax(teacher / temperature, dim=-1)
    return _masked_sum(generalized_jsd(teacher, student, beta) * temperature**2, mask)


def token_reverse_kl_loss(student_logits: torch.Tensor, tokens: torch.Tensor, teacher_token_logprobs: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reverse-KL estimator for on-policy samples scored with the sampled token's logprob only.

    With y ~ Q_student, KL(Q || P) = E_y[log q(y) - log p(y)]; its score-function gradient is
    E_y[(log q(y_t) - log p(y_t)) grad log q(y_t)] (Lu & Thinking Machines 2025, "On-Policy Distillation";
    per-token advantage -(log q - log p)). The advantage is detached, so the value is a surrogate whose
    gradient is the estimator; used when an endpoint returns no top-k alternatives.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)
    advantage = (log_q - teacher_token_logprobs.float()).detach()
    return _masked_sum(advantage * log_q, mask)
