"""A stub backend for the detector's end-to-end tests: answers instantly with the task's reference answer,
so a live gateway carries thousands of simulated requests on a small CPU."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from stillwatch.guard.backends import Result

MODEL = "stub"


def _answer(prompt: str) -> str:
    from stillwatch.tasks import task_for_prompt

    task = task_for_prompt(prompt.strip())
    ref = getattr(task, "reference_answer", None) if task is not None else None
    try:
        answer = ref(prompt.strip() + "\n") if ref else None
    except (ValueError, IndexError):
        answer = None
    return f"... -> {answer}" if answer else "a small cat sleeps."


class StubBackend:
    """The Backend protocol, with canned completions: n choices, usage counted in words."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stillwatch"}]}

    def _result(self, prompt: str, n: int, chat: bool) -> Result:
        text = _answer(prompt)
        toks = len(text.split())
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": toks * n,
                 "total_tokens": len(prompt.split()) + toks * n}
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                        "logprobs": None} for i in range(n)]
            body: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                                    "created": int(time.time()), "model": MODEL, "choices": choices, "usage": usage}
        else:
            choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(n)]
            body = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": MODEL, "choices": choices, "usage": usage}
        return Result(body=body, prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                      texts=[text] * n, finished=True)

    async def chat(self, req: Any, degraded: bool, hide_reasoning: bool = False) -> Result:
        return self._result("\n".join(m.text() for m in req.messages), req.n or 1, True)

    async def completions(self, req: Any, degraded: bool, hide_reasoning: bool = False) -> Result:
        prompt = req.prompt if isinstance(req.prompt, str) else str(req.prompt)
        return self._result(prompt, req.n or 1, False)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.3):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it gives a true value or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@contextmanager
def stub_gateway(directory: Path, admin_key: str, detection_interval_s: float) -> Iterator[tuple[Any, str, Any]]:
    """A live gateway on the stub backend (SQLite in `directory`, the simulator's X-Forwarded-For trusted):
    (server, database URL, app)."""
    from gateway_helpers import ServerThread

    from stillwatch.guard.app import create_app
    from stillwatch.guard.settings import GuardSettings

    db = f"sqlite:///{directory / 'audit.db'}"
    settings = GuardSettings(db_url=db, admin_key=admin_key, trusted_proxies=["127.0.0.1"],
                             detection_interval_s=detection_interval_s)
    app = create_app(settings, backend=StubBackend())
    with ServerThread(app) as server:
        yield server, db, app
