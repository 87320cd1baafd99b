"""Distillation losses against hand-computed values on tiny distributions."""

from __future__ import annotations

import math

import pytest
import torch

from stillwatch.distill.losses import (IGNORE, divergence_beta, full_kd_loss, generalized_jsd, kl_divergence,
                                       sft_loss, sparse_kd_loss, teacher_topk_with_tail, token_reverse_kl_loss,
                                       topk_with_tail)

P = torch.tensor([0.5, 0.5]).log()
Q = torch.tensor([0.25, 0.75]).log()


def _logits(probs: list[float]) -> torch.Tensor:
    """[1, 1, V] logits whose softmax is `probs`."""
    return torch.tensor(probs).log()[None, None, :]


def test_kl_hand_values() -> None:
    assert kl_divergence(P, Q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert kl_divergence(Q, P).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert kl_divergence(torch.tensor([0.0, 1.0]).log(), Q).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_generalized_jsd_endpoints_and_hand_value() -> None:
    # beta = 0 is forward KL(teacher || student), beta = 1 is reverse KL(student || teacher) (TRL's convention).
    assert generalized_jsd(P, Q, 0.0).item() == pytest.approx(0.143841, abs=1e-5)
    assert generalized_jsd(P, Q, 1.0).item() == pytest.approx(0.130812, abs=1e-5)
    # beta = 0.5 with M = (0.375, 0.625): 0.5 * 0.032269 + 0.5 * 0.035375
    assert generalized_jsd(P, Q, 0.5).item() == pytest.approx(0.033822, abs=1e-5)


def test_jsd_symmetries() -> None:
    a, b = torch.randn(5, 7).log_softmax(-1), torch.randn(5, 7).log_softmax(-1)
    torch.testing.assert_close(generalized_jsd(a, b, 0.5), generalized_jsd(b, a, 0.5))
    torch.testing.assert_close(generalized_jsd(a, b, 0.2), generalized_jsd(b, a, 0.8))
    assert generalized_jsd(a, b, 0.3).min() > 0
    assert generalized_jsd(a, b, 0.5).max() <= math.log(2) + 1e-6  # JSD is bounded by log 2


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_kd_is_zero_for_identical_and_positive_otherwise(divergence: str, temperature: float) -> None:
    logits = torch.randn(2, 3, 11)
    mask = torch.ones(2, 3, dtype=torch.bool)
    beta = divergence_beta(divergence, 0.5)
    same, count = full_kd_loss(logits, logits.clone(), mask, beta, temperature)
    assert same.item() == pytest.approx(0.0, abs=1e-5) and count.item() == 6
    other, _ = full_kd_loss(logits, torch.randn(2, 3, 11), mask, beta, temperature)
    assert other.item() > 0.01


def test_full_kd_temperature_scaling_hand_value() -> None:
    # At T = 2 both distributions are softened (p^(1/2), renormalised) and the KL is multiplied by T^2 = 4.
    t, s = _logits([0.5, 0.5]), _logits([0.2, 0.8])
    mask = torch.ones(1, 1, dtype=torch.bool)
    q = torch.tensor([math.sqrt(0.2), math.sqrt(0.8)])
    q = q / q.sum()
    expected = 4 * (0.5 * math.log(0.5 / q[0].item()) + 0.5 * math.log(0.5 / q[1].item()))
    assert full_kd_loss(s, t, mask, 0.0, 2.0)[0].item() == pytest.approx(expected, abs=1e-5)


def test_masked_positions_do_not_count() -> None:
    s, t = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    mask = torch.tensor([[True, False, True, False]])
    loss, count = full_kd_loss(s, t, mask)
    only, _ = full_kd_loss(s[:, [0, 2]], t[:, [0, 2]], torch.ones(1, 2, dtype=torch.bool))
    assert count.item() == 2 and loss.item() == pytest.approx(only.item(), abs=1e-6)


def test_topk_tail_bucket_hand_value() -> None:
    # Teacher (0.5, 0.3, 0.15, 0.05), harvested top 2 -> (0.5, 0.3 | rest 0.2).
    # Student (0.4, 0.4, 0.1, 0.1) -> (0.4, 0.4 | rest 0.2): KL = 0.5 ln(0.5/0.4) + 0.3 ln(0.3/0.4) + 0.2 ln 1.
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[0.5, 0.3]]]).log()
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, count = sparse_kd_loss(_logits([0.4, 0.4, 0.1, 0.1]), ids, lps, valid, mask, beta=0.0)
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    assert loss.item() == pytest.approx(expected, abs=1e-6) and count.item() == 1
    # Identical on the top k -> identical on the bucket -> zero, however the tail is spread inside.
    for student in ([0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.05, 0.15]):
        for beta in (0.0, 0.5, 1.0):
            assert sparse_kd_loss(_logits(student), ids, lps, valid, mask, beta)[0].item() == pytest.approx(0, abs=1e-6)
    # Moving the tail's mass into the top k is penalised: the bucket is what makes that visible.
    leaky = sparse_kd_loss(_logits([0.6, 0.39, 0.005, 0.005]), ids, lps, valid, mask, 0.0)[0].item()
    assert leaky == pytest.approx(0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.39) + 0.2 * math.log(0.2 / 0.01),
                                  abs=1e-5)


