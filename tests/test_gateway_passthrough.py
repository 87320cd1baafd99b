"""The gateway in front of an upstream: the official `openai` client through `--upstream` to a stub upstream
on 127.0.0.1. Every field goes to the upstream as the client sent it and every reply comes back as the stub
sent it (tools, tool messages, images, JSON mode, penalties, logit_bias, unknown extras, the Responses API,
embeddings, streams), while keys, quotas and the audit still apply."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import upstream_stub as stub
from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import query as audit_query
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "What is in this picture, and the weather?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "assistant", "content": None, "tool_calls": [stub.TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    from stillwatch.guard.app import create_app

    root = tmp_path_factory.mktemp("passthrough")
    db = f"sqlite:///{root / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("agent")[1]
    with stub.StubUpstream() as upstream:
        settings = GuardSettings(upstream=upstream.base_url, db_url=db)  # detection on, as by default
        with ServerThread(create_app(settings)) as server:
            client = openai.OpenAI(base_url=server.base, api_key=key, max_retries=0)
            yield {"server": server, "client": client, "key": key, "engine": engine, "stub": upstream}
    engine.dispose()


def _last(gw, endpoint: str) -> dict:
    return next(r for r in audit_query(gw["engine"], account="agent", limit=20) if r["endpoint"] == endpoint)


def test_chat_with_tools_passes_every_field_both_ways(gw):
    sent = dict(model="stub-model", messages=MESSAGES, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False,
                logit_bias={"50256": -100}, frequency_penalty=0.5, presence_penalty=-0.25, temperature=0.3,
                max_completion_tokens=300, user="u-1", metadata={"run": "7"})
    extra = {"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": None}
    raw = gw["client"].chat.completions.with_raw_response.create(**sent, extra_body=extra)
    assert raw.http_response.json() == stub.CHAT_TOOLS  # the reply, as the stub sent it
    assert gw["stub"].received[-1] == {**sent, **extra}  # the request, as the client sent it
    reply = raw.parse()
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    record = _last(gw, "/v1/chat/completions")
    assert json.loads(record["completion"]) == {"content": "", "tool_calls": [stub.TOOL_CALL]}
    assert json.loads(record["prompt"]) == MESSAGES
    assert record["params"]["tools"] == TOOLS and record["prompt_tokens"] == 31 and record["completion_tokens"] == 9


def test_json_mode(gw):
    raw = gw["client"].chat.completions.with_raw_response.create(
        model="stub-model", messages=[{"role": "user", "content": "answer in JSON"}],
        response_format={"type": "json_object"}, seed=3)
    assert raw.http_response.json() == stub.CHAT_JSON
    assert json.loads(raw.parse().choices[0].message.content) == {"answer": 42}
    assert gw["stub"].received[-1]["response_format"] == {"type": "json_object"}


def test_streamed_tool_calls_arrive_as_sent_and_are_audited(gw):
    chunks = stub.chat_chunks()
    stream = gw["client"].chat.completions.create(model="stub-model", messages=MESSAGES, tools=TOOLS, stream=True)
    got = [c.model_dump(exclude_unset=True) for c in stream]
    assert got == chunks[:-1]  # the usage chunk only goes to a client that asked for it
    # The guard asked the upstream for usage (it charges tokens); everything else is as the client sent it.
    assert gw["stub"].received[-1] == {"model": "stub-model", "messages": MESSAGES, "tools": TOOLS, "stream": True,
                                       "stream_options": {"include_usage": True}}
    stream = gw["client"].chat.completions.create(model="stub-model", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    assert [c.model_dump(exclude_unset=True) for c in stream] == chunks
    record = _last(gw, "/v1/chat/completions")
    assert json.loads(record["completion"]) == {
        "content": "Let me check.",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    assert (record["prompt_tokens"], record["completion_tokens"]) == (20, 8)


def test_completions_pass_through(gw):
    raw = gw["client"].completions.with_raw_response.create(model="stub-model", prompt="hello", max_tokens=4,
                                                            logit_bias={"7": 3}, best_of=2, extra_body={"min_p": 0.1})
    assert raw.http_response.json() == stub.COMPLETION
    assert gw["stub"].received[-1] == {"model": "stub-model", "prompt": "hello", "max_tokens": 4,
                                       "logit_bias": {"7": 3}, "best_of": 2, "min_p": 0.1}


def test_responses_api(gw):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    raw = gw["client"].responses.with_raw_response.create(model="stub-model", input="Say hello.",
                                                          instructions="Be brief.", tools=tools,
                                                          max_output_tokens=50)
    assert raw.http_response.json() == stub.RESPONSE
    assert raw.parse().output_text == "Hello there."
    assert gw["stub"].received[-1] == {"model": "stub-model", "input": "Say hello.", "instructions": "Be brief.",
                                       "tools": tools, "max_output_tokens": 50}
    record = _last(gw, "/v1/responses")
    assert json.loads(record["prompt"]) == {"instructions": "Be brief.", "input": "Say hello."}
    assert json.loads(record["completion"])["tool_calls"][0]["name"] == "lookup"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 7)


def test_responses_api_stream(gw):
    events = list(gw["client"].responses.create(model="stub-model", input="Say hello.", stream=True))
    expected = stub.response_events()
    assert [e.model_dump(exclude_unset=True) for e in events] == expected
    assert events[-1].response.output_text == "Hello there."
    # On the wire: named events, as OpenAI sends them, and the last only after the audit record.
    with httpx.stream("POST", gw["server"].base + "/responses", headers={"Authorization": f"Bearer {gw['key']}"},
                      json={"model": "stub-model", "input": "Say hello.", "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: response.created" and lines[-2] == "event: response.completed"
    assert [json.loads(line[6:]) for line in lines if line.startswith("data: ")] == expected
    record = _last(gw, "/v1/responses")
    assert json.loads(record["completion"])["content"] == "Hello there." and record["status"] == 200
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 7)


def test_embeddings(gw):
    raw = gw["client"].embeddings.with_raw_response.create(model="org/stub-embed", input=["a", "b"],
                                                           encoding_format="float", dimensions=3)
    assert raw.http_response.json() == stub.EMBEDDINGS
    assert raw.parse().data[1].embedding == [1.0, 0.0, -1.0]
    assert gw["stub"].received[-1] == {"model": "org/stub-embed", "input": ["a", "b"], "encoding_format": "float",
                                       "dimensions": 3}
    record = _last(gw, "/v1/embeddings")
    assert json.loads(record["prompt"]) == ["a", "b"] and record["prompt_tokens"] == 5


def test_models_by_id(gw):
    assert gw["client"].models.retrieve("org/stub-embed").model_dump(exclude_unset=True) == stub.MODELS["data"][1]
    with pytest.raises(openai.NotFoundError) as err:
        gw["client"].models.retrieve("gpt-none")
    assert err.value.code == "model_not_found"
    assert [m.id for m in gw["client"].models.list()] == ["stub-model", "org/stub-embed"]


def test_the_guard_still_applies(gw):
    anonymous = openai.OpenAI(base_url=gw["server"].base, api_key="sw-000000000000-" + "x" * 43, max_retries=0)
    before = len(gw["stub"].received)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="stub-model", messages=MESSAGES, tools=TOOLS)
    with pytest.raises(openai.AuthenticationError):
        anonymous.responses.create(model="stub-model", input="x")
    # Limits the guard owns are still checked before anything reaches the upstream.
    with pytest.raises(openai.BadRequestError) as err:
        gw["client"].chat.completions.create(model="stub-model", messages=MESSAGES, max_tokens=10**6)
    assert err.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        gw["client"].chat.completions.create(model="stub-model", messages=[{"content": "no role"}])
    assert err.value.param == "messages" and "messages[0].role" in err.value.message
    assert len(gw["stub"].received) == before


def test_unknown_routes_get_openais_invalid_url(gw):
    r = httpx.post(gw["server"].base + "/nothing/here", headers={"Authorization": f"Bearer {gw['key']}"}, json={})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Invalid URL (POST /v1/nothing/here)", "type": "invalid_request_error",
                                  "param": None, "code": None}}


LITELLM_CLIENT = """
import json, sys
import litellm
base, key, messages, tools = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
reply = litellm.completion(model="openai/stub-model", api_base=base, api_key=key, messages=messages, tools=tools)
call = reply.choices[0].message.tool_calls[0]
print(json.dumps([call.id, call.function.name, call.function.arguments]))
"""


def test_litellm_sdk_as_a_client(gw):
    """LiteLLM's SDK through the gateway: in this environment if it is installed here, else in the benchmark's
    own LiteLLM environment (LiteLLM pins versions that clash with stillwatch's), else skipped."""
    import subprocess
    import sys
    from pathlib import Path

    python = sys.executable
    try:
        import litellm  # noqa: F401
    except ImportError:
        python = str(Path(__file__).resolve().parents[1] / ".cache" / "litellm-venv" / "bin" / "python")
        if not Path(python).is_file():
            pytest.skip("LiteLLM is not installed (pip install 'stillwatch[bench]', or bench/gateway.py's venv)")
    out = subprocess.run([python, "-c", LITELLM_CLIENT, gw["server"].base, gw["key"], json.dumps(MESSAGES),
                          json.dumps(TOOLS)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["call_1", "get_weather", '{"city":"Oslo"}']
    # LiteLLM rewrites some of what it sends (its own defaults); what it sent arrived with the tools and turns.
    sent = gw["stub"].received[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert [m["role"] for m in sent["messages"]] == [m["role"] for m in MESSAGES]
