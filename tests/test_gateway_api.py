"""The gateway's OpenAI surface through the official `openai` client against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import query as audit_query
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

ADMIN = "admin-secret-for-tests"
PROMPT = "add: 4721+3856\n"
QUOTAS = """
[default]
requests = "10000/minute"
tokens = "10000000/minute"

[accounts.tight]
requests = "2/minute"

[accounts.small]
tokens = "40/minute"
"""


@pytest.fixture(scope="module")
def gw(tiny_teacher, tmp_path_factory):
    """One local-backend gateway for the module, with accounts alice, bob, tight, small and victim."""
    root = tmp_path_factory.mktemp("gateway")
    (root / "quotas.toml").write_text(QUOTAS)
    db = f"sqlite:///{root / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    store = AccountStore(engine)
    keys = {name: store.create_key(name)[1] for name in ("alice", "bob", "tight", "small", "victim", "mallory")}
    settings = GuardSettings(teacher=tiny_teacher, db_url=db, admin_key=ADMIN, quotas_file=root / "quotas.toml",
                             max_n=4, max_tokens_limit=64, max_body_bytes=20_000, batch_wait_ms=20)
    from stillwatch.guard.app import create_app
    from stillwatch.guard.backends import LocalBackend
    from stillwatch.guard.hooks import ForensicsHooks
    from stillwatch.teachers.local import LocalTeacher

    # The degrade hook is a stand-in for antidistillation sampling that is easy to see: it forces one token.
    teacher = LocalTeacher.from_dir(tiny_teacher, max_batch=settings.max_batch)
    forced = teacher.tokenizer.convert_tokens_to_ids("7")
    backend = LocalBackend(teacher, settings, ForensicsHooks(degrade=(ForceToken(forced),)))
    app = create_app(settings, backend=backend)
    with ServerThread(app) as server:
        yield {"server": server, "keys": keys, "store": store, "engine": engine, "db_file": root / "guard.db",
               "app": app}
    engine.dispose()


class ForceToken:
    """A logits processor that leaves one token possible."""

    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        out = scores.clone().fill_(-float("inf"))
        out[:, self.token_id] = 0.0
        return out


def client(gw, who: str = "alice", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw["server"].base, api_key=gw["keys"][who], max_retries=0, **kwargs)


def chat(c: openai.OpenAI, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": PROMPT}])
    kwargs.setdefault("max_tokens", 12)
    if kwargs["max_tokens"] is None:
        del kwargs["max_tokens"]
    return c.chat.completions.create(model="stillwatch", **kwargs)


def test_models(gw):
    models = client(gw).models.list()
    assert [m.id for m in models.data] == ["stillwatch"]


def test_chat_non_stream_with_logprobs(gw):
    resp = chat(client(gw), temperature=0, logprobs=True, top_logprobs=3)
    choice = resp.choices[0]
    tokens = choice.logprobs.content
    assert resp.usage.completion_tokens == len(tokens) > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert "".join(t.token for t in tokens).startswith(choice.message.content)
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        # Greedy decoding: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    assert choice.finish_reason in ("stop", "length")


def test_chat_stream_matches_non_stream_and_usage(gw):
    c = client(gw)
    whole = chat(c, temperature=0).choices[0].message.content
    pieces, usage = [], []
    for chunk in chat(c, temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage.append(chunk.usage)
    assert "".join(pieces) == whole
    assert len(usage) == 1 and usage[0].completion_tokens > 0
    # Without include_usage no usage chunk arrives; the raw stream ends in [DONE].
    with httpx.stream("POST", gw["server"].base + "/chat/completions",
                      headers={"Authorization": f"Bearer {gw['keys']['alice']}"},
                      json={"model": "stillwatch", "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": 4, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(ch["choices"] for ch in chunks) and all("usage" not in ch for ch in chunks)


def test_chat_n_seed_and_stop(gw):
    c = client(gw)
    resp = chat(c, n=3, temperature=1.0, seed=7, max_tokens=8)
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    again = chat(c, n=3, temperature=1.0, seed=7, max_tokens=8)
    assert [ch.message.content for ch in again.choices] == [ch.message.content for ch in resp.choices]
    stopped = chat(c, temperature=0, stop=["+"], max_tokens=None, max_completion_tokens=20)
    assert "+" not in stopped.choices[0].message.content


def test_completions_logprobs_and_stream(gw):
    c = client(gw)
    resp = c.completions.create(model="stillwatch", prompt=[PROMPT, "mul: 12*3\n"], max_tokens=6, n=2,
                                logprobs=2, temperature=0.8, user="tester")
    assert len(resp.choices) == 4
    for ch in resp.choices:
        lp = ch.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(2 <= len(d) <= 3 for d in lp.top_logprobs)  # top-2 plus the sampled token, as OpenAI does
    text = "".join(ch.choices[0].text for ch in c.completions.create(
        model="stillwatch", prompt=PROMPT, max_tokens=6, temperature=0, stream=True) if ch.choices)
    assert text == c.completions.create(model="stillwatch", prompt=PROMPT, max_tokens=6, temperature=0).choices[0].text


def test_scoring_matches_local_teacher(gw, tiny_teacher):
    """echo + max_tokens=0 + logprobs=k returns prompt logprobs; OpenAITeacher.score gets the teacher's own."""
    from stillwatch.teachers.local import LocalTeacher
    from stillwatch.teachers.openai_teacher import OpenAITeacher

    local = LocalTeacher.from_dir(tiny_teacher)
    ids = local.tokenizer("4721+3856=8577", add_special_tokens=False)["input_ids"]
    want = local.score_sync(PROMPT, ids, top_k=3)

    remote = OpenAITeacher(gw["server"].base, gw["keys"]["bob"], tokenizer=local.tokenizer, max_retries=0)

    async def go():
        try:
            return await remote.score(PROMPT, ids, top_k=3), await remote.complete([PROMPT], _params())
        finally:
            await remote.aclose()

    got, completions = asyncio.run(go())
    assert got.token_ids == ids
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    for pos, wpos in zip(got.top_logprobs, want.top_logprobs, strict=True):
        assert {t for t, _ in wpos} <= {t for t, _ in pos}  # top-3, plus the scored token as OpenAI adds it
    # Chat through the client: token ids come back spelled token_id:N and decode to the text.
    comp = completions[0][0]
    assert comp.token_ids and local.tokenizer.decode(comp.token_ids, skip_special_tokens=True).startswith(comp.text)

    prompt_ids = local.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    raw = client(gw).completions.create(model="stillwatch", prompt=prompt_ids + ids, max_tokens=0, echo=True,
                                        logprobs=2)
    lp = raw.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(prompt_ids) + len(ids) and raw.choices[0].text == PROMPT + "4721+3856=8577"
    assert lp.token_logprobs[len(prompt_ids):] == pytest.approx(want.logprobs, abs=1e-4)