def test_topk_distributions_are_proper_and_padding_is_ignored() -> None:
    logits = torch.randn(2, 3, 9)
    ids = torch.tensor([3, 1, 0]).expand(2, 3, 3).clone()
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    student = topk_with_tail(logits.log_softmax(-1), ids, valid)
    torch.testing.assert_close(student.exp().sum(-1), torch.ones(2, 3))
    # A padded slot that repeats a real id must not remove that id from the tail twice, or at all.
    padded_ids = torch.cat([ids, torch.zeros(2, 3, 1, dtype=torch.long)], -1)
    padded_valid = torch.cat([valid, torch.zeros(2, 3, 1, dtype=torch.bool)], -1)
    with_pad = topk_with_tail(logits.log_softmax(-1), padded_ids, padded_valid)
    torch.testing.assert_close(with_pad[..., [0, 1, 2, 4]], student)
    assert (with_pad[..., 3] < -1000).all()
    # A teacher whose top k sum past 1 (rounded logprobs) still yields a proper distribution.
    teacher = teacher_topk_with_tail(torch.tensor([[0.7, 0.31]]).log(), torch.ones(1, 2, dtype=torch.bool))
    assert teacher.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_sparse_kd_gradients_are_finite_when_topk_covers_the_vocabulary() -> None:
    logits = torch.randn(1, 2, 4, requires_grad=True)
    lp = torch.randn(1, 2, 4).log_softmax(-1)
    ids = torch.arange(4).expand(1, 2, 4)
    for beta in (0.0, 0.5, 1.0):
        loss, _ = sparse_kd_loss(logits, ids, lp, torch.ones(1, 2, 4, dtype=torch.bool),
                                 torch.ones(1, 2, dtype=torch.bool), beta)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()


def test_sparse_kd_equals_full_kd_when_k_is_the_vocabulary() -> None:
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    mask = torch.ones(2, 3, dtype=torch.bool)
    lp = t.log_softmax(-1)
    ids = torch.arange(6).expand(2, 3, 6)
    valid = torch.ones(2, 3, 6, dtype=torch.bool)
    for beta in (0.0, 0.5, 1.0):
        sparse = sparse_kd_loss(s, ids, lp, valid, mask, beta)[0]
        full = full_kd_loss(s, t, mask, beta)[0]
        assert sparse.item() == pytest.approx(full.item(), abs=1e-3)


def test_sft_loss_hand_value() -> None:
    logits = torch.zeros(1, 3, 4)  # uniform: -log q = ln 4 per token
    labels = torch.tensor([[IGNORE, 2, 1]])
    loss, count = sft_loss(logits, labels)
    assert count.item() == 2 and loss.item() == pytest.approx(2 * math.log(4), abs=1e-6)


def test_token_reverse_kl_gradient_is_the_policy_gradient() -> None:
    logits = torch.randn(1, 2, 5, requires_grad=True)
    tokens = torch.tensor([[1, 3]])
    teacher_lp = torch.tensor([[-0.5, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, count = token_reverse_kl_loss(logits, tokens, teacher_lp, mask)
    loss.backward()
    log_q = logits.detach().log_softmax(-1)
    q_tok = log_q.gather(-1, tokens[..., None]).squeeze(-1)
    adv = q_tok - teacher_lp
    assert loss.item() == pytest.approx(float((adv * q_tok).sum()), abs=1e-5) and count.item() == 2
    # d/dlogits of adv * log q(y) = adv * (onehot(y) - q)
    expected = adv[..., None] * (torch.nn.functional.one_hot(tokens, 5) - log_q.exp())
    torch.testing.assert_close(logits.grad, expected)


def test_unknown_divergence_is_rejected() -> None:
    with pytest.raises(ValueError):
        divergence_beta("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        divergence_beta("jsd", 1.5)
