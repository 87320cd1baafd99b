"""Harvest against a stub OpenAI-compatible server on 127.0.0.1: 429 + Retry-After, 401, 403, 5xx."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stillwatch.harvest import HarvestStopped, HarvestStore, harvest, task_source
from stillwatch.teachers.completion import SamplingParams
from stillwatch.teachers.openai_teacher import OpenAITeacher


class Stub:
    """Answers like an OpenAI chat endpoint; behaviour chosen by the API key.

    good: 200. busy: the first request answers 429 with Retry-After: 1, then 200. revoke-after-N: 200 for the
    first N requests, then 401. banned: 403. broken: 500.
    """

    def __init__(self, keep_alive: bool = False):
        self.log: list[tuple[float, str, int]] = []  # (time, key, status)
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"  # 1.1: connections stay open

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                key = self.headers.get("authorization", "").removeprefix("Bearer ")
                status, headers, payload = stub.answer(key, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, key: str, body: dict) -> tuple[int, dict, dict]:
        with self.lock:
            seen = sum(1 for _, k, _ in self.log if k == key)
            status, headers = 200, {}
            if key == "busy" and seen == 0:
                status, headers = 429, {"retry-after": "1"}
            elif key.startswith("revoke-after-") and seen >= int(key.rsplit("-", 1)[1]):
                status = 401
            elif key == "banned":
                status = 403
            elif key == "broken":
                status = 500
            elif key not in ("good", "busy") and not key.startswith("revoke-after-"):
                status = 401
            self.log.append((time.monotonic(), key, status))
        if status != 200:
            kinds = {401: "invalid_api_key", 403: "account_blocked", 429: "rate_limit_exceeded", 500: "server_error"}
            return status, headers, {"error": {"message": f"stub says {status}", "type": kinds[status],
                                               "param": None, "code": kinds[status]}}
        return 200, {}, self.completion(body)

    @staticmethod
    def completion(body: dict) -> dict:
        k = body.get("top_logprobs") or 0
        choices = []
        for i in range(body.get("n") or 1):
            ids = [17 + i, 12, 18]
            content = [{"token": f"token_id:{t}", "logprob": -0.5, "bytes": None,
                        "top_logprobs": [{"token": f"token_id:{t + j}", "logprob": -0.5 - j, "bytes": None}
                                         for j in range(k)]} for t in ids]
            choices.append({"index": i, "finish_reason": "stop", "logprobs": {"content": content},
                            "message": {"role": "assistant", "content": f"sample {i} -> 3"}})
        return {"id": "cmpl-stub", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


@pytest.fixture
def stub():
    server = Stub()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _teacher(stub: Stub, key: str, concurrency: int = 2, max_retries: int = 3) -> OpenAITeacher:
    return OpenAITeacher(stub.url, key, model="stub", concurrency=concurrency, max_retries=max_retries)


def test_429_with_retry_after_is_honoured_then_succeeds(tmp_path, stub):
    store = HarvestStore(tmp_path / "s.db", create=True)
    params = SamplingParams(max_tokens=8, n=2, top_logprobs=2)
    result = harvest(_teacher(stub, "busy", concurrency=1), task_source(["add"], 3), store, params,
                     concurrency=1, progress=False)
    assert (result.rows_added, result.prompts_failed, store.count()) == (6, 0, 6)
    statuses = [s for _, _, s in stub.log]
    assert statuses == [429, 200, 200, 200]
    # the client waited the server's Retry-After (1 s) before retrying, not its own 0.5 s first back-off
    assert stub.log[1][0] - stub.log[0][0] >= 0.95
    row = next(store.iter_rows())
    c = row.completion
    assert c.token_ids == [17, 12, 18] and c.logprobs == [-0.5] * 3 and c.prompt_tokens == 5
    assert c.top_logprobs[0] == [(17, -0.5), (18, -1.5)]
    assert row.teacher.startswith("endpoint:http://127.0.0.1") and row.params["top_logprobs"] == 2


def test_one_client_harvests_twice_without_closed_loop_errors(tmp_path, caplog):
    """Each harvest runs its own event loop: the client's open connections of the first must not be left for
    the second to close, where they fail with "Event loop is closed" (logged as a task exception)."""
    stub = Stub(keep_alive=True)
    stub.thread.start()
    teacher = _teacher(stub, "good")
    store = HarvestStore(tmp_path / "s.db", create=True)

    async def next_loop() -> None:  # another loop binds its own client; the first one is collected meanwhile
        assert teacher.client is not None
        gc.collect()
        await asyncio.sleep(0.2)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for tasks in (["add"], ["mul"]):
            harvest(teacher, task_source(tasks, 2), store, SamplingParams(max_tokens=8), concurrency=2,
                    progress=False)
            asyncio.run(next_loop())
    stub.server.shutdown()
    stub.server.server_close()
    assert store.count() == 4
    assert not [r for r in caplog.records if "Event loop is closed" in (r.getMessage() + str(r.exc_info))]


def test_403_stops_cleanly_in_process(tmp_path, stub):
    store = HarvestStore(tmp_path / "s.db", create=True)
    with pytest.raises(HarvestStopped) as info:
        harvest(_teacher(stub, "banned"), task_source(["add"], 20), store, SamplingParams(max_tokens=8),
                concurrency=4, progress=False)
    assert info.value.status == 403 and info.value.rows == 0
    assert "refused the account (403)" in str(info.value) and "0 rows collected" in str(info.value)
    # it stopped at once: no request for each of the 20 prompts
    assert len(stub.log) <= 4 + 2 * 4


def test_repeated_server_errors_stop_after_max_failures(tmp_path, stub):
    store = HarvestStore(tmp_path / "s.db", create=True)
    with pytest.raises(HarvestStopped, match="3 prompts failed in a row .*endpoint error 500"):
        harvest(_teacher(stub, "broken", concurrency=1, max_retries=0), task_source(["add"], 10), store,
                SamplingParams(max_tokens=8), concurrency=1, progress=False, retries=0,
                max_consecutive_failures=3)
    assert len(stub.log) == 3


def test_401_mid_harvest_exits_2_with_one_line_and_keeps_rows_then_resumes(tmp_path, stub):
    db = tmp_path / "s.db"
    base = [sys.executable, "-m", "stillwatch", "harvest", "--endpoint", stub.url, "--task", "add", "--n", "8",
            "--out", str(db), "--concurrency", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    denied = subprocess.run(base + ["--api-key", "revoke-after-3"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert denied.returncode == 2, denied.stderr
    assert "Traceback" not in denied.stderr
    errors = [line for line in denied.stderr.splitlines() if line.startswith("stillwatch: error:")]
    assert len(errors) == 1
    assert "refused the API key (401)" in errors[0] and "3 rows collected" in errors[0]
    assert "re-run the same command" in errors[0]
    with HarvestStore(db) as store:
        assert store.count() == 3
    done = subprocess.run(base + ["--api-key", "good"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 new rows" in done.stdout and "3 prompts were already complete" in done.stdout
    with HarvestStore(db) as store:
        assert store.count() == 8 and store.meta()["endpoint"] == stub.url
