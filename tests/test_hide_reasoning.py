"""Hide reasoning: the trace is withheld (built-in answer mark, <think> spans, reasoning_content), hidden tokens
are still charged and named in usage, and an account switched to it is served final answers only."""

from __future__ import annotations

import httpx
import pytest

from stillwatch.guard.reasoning import StreamHider, hidden_span, strip_body, withhold
from stillwatch.teachers import Completion

ADMIN = "hide-admin-key-0123456789"


def test_the_span_is_the_think_block_or_everything_before_the_mark():
    assert hidden_span("<think>a b</think>  42") == (0, 20)  # the blank after the block goes too
    assert hidden_span("<think>cut off by max_tokens") == (0, 28)
    assert hidden_span("1+2=3 -> 3", "->") == (0, 6)
    assert hidden_span("1+2=3 4+", "->") == (0, 8)  # the mark never came: all of it is trace
    assert hidden_span("-> 3", "->") is None
    assert hidden_span("plain answer") is None and hidden_span("a -> b") is None  # no mark asked for


def test_withhold_drops_the_trace_tokens_and_keeps_text_and_logprobs_aligned():
    pieces = ["1", "+", "2", "=", "3", " ", "->", " ", "3"]
    c = Completion(text="".join(pieces), token_ids=list(range(9)), logprobs=[-0.1 * i for i in range(9)],
                   finish_reason="stop", prompt_tokens=4, top_logprobs=[[(i, -0.1)] for i in range(9)])
    kept, hidden = withhold(c, pieces, "->")
    assert hidden == 6 and kept.text == "-> 3" and kept.token_ids == [6, 7, 8]
    assert kept.logprobs == c.logprobs[6:] and kept.top_logprobs == c.top_logprobs[6:]
    same, none = withhold(c, pieces, None)
    assert same is c and none == 0


