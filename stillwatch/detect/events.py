"""One audited request as the detector sees it: a plain dataclass, built from a row or from the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

# Prompts are hostile: the detector looks at this many characters and no more, so one huge prompt costs O(1).
MAX_PROMPT_CHARS = 2000


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: a string as is, chat messages joined by newlines, token ids as an empty string."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        if prompt[:1] in "[{":  # the audit log stores chat messages as JSON text
            try:
                return prompt_text(json.loads(prompt))
            except ValueError:
                return prompt[:MAX_PROMPT_CHARS]
        return prompt[:MAX_PROMPT_CHARS]
    if isinstance(prompt, Mapping):
        content = prompt.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return str(content or "")[:MAX_PROMPT_CHARS]
    if isinstance(prompt, (list, tuple)):
        if all(isinstance(x, int) for x in prompt):
            return ""
        return "\n".join(prompt_text(p) for p in prompt)[:MAX_PROMPT_CHARS]
    return str(prompt)[:MAX_PROMPT_CHARS]


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value or 0.0)


@dataclass
class Event:
    """One audited request: who, when, which endpoint, the prompt text, sampling params, tokens and client."""

    account: str
    time: float  # seconds since the epoch
    endpoint: str = "/v1/chat/completions"
    prompt: str = ""
    temperature: float | None = None
    top_p: float | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    seed: int | None = None
    max_tokens: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    client_addr: str | None = None
    user_agent: str | None = None
    key_id: str | None = None
    # The elicitation classifier's scores, when the gateway already stored them with the record.
    elicit: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_params(cls, account: str, time: float, endpoint: str, prompt: Any, params: Mapping[str, Any],
                    **kwargs: Any) -> Event:
        """An event from OpenAI request parameters (chat: logprobs bool + top_logprobs; legacy: logprobs=k)."""
        params = params or {}
        logprobs = params.get("logprobs")
        top = params.get("top_logprobs")
        if isinstance(logprobs, int) and not isinstance(logprobs, bool):  # the legacy endpoint's logprobs=k
            top, logprobs = logprobs, True
        max_tokens = params.get("max_completion_tokens", params.get("max_tokens"))
        return cls(account=account, time=time, endpoint=endpoint, prompt=prompt_text(prompt),
                   temperature=_float(params.get("temperature")), top_p=_float(params.get("top_p")),
                   logprobs=bool(logprobs), top_logprobs=int(top or 0), n=int(params.get("n") or 1),
                   seed=_int(params.get("seed")), max_tokens=_int(max_tokens), **kwargs)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        """An event from an audit row as the guard hands it out (plain dict: account, time, params, ...)."""
        params = row.get("params") or {}
        if isinstance(params, str):
            params = json.loads(params)
        return cls.from_params(
            account=str(row.get("account") or row.get("account_id") or "?"), time=_timestamp(row.get("time")),
            endpoint=str(row.get("endpoint") or ""), prompt=row.get("prompt"), params=params,
            prompt_tokens=int(row.get("prompt_tokens") or 0), completion_tokens=int(row.get("completion_tokens") or 0),
            status=int(row.get("status") or 200), key_id=row.get("key_id"),
            client_addr=row.get("client_addr") or params.get("client_addr"),
            user_agent=row.get("user_agent") or params.get("user_agent"), elicit=_scores(row.get("elicit")))


def _scores(value: Any) -> dict[str, Any] | None:
    """Stored elicitation scores (a dict, or its JSON text); None when there are none or they failed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) and "score" in value else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)
