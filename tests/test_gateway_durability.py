"""Audit durability: SIGKILL a real `stillwatch serve` under load; every response a client got has its record."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import openai

from guard_support import Server, mock_reply, mock_upstream
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import iter_served
from stillwatch.guard.db import make_engine, upgrade

CLIENTS = 12
PER_CLIENT = 150  # a bound on each loop; the kill comes long before
KILL_AFTER = 120  # full responses before the SIGKILL
MARK = re.compile(r"dur-\d+-\d+")


def _client_loop(base_url: str, key: str, index: int, done: dict[str, str], lock: threading.Lock,
                 stop: threading.Event) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20.0)
    for i in range(PER_CLIENT):
        if stop.is_set():
            return
        prompt = f"dur-{index}-{i}"
        try:
            kind = i % 3
            if kind == 0:
                text = client.completions.create(model="mock", prompt=prompt, max_tokens=16).choices[0].text
            elif kind == 1:
                text = client.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": prompt}]).choices[0].message.content
            else:  # a stream counts as full only once `data: [DONE]` has arrived (the iterator ends cleanly)
                stream = client.chat.completions.create(model="mock", stream=True,
                                                        messages=[{"role": "user", "content": prompt}])
                text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        except (openai.APIError, OSError):
            return  # the server is gone: this request did not get a full response
        with lock:
            done[prompt] = text


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = make_engine(db)
    upgrade(engine)
    _, key = AccountStore(engine).create_key("loadtest")
    quotas = tmp_path / "quotas.toml"
    quotas.write_text('[default]\nrequests = "unlimited"\ntokens = "unlimited"\n')
    done: dict[str, str] = {}
    lock, stop = threading.Lock(), threading.Event()
    with mock_upstream() as upstream:
        args = ["--upstream", upstream, "--db", db, "--quotas", str(quotas)]
        server = Server(args, {}, tmp_path / "server.log").start()
        threads = [threading.Thread(target=_client_loop, args=(server.base_url + "/v1", key, i, done, lock, stop))
                   for i in range(CLIENTS)]
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while len(done) < KILL_AFTER and time.monotonic() < deadline and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            server.kill()  # SIGKILL in the middle of the load: no shutdown handler, no flush
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        finally:
            stop.set()
            server.kill()
        answered = dict(done)
        assert len(answered) >= KILL_AFTER, server.log_text()[-2000:]
        assert all(text == mock_reply(prompt) for prompt, text in answered.items())

        # Restart on the same database: it opens cleanly, and the records are all there.
        restarted = Server(args, {}, tmp_path / "server2.log").start()
        try:
            client = openai.OpenAI(base_url=restarted.base_url + "/v1", api_key=key, max_retries=0)
            assert client.completions.create(model="mock", prompt="after", max_tokens=4).choices[0].text
        finally:
            restarted.stop()

    served: dict[str, str] = {}
    for record in iter_served(make_engine(db), account="loadtest"):
        for mark in MARK.findall(record["prompt"] or ""):
            served[mark] = record["completion"]
    missing = sorted(set(answered) - set(served))
    assert not missing, f"{len(missing)} answered requests have no audit record, e.g. {missing[:5]}"
    # ...and each record holds exactly what its client was sent.
    assert all(served[prompt] == text for prompt, text in answered.items())
