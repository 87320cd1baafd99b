"""Antidistillation sampling: the finite difference, the KV cache, the logits update and the teacher hook."""

from __future__ import annotations

import pytest
import torch

from stillwatch.errors import ConfigError
from stillwatch.forensics.antidistill import (AntidistillConfig, AntidistillProcessor, antidistill_processor,
                                              gateway_processor, holdout_gradient)


@pytest.fixture
def proxy(tiny_teacher, one_thread):
    from stillwatch.models import build_model
    from stillwatch.tasks import examples, get_task
    from stillwatch.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_teacher)
    model = build_model("student-tiny", tok, seed=0)
    exs = examples(get_task("add"), 16, 5)
    grad = holdout_gradient(model, tok, [e.prompt for e in exs], [e.trace for e in exs])
    return model, tok, grad


def _left_padded(tok, prompts):
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)["input_ids"]


def test_finite_difference_matches_the_exact_directional_derivative(proxy):
    model, tok, grad = proxy
    proc = AntidistillProcessor(model, grad, lam=1.0, epsilon=1e-3, pad_token_id=tok.pad_token_id)
    ids = _left_padded(tok, ["add: 1234+5678\n1+8+0=09 ", "mul: 42*7\n"])
    approx = proc.delta(ids)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grad))
    params = [p for p in model.parameters() if p.requires_grad]
    mask = (ids != tok.pad_token_id).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for row in range(ids.shape[0]):
        for token in (5, 17, 200):
            logp = model(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1],
                         position_ids=positions[row:row + 1]).logits[0, -1].log_softmax(-1)[token]
            exact = sum((d * g).sum() for d, g in zip(torch.autograd.grad(logp, params), grad)) / norm
            assert approx[row, token].item() == pytest.approx(exact.item(), rel=0.05, abs=2e-3)


def test_kv_cache_gives_the_same_delta_as_a_full_pass(proxy):
    model, tok, grad = proxy
    cached = AntidistillProcessor(model, grad, lam=1.0, epsilon=1e-2, pad_token_id=tok.pad_token_id)
    fresh = AntidistillProcessor(model, grad, lam=1.0, epsilon=1e-2, pad_token_id=tok.pad_token_id)
    ids = _left_padded(tok, ["story: fox\nthe", "add: 1+2\n"])
    cached.delta(ids)
    longer = torch.cat([ids, torch.tensor([[7], [9]])], dim=1)
    assert cached.plus.seen is not None
    step = cached.delta(longer)  # one new token through the cache
    assert torch.allclose(step, fresh.delta(longer), atol=1e-4)


def test_logits_move_by_lambda_times_delta_and_lambda_zero_is_identity(proxy):
    model, tok, grad = proxy
    ids = _left_padded(tok, ["chain: 3+4*2\n"])
    scores = torch.randn(1, len(tok))
    off = AntidistillProcessor(model, grad, lam=0.0, epsilon=1e-2, pad_token_id=tok.pad_token_id)
    assert torch.equal(off(ids, scores), scores)
    on = AntidistillProcessor(model, grad, lam=3.0, epsilon=1e-2, pad_token_id=tok.pad_token_id)
    ref = AntidistillProcessor(model, grad, lam=3.0, epsilon=1e-2, pad_token_id=tok.pad_token_id)
    assert torch.allclose(on(ids, scores) - scores, 3.0 * ref.delta(ids), atol=1e-5)


def test_teacher_hook_poisons_sampling_and_needs_a_proxy(proxy, tiny_teacher, tmp_path):
    from stillwatch.guard.settings import GuardSettings
    from stillwatch.models import save_model
    from stillwatch.teachers.completion import SamplingParams
    from stillwatch.teachers.local import LocalTeacher

    model, tok, _ = proxy
    proxy_dir = save_model(model, tok, tmp_path / "proxy")
    teacher = LocalTeacher.from_dir(tiny_teacher)
    config = AntidistillConfig(lam=50.0, holdout_n=12)
    proc = antidistill_processor(teacher, proxy_dir, config)
    prompts = ["add: 4721+3856\n", "mul: 315*4\n", "chain: 7+5*3-2\n"]
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=3)
    normal = teacher.generate(prompts, params)
    poisoned = teacher.generate(prompts, params, extra_processors=[proc])
    assert [c[0].token_ids for c in normal] != [c[0].token_ids for c in poisoned]
    assert all(c[0].completion_tokens > 0 for c in poisoned)
    hook = gateway_processor(GuardSettings(antidistill_proxy=proxy_dir, antidistill_lambda=0.5), teacher)
    assert isinstance(hook, AntidistillProcessor) and hook.lam == 0.5
    with pytest.raises(ConfigError):
        gateway_processor(GuardSettings(), teacher)
    with pytest.raises(ConfigError):
        AntidistillConfig(epsilon=0.0)