def _params():
    from stillwatch.teachers import SamplingParams

    return SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=2)


def test_authentication_errors(gw):
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=gw["server"].base, api_key="sw-000000000000-" + "x" * 43, max_retries=0).models.list()
    assert err.value.code == "invalid_api_key"
    r = httpx.get(gw["server"].base + "/models")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_block_and_unblock_take_effect_on_next_request(gw):
    c, store = client(gw, "victim"), gw["store"]
    chat(c, max_tokens=2)
    store.block("victim", "bulk harvesting of reasoning traces")
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(c, max_tokens=2)
    assert err.value.code == "account_blocked" and "bulk harvesting" in err.value.message
    store.unblock("victim")
    assert chat(c, max_tokens=2).choices


def test_rate_limits(gw):
    c = client(gw, "tight")
    chat(c, max_tokens=2)
    chat(c, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as err:
        chat(c, max_tokens=2)
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers.get("x-should-retry") != "false"
    # A request that can never fit the token quota: waiting will not help, and the client must not retry.
    with pytest.raises(openai.RateLimitError) as err:
        chat(client(gw, "small"), max_tokens=60)
    assert err.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("kwargs, param", [
    (dict(n=5), "n"),
    (dict(max_tokens=65), "max_tokens"),
    (dict(max_tokens=-1), "max_tokens"),
    (dict(temperature=3), "temperature"),
    (dict(top_logprobs=21, logprobs=True), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(stream_options={"include_usage": True}), "stream_options"),
    (dict(extra_body={"frobnicate": 1}), "frobnicate"),
    (dict(messages=[{"role": "user", "content": "7" * 300}]), "messages"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
])
def test_bad_parameters_name_the_param(gw, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client(gw), **kwargs)
    assert err.value.param == param


@pytest.mark.parametrize("body, headers, status", [
    (b'{"model": "stillwatch", "prompt": ', {}, 400),  # malformed JSON
    (b'{"model": "stillwatch", "prompt": "\xff\xfe"}', {}, 400),  # invalid UTF-8
    (b'{"model": "stillwatch", "prompt": "\\ud800"}', {}, 400),  # lone surrogate
    (b'{"model": "stillwatch", "prompt": 12}', {}, 400),  # wrong type
    (b'{"model": "stillwatch", "prompt": "x", "max_tokens": 1e999}', {}, 400),
    (b'{"model": "stillwatch", "prompt": "x", "max_tokens": 123456789012345678901234567890}', {}, 400),
    (b'{"model": "stillwatch", "prompt": [99999999]}', {}, 400),  # token id outside the vocabulary
    (b'{"model": "stillwatch", "prompt": [[]]}', {}, 400),
    (b'[1, 2, 3]', {}, 400),
    (b'{"model": "stillwatch", "prompt": "' + b"x" * 30_000 + b'"}', {}, 413),  # over max_body_bytes
    (b'{"model": "stillwatch", "prompt": "x"}', {"Content-Type": "text/plain"}, 400),
    (b'{"model": "gpt-9", "prompt": "x"}', {}, 404),
])
def test_bad_input_gets_openai_shaped_4xx(gw, body, headers, status):
    h = {"Authorization": f"Bearer {gw['keys']['alice']}", "Content-Type": "application/json", **headers}
    r = httpx.post(gw["server"].base + "/completions", content=body, headers=h)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(gw["server"].url + "/health").json()["status"] == "ok"


def test_oversized_chunked_body_is_413(gw):
    def chunks():
        for _ in range(30):
            yield b"x" * 1000

    r = httpx.post(gw["server"].base + "/completions", content=chunks(),
                   headers={"Authorization": f"Bearer {gw['keys']['alice']}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_audit_is_committed_before_the_last_byte(gw):
    c = client(gw, "bob")
    marker = "add: 1111+2222\n"
    text = "".join(ch.choices[0].delta.content or "" for ch in chat(
        c, messages=[{"role": "user", "content": marker}], stream=True, max_tokens=5) if ch.choices)
    # No waiting: the record must already be there when the client has seen [DONE].
    rows = audit_query(gw["engine"], account="bob", limit=5)
    mine = [r for r in rows if r["prompt"] and marker.strip() in r["prompt"]]
    assert mine and mine[0]["completion"] == text and mine[0]["status"] == 200
    assert mine[0]["endpoint"] == "/v1/chat/completions" and mine[0]["params"]["max_tokens"] == 5
    assert mine[0]["key_id"] == gw["keys"]["bob"].split("-")[1]
    # The response's x-request-id names its audit record.
    r = httpx.post(gw["server"].base + "/chat/completions", headers={"Authorization": f"Bearer {gw['keys']['bob']}"},
                   json={"model": "stillwatch", "messages": [{"role": "user", "content": marker}], "max_tokens": 2})
    assert r.headers["x-request-id"] in {row["request_id"] for row in audit_query(gw["engine"], account="bob")}
    # Refusals are audited too, and no raw key is ever written.
    blocked = [r for r in audit_query(gw["engine"], account="victim", limit=50) if r["status"] == 403]
    assert blocked and blocked[0]["decision"] == "block"
    raw = b"".join(p.read_bytes() for p in gw["db_file"].parent.glob("guard.db*"))
    assert not any(k.encode() in raw for k in gw["keys"].values())


def test_metrics(gw):
    chat(client(gw), max_tokens=2)
    text = httpx.get(gw["server"].url + "/metrics").text
    assert 'stillwatch_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "stillwatch_batch_sequences_count" in text and "stillwatch_tokens_total" in text
    count = [line for line in text.splitlines() if line.startswith("stillwatch_batch_sequences_count")]
    assert float(count[0].split()[-1]) >= 1


def test_proxy_mode_forwards_streams_and_errors(gw, tmp_path):
    """A second gateway in proxy mode in front of the first: streaming, usage, audit and upstream errors."""
    from stillwatch.guard.app import create_app

    db = f"sqlite:///{tmp_path / 'proxy.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("carol")[1]
    settings = GuardSettings(upstream=gw["server"].base, upstream_api_key=gw["keys"]["alice"], db_url=db)
    with ServerThread(create_app(settings)) as proxy:
        c = openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0)
        assert [m.id for m in c.models.list().data] == ["stillwatch"]
        whole = chat(c, temperature=0).choices[0].message.content
        streamed = [ch for ch in chat(c, temperature=0, stream=True)]
        assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == whole
        assert all(ch.usage is None for ch in streamed)  # the injected usage chunk is not passed on
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="no-such-model", prompt="x")
        rows = audit_query(engine, account="carol", limit=10)
        assert any(r["completion"] == whole and r["completion_tokens"] > 0 for r in rows)
    dead = GuardSettings(upstream="http://127.0.0.1:9/v1", db_url=db)
    with ServerThread(create_app(dead)) as proxy:
        with pytest.raises(openai.APIStatusError) as err:
            chat(openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0))
        assert err.value.status_code == 502
    engine.dispose()


def test_degraded_account_gets_the_degrade_processor(gw):
    store = gw["store"]
    store.set_degraded("mallory", True)
    try:
        degraded = chat(client(gw, "mallory"), max_tokens=6, temperature=1.0).choices[0].message.content
        normal = chat(client(gw, "alice"), max_tokens=6, temperature=1.0).choices[0].message.content
    finally:
        store.set_degraded("mallory", False)
    assert degraded == "777777" and normal != "777777"
    assert chat(client(gw, "mallory"), max_tokens=6, temperature=0).choices[0].message.content != "777777"
    decisions = [r["decision"] for r in audit_query(gw["engine"], account="mallory", limit=5)]
    assert decisions[-1] == "degrade" and decisions[0] == "allow"


def test_watermark_hook_builds_the_keyed_processor(tiny_teacher):
    from stillwatch.guard.hooks import load_hooks
    from stillwatch.teachers.local import LocalTeacher

    teacher = LocalTeacher.from_dir(tiny_teacher)
    assert load_hooks(GuardSettings(teacher=tiny_teacher), teacher).processors(False) == ()
    hooks = load_hooks(GuardSettings(teacher=tiny_teacher, watermark_key="s3cret"), teacher)
    (processor,) = hooks.processors(False)
    assert type(processor).__name__ == "KeyedWatermarkProcessor"


def test_batcher_groups_concurrent_jobs_by_key():
    from stillwatch.guard.batching import Batcher

    calls: list[tuple[object, list]] = []

    def run(key, payloads):
        calls.append((key, list(payloads)))
        if key == "boom":
            raise ValueError("bad group")
        return [p * 10 for p in payloads]

    async def go():
        batcher = Batcher(run, max_batch=64, wait_ms=50)
        await batcher.start()
        try:
            jobs = [batcher.submit("a", i) for i in range(6)] + [batcher.submit("b", 100)]
            boom = asyncio.ensure_future(batcher.submit("boom", 1))
            results = await asyncio.gather(*jobs)
            with pytest.raises(ValueError):
                await boom
            return results, await batcher.submit("a", 7)  # the worker survived the failing group
        finally:
            await batcher.stop()

    results, later = asyncio.run(go())
    assert results == [0, 10, 20, 30, 40, 50, 1000] and later == 70
    # One call per key for everything that arrived together; order within a group is arrival order.
    assert len(calls) == 4 and dict(calls[:3]) == {"a": [0, 1, 2, 3, 4, 5], "b": [100], "boom": [1]}