def test_an_upstream_body_loses_reasoning_content_and_think_spans():
    body = {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": "<think>secret plan</think>\nThe answer is 4.",
                                 "reasoning_content": "more secret"},
         "logprobs": {"content": [{"token": "<think>"}, {"token": "secret plan"}, {"token": "</think>\n"},
                                  {"token": "The answer is 4."}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
    texts, hidden = strip_body(body)
    message = body["choices"][0]["message"]
    assert texts == ["The answer is 4."] and message["content"] == "The answer is 4."
    assert "reasoning_content" not in message
    assert [e["token"] for e in body["choices"][0]["logprobs"]["content"]] == ["The answer is 4."]
    assert body["usage"]["completion_tokens"] == 9 and body["usage"]["completion_tokens_details"]["reasoning_tokens"] == hidden > 0


def test_a_stream_hides_a_think_block_split_across_chunks():
    hider = StreamHider()
    pieces = ["", "<th", "ink>", "step one", " step two</thi", "nk>", " Final", " answer"]
    out = []
    for p in pieces:
        chunk = hider.chunk({"choices": [{"index": 0, "delta": {"content": p, "reasoning_content": "x"}}]})
        out.append(chunk["choices"][0]["delta"]["content"])
        assert "reasoning_content" not in chunk["choices"][0]["delta"]
    assert "".join(out) == "Final answer"
    plain = StreamHider()
    said = [plain.chunk({"choices": [{"index": 0, "delta": {"content": p}}]})["choices"][0]["delta"]["content"]
            for p in ["", "<", "b>bold", " text"]]
    assert "".join(said) == "<b>bold text"  # a tag that is not <think> is content
    usage = plain.chunk({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4}})["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.fixture(scope="module")
def gateway(tiny_teacher, tmp_path_factory):
    from gateway_helpers import ServerThread

    from stillwatch.guard.app import create_app
    from stillwatch.guard.settings import GuardSettings

    db = f"sqlite:///{tmp_path_factory.mktemp('hide') / 'audit.db'}"
    settings = GuardSettings(db_url=db, admin_key=ADMIN, teacher=tiny_teacher, detection=False)
    app = create_app(settings)
    with ServerThread(app) as server:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        keys = {}
        for name in ("open", "hidden"):
            r = httpx.post(f"{server.url}/admin/accounts/{name}/keys", headers=admin, timeout=30)
            keys[name] = r.json()["key"]
        r = httpx.post(f"{server.url}/admin/accounts/hidden/hide-reasoning", headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["hide_reasoning"] is True
        yield server, keys, app.state.gateway


def _chat(server, key, **extra):
    import openai

    client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
    return client.chat.completions.create(model="stillwatch", messages=[{"role": "user", "content": "add: 4721+3856"}],
                                          temperature=0, max_tokens=60, **extra)


def test_a_hidden_account_gets_the_answer_only_and_pays_for_the_trace(gateway):
    server, keys, gw = gateway
    full = _chat(server, keys["open"], logprobs=True, top_logprobs=3)
    shown = _chat(server, keys["hidden"], logprobs=True, top_logprobs=3)
    text, answer = full.choices[0].message.content, shown.choices[0].message.content
    assert "->" in text and text.index("->") > 0
    assert answer.strip().startswith("->") and text.endswith(answer) and "=" not in answer
    assert shown.usage.completion_tokens == full.usage.completion_tokens
    hidden = shown.usage.completion_tokens_details.reasoning_tokens
    assert hidden > 0 and len(shown.choices[0].logprobs.content) == full.usage.completion_tokens - hidden
    records = list(reversed(gw.audit.query(limit=2)))
    assert records[-1]["decision"] == "hide_reasoning" and records[-1]["completion"] == answer
    assert records[-2]["decision"] == "allow" and records[-2]["completion"] == text


def test_a_hidden_stream_never_sends_the_trace(gateway):
    server, keys, _ = gateway
    full = _chat(server, keys["open"]).choices[0].message.content
    import openai

    client = openai.OpenAI(api_key=keys["hidden"], base_url=server.base_url, max_retries=0)
    stream = client.chat.completions.create(model="stillwatch", temperature=0, max_tokens=60, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "add: 4721+3856"}])
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert full.endswith("".join(pieces)) and "=" not in "".join(pieces)
    assert usage.completion_tokens_details.reasoning_tokens > 0


def test_the_switch_goes_off_again(gateway):
    server, keys, _ = gateway
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(f"{server.url}/admin/accounts/hidden/show-reasoning", headers=admin, timeout=30)
    assert r.status_code == 200 and r.json()["hide_reasoning"] is False
    assert "=" in _chat(server, keys["hidden"]).choices[0].message.content


def test_the_responses_api_loses_reasoning_items_and_events():
    import asyncio

    from stillwatch.guard.backends import Result
    from stillwatch.guard.reasoning import hide_responses

    body = {"output": [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan " * 8}]},
                       {"type": "message", "content": [{"type": "output_text", "text": "<think>x</think> Hi."}]}],
            "usage": {"input_tokens": 3, "output_tokens": 20}}
    result = hide_responses(Result(body=body, raw=b"{}"))
    assert [i["type"] for i in body["output"]] == ["message"] and body["output"][0]["content"][0]["text"] == "Hi."
    assert result.raw is None and body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0

    async def events():
        for e in ({"type": "response.created", "response": {"output": []}},
                  {"type": "response.reasoning_summary_text.delta", "delta": "secret"},
                  {"type": "response.output_item.added", "item": {"type": "reasoning"}},
                  {"type": "response.output_text.delta", "delta": "Hi."}):
            yield e

    async def collect():
        return [e["type"] async for e in hide_responses(Result(chunks=events())).chunks]

    assert asyncio.run(collect()) == ["response.created", "response.output_text.delta"]


def test_a_degraded_account_on_a_gateway_that_cannot_degrade_is_refused_not_served(tmp_path):
    import openai

    from gateway_helpers import ServerThread
    from guard_support import mock_upstream

    from stillwatch.guard.app import create_app
    from stillwatch.guard.settings import GuardSettings

    with mock_upstream() as upstream:
        settings = GuardSettings(db_url=f"sqlite:///{tmp_path / 'a.db'}", admin_key=ADMIN, upstream=upstream,
                                 detection=False)
        app = create_app(settings)
        with ServerThread(app) as server:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            key = httpx.post(f"{server.url}/admin/accounts/poisoned/keys", headers=admin, timeout=30).json()["key"]
            assert httpx.post(f"{server.url}/admin/accounts/poisoned/degrade", headers=admin,
                              timeout=30).status_code == 200
            client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
            with pytest.raises(openai.PermissionDeniedError) as info:
                client.completions.create(model="mock", prompt="hello", max_tokens=4)
            assert info.value.code == "account_restricted"
            record = app.state.gateway.audit.query(limit=1)[0]
            assert record["status"] == 403 and record["decision"] == "block" and record["completion"] is None
