"""One key cannot stall the gateway: huge prompts, many messages and huge echo-scoring replies stay off the
event loop, so /health and an honest client keep answering while the attack runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import query as audit_query
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

# The sharp measure: the most CPU time the event loop's thread spent between two wake-ups of a 5 ms timer,
# which no other load on the machine inflates (wall time does: a starved process waits for a core). Before the
# fix the loop was held for 3.4 s of CPU at once; after it, 23 ms.
LOOP_BUSY_BOUND_S = 0.25
# Wall-clock bounds are generous on purpose: these machines are shared. Before the fix /health waited 13 s.
HEALTH_BOUND_S = 5.0
# The honest client shares the model thread with the attack's echo scoring, so on a starved machine its
# answers can take many seconds without the loop ever stalling: this only catches a gateway that hangs.
HONEST_BOUND_S = 60.0
ATTACKERS = 12


def add_loop_monitor(app) -> None:  # type: ignore[no-untyped-def]
    """`GET /_loop` (a test-only route) starts a watcher on the server's loop and returns its worst so far."""
    import asyncio

    state: dict = {"busy": 0.0, "task": None}

    async def watch() -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(0.005)
            now = time.thread_time()
            state["busy"] = max(state["busy"], now - last)
            last = now

    async def loop_busy() -> dict:
        if state["task"] is None:
            state["task"] = asyncio.get_running_loop().create_task(watch())
        return {"busy_s": state["busy"]}

    app.add_api_route("/_loop", loop_busy, methods=["GET"])


@pytest.fixture(scope="module")
def untrained(untrained_tiny: Path) -> Path:
    return untrained_tiny


@pytest.fixture(scope="module")
def gw(untrained: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stall")
    db = f"sqlite:///{root / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    store = AccountStore(engine)
    keys = {name: store.create_key(name)[1] for name in ("mallory", "honest")}
    (root / "quotas.toml").write_text('[default]\nrequests = "100000/minute"\ntokens = "100000000/minute"\n')
    settings = GuardSettings(teacher=untrained, db_url=db, quotas_file=root / "quotas.toml", torch_threads=1)
    from stillwatch.guard.app import create_app

    app = create_app(settings)
    add_loop_monitor(app)
    with ServerThread(app) as server:
        yield {"base": server.url, "keys": keys, "engine": engine}
    engine.dispose()


def _post(client: httpx.Client, base: str, key: str, path: str, body: bytes) -> httpx.Response:
    return client.post(base + path, content=body, headers={"Authorization": f"Bearer {key}",
                                                           "Content-Type": "application/json"}, timeout=120)


def test_stall_attack_leaves_health_and_honest_clients_responsive(gw) -> None:
    base, keys = gw["base"], gw["keys"]
    huge = json.dumps({"model": "stillwatch", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "add: 1+2\n" * 98_000}]}).encode()
    many = json.dumps({"model": "stillwatch", "max_tokens": 4,
                       "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 3800}
                                    for i in range(256)]}).encode()
    echo = json.dumps({"model": "stillwatch", "prompt": [[5] * 250] * 8, "max_tokens": 0, "echo": True,
                       "logprobs": 20}).encode()
    assert len(huge) < 1_000_000 and len(many) < 1_000_000
    honest = json.dumps({"model": "stillwatch", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "add: 12+30\n"}]}).encode()
    stop = threading.Event()
    statuses: list[tuple[str, int, str | None]] = []

    def attack(body: bytes, path: str, kind: str) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                r = _post(client, base, keys["mallory"], path, body)
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                statuses.append((kind, r.status_code, code))

    threads = [threading.Thread(target=attack, args=(huge, "/v1/chat/completions", "huge"), daemon=True)
               for _ in range(ATTACKERS - 4)]
    threads += [threading.Thread(target=attack, args=(many, "/v1/chat/completions", "many"), daemon=True)
                for _ in range(2)]
    threads += [threading.Thread(target=attack, args=(echo, "/v1/completions", "echo"), daemon=True)
                for _ in range(2)]
    health: list[float] = []
    served: list[float] = []

    def probe() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                began = time.perf_counter()
                assert client.get(base + "/health", timeout=60).status_code == 200
                health.append(time.perf_counter() - began)
                time.sleep(0.05)

    def honest_client() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                began = time.perf_counter()
                r = _post(client, base, keys["honest"], "/v1/chat/completions", honest)
                assert r.status_code == 200, r.text
                served.append(time.perf_counter() - began)
                time.sleep(0.05)

    threads += [threading.Thread(target=probe, daemon=True), threading.Thread(target=honest_client, daemon=True)]
    httpx.get(base + "/_loop")
    time.sleep(0.2)
    baseline = httpx.get(base + "/_loop").json()["busy_s"]
    for t in threads:
        t.start()
    time.sleep(6.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    busy = httpx.get(base + "/_loop").json()["busy_s"]
    print(f"event loop busy at most {busy * 1000:.0f} ms of CPU at once (idle: {baseline * 1000:.0f} ms); "
          f"{len(health)} /health answers, {len(served)} honest answers in 6 s")
    assert health and served
    kinds = {kind for kind, _, _ in statuses}
    assert kinds == {"huge", "many", "echo"}, statuses[:5]
    assert all(code == "context_length_exceeded" for kind, _, code in statuses if kind in ("huge", "many"))
    assert all(status == 200 for kind, status, _ in statuses if kind == "echo")
    health.sort()
    served.sort()
    print(f"/health under attack: median {health[len(health) // 2] * 1000:.0f} ms, max {health[-1] * 1000:.0f} ms;"
          f" honest chat: median {served[len(served) // 2] * 1000:.0f} ms, max {served[-1] * 1000:.0f} ms;"
          f" {len(statuses)} attack requests")
    assert busy < LOOP_BUSY_BOUND_S
    assert health[-1] < HEALTH_BOUND_S and served[-1] < HONEST_BOUND_S


def test_rejected_prompts_are_stored_truncated_with_the_hash_of_the_whole(gw) -> None:
    import hashlib

    content = "add: 9+9\n" * 90_000
    body = json.dumps({"model": "stillwatch", "messages": [{"role": "user", "content": content}]}).encode()
    with httpx.Client() as client:
        r = _post(client, gw["base"], gw["keys"]["mallory"], "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    time.sleep(0.2)
    record = audit_query(gw["engine"], account="mallory", limit=1)[0]
    assert record["status"] == 400 and len(record["prompt"]) <= 4096
    whole = json.dumps([{"role": "user", "content": content}], sort_keys=True, ensure_ascii=False)
    assert record["prompt_sha256"] == hashlib.sha256(whole.encode()).hexdigest()
