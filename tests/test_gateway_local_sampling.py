"""The local backend honours what it can of OpenAI's sampling surface (logit_bias, presence and frequency
penalties, response_format text) and refuses the rest with a 400 that names the parameter."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.sampling import LogitBias, Penalties
from stillwatch.guard.settings import GuardSettings


def test_penalties_follow_openais_formula():
    scores = torch.zeros(2, 6)
    prompt = torch.tensor([[5, 5], [4, 3]])
    penalties = Penalties(frequency=0.5, presence=1.0)
    assert torch.equal(penalties(prompt, scores), scores)  # the prompt is not penalised
    step1 = torch.tensor([[5, 5, 1], [4, 3, 2]])
    out = penalties(step1, scores)
    assert out[0, 1] == -1.5 and out[1, 2] == -1.5 and out[0, 5] == 0 and out[1, 3] == 0
    step2 = torch.tensor([[5, 5, 1, 1], [4, 3, 2, 0]])
    out = penalties(step2, scores)
    assert out[0, 1] == -2.0 and out[1, 0] == -1.5 and out[1, 2] == -1.5
    # A new generation (its sequence does not extend the last) starts counting afresh.
    assert torch.equal(penalties(torch.tensor([[1, 1, 1], [2, 2, 2]]), scores), scores)
    assert Penalties(0.5, 1.0) == penalties and hash(Penalties(0.5, 1.0)) == hash(penalties)  # they batch together
    bias = LogitBias(((1, 100.0), (3, -100.0)))
    assert bias(prompt, scores)[:, 1].tolist() == [100.0, 100.0] and bias(prompt, scores)[0, 3] == -100.0


@pytest.fixture(scope="module")
def local(untrained_tiny, tmp_path_factory, one_thread):
    from stillwatch.guard.app import create_app

    db = f"sqlite:///{tmp_path_factory.mktemp('local') / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("user")[1]
    app = create_app(GuardSettings(teacher=untrained_tiny, db_url=db, detection=False, batch_wait_ms=1))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client
    engine.dispose()


def _tokens(client, **body) -> list[int]:
    r = client.post("/v1/completions", json={"model": "stillwatch", "prompt": "add: 1+2", "max_tokens": 12,
                                             "temperature": 0, "logprobs": 0, "return_tokens_as_token_ids": True,
                                             **body})
    assert r.status_code == 200, r.text
    return [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]


def test_logit_bias_and_penalties_change_what_is_generated(local):
    plain = _tokens(local)
    assert _tokens(local, logit_bias={"7": 100}) == [7] * 12  # a bias of 100 all but forces the token
    banned = plain[0]
    assert banned not in _tokens(local, logit_bias={str(banned): -100})
    # An untrained model's logits differ by far less than 2: a presence penalty of 2 forbids every repeat.
    distinct = _tokens(local, presence_penalty=2.0)
    assert len(set(distinct)) == len(distinct) == 12
    chat = local.post("/v1/chat/completions", json={"model": "stillwatch", "max_tokens": 4, "temperature": 0,
                                                    "messages": [{"role": "user", "content": "hi"}],
                                                    "frequency_penalty": 1.5, "response_format": {"type": "text"}})
    assert chat.status_code == 200, chat.text


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}, "messages[0].role"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
])
def test_what_the_local_backend_cannot_honour_is_a_400_naming_it(local, extra, param):
    body = {"model": "stillwatch", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = local.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    if param != "logit_bias":
        assert "cannot honour" in r.json()["error"]["message"]


def test_the_passthrough_endpoints_say_what_the_local_backend_lacks(local):
    r = local.post("/v1/responses", json={"model": "stillwatch", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported_endpoint"
    assert local.get("/v1/models/stillwatch").json()["id"] == "stillwatch"
    assert local.get("/v1/models/other").json()["error"]["code"] == "model_not_found"
