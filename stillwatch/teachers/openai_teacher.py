"""OpenAITeacher: any OpenAI-compatible endpoint (vLLM, a stillwatch gateway, OpenAI) via the official async client.

An endpoint is sent what it accepts. OpenAI's API rejects any request argument it does not know (400,
`invalid_request_error`), so vLLM's `return_tokens_as_token_ids` goes only to a server known to take it:
`server="vllm"` says so, `server="openai"` sends standard parameters only, and `server="auto"` (the default)
asks `GET /models` once, which every OpenAI-compatible server answers and which costs no tokens: a model
`owned_by` "vllm" or "stillwatch" (the gateway speaks vLLM's extension) means vLLM-style, anything else, or no
answer, means standard only. `top_logprobs` is capped at the server's limit (OpenAI: 20 on chat, 5 on
completions); `ServerProfile.plan` says what was asked and what is sent.

Tokens come back as `token_id:N` (vLLM-style, when asked), else as strings with their UTF-8 `bytes` (chat) or
as strings alone (completions). Ids are read from `token_id:N`, else looked up in the teacher tokenizer when one
is given; the strings are kept in `Completion.tokens` / `top_tokens` so that a student with another tokenizer
can spell them (for `token_id:N`, they are spelled from the tokenizer when there is one).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import openai
from transformers import PreTrainedTokenizerBase

from stillwatch.errors import ConfigError, TeacherError
from stillwatch.redact import redact_url
from stillwatch.teachers.completion import UNKNOWN_ID, Completion, SamplingParams, ScoredText
from stillwatch.teachers.ratelimit import RateGate, RateStats, retry_wait, waiting_helps

TOKEN_ID_PREFIX = "token_id:"  # vLLM's `return_tokens_as_token_ids` spelling, which the gateway also speaks
ServerKind = Literal["auto", "vllm", "openai"]
SERVER_KINDS: tuple[str, ...] = ("auto", "vllm", "openai")
# The most top_logprobs each kind takes, per API (None: the server's own setting, which a 400 reports).
_LIMITS: dict[str, dict[str, int | None]] = {
    "openai": {"chat": 20, "completions": 5},
    "vllm": {"chat": None, "completions": None},
    "stillwatch": {"chat": 20, "completions": 20},  # the gateway's schema bounds
}
_PROBE_TIMEOUT_S = 10.0
MAX_TRANSIENT_WAIT_S = 30.0  # the longest one back-off from a connection fault or 5xx


@dataclass(frozen=True)
class ServerProfile:
    """What an endpoint accepts: vLLM's token-id extension or standard parameters only, and its top-k limit."""

    kind: Literal["vllm", "openai", "stillwatch"]
    token_ids: bool  # accepts `return_tokens_as_token_ids`
    decided_by: str  # how: the flag, or what the probe saw

    def limit(self, api: str) -> int | None:
        """The most `top_logprobs` this server takes on `api` (None: no known limit)."""
        return _LIMITS[self.kind][api]

    def plan(self, api: str, top_logprobs: int) -> dict:
        """What a harvest records: the server, how it was decided, and the top k asked, sent and allowed."""
        limit = self.limit(api)
        sent = top_logprobs if limit is None else min(top_logprobs, limit)
        return {**asdict(self), "api": api, "top_logprobs": {"requested": top_logprobs, "sent": sent,
                                                             "limit": limit, "capped": sent < top_logprobs}}


def profile_for(kind: str, decided_by: str | None = None) -> ServerProfile:
    """The profile of a server kind given by the user (`vllm` or `openai`)."""
    if kind == "vllm":
        return ServerProfile("vllm", True, decided_by or "--server vllm")
    if kind == "openai":
        return ServerProfile("openai", False, decided_by or "--server openai")
    raise ConfigError(f"--server must be one of {', '.join(SERVER_KINDS)}, not {kind!r}")


class AccessDenied(TeacherError):
    """The endpoint refused our key (401) or our account (403): retrying will not help."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Limited(Exception):
    """A 429, already told to the gate: whether any wait cures it, and the gate's verdict on retrying."""

    def __init__(self, error: openai.RateLimitError, curable: bool, retry: bool):
        super().__init__(error.message)
        self.error, self.curable, self.retry = error, curable, retry


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible API.

    Every request passes one `RateGate` (`stillwatch.teachers.ratelimit`): a 429 pauses them all and narrows
    how many are in flight, instead of each retrying on its own. Connection faults, timeouts and 5xx are
    retried `max_retries` times with back-off that honours `Retry-After`; 401, 403 and a 429 that no wait
    cures become `AccessDenied`, so that callers can stop cleanly. A prompt is a string (sent as one user message on
    the chat API) or a list of `{role, content}` messages, sent as they are.
    """

    def __init__(self, base_url: str, api_key: str, model: str = "stillwatch",
                 tokenizer: PreTrainedTokenizerBase | None = None, api: Literal["chat", "completions"] = "chat",
                 concurrency: int = 16, max_retries: int = 6, timeout: float = 120.0, server: ServerKind = "auto",
                 rate_patience_s: float = 600.0):
        if server not in SERVER_KINDS:
            raise ConfigError(f"--server must be one of {', '.join(SERVER_KINDS)}, not {server!r}")
        # The client itself never retries: a 429 must reach the shared gate at once (see `_call`).
        self._client_args = dict(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self._max_retries = max_retries
        self._concurrency, self._rate_patience_s = concurrency, rate_patience_s
        self.rate_stats = RateStats(lowest_window=concurrency)  # what the rate gates did, over every loop
        self._loop: asyncio.AbstractEventLoop | None = None
        # `served_model`, not `model`: callers read `teacher.model` as in-process weights (LocalTeacher's).
        self.served_model, self.tokenizer, self.api = model, tokenizer, api
        self.server = server
        self._profile: ServerProfile | None = None if server == "auto" else profile_for(server)
        self.name = f"endpoint:{redact_url(base_url)}#{model}"  # names are recorded: no credentials
        self._spelling: list[str | None] | None = None
        self._ids_by_bytes: dict[bytes, int] | None = None
        if tokenizer is not None:
            from stillwatch.tokenizer import token_strings

            self._spelling = token_strings(tokenizer)
            self._ids_by_bytes = {}
            for i, s in enumerate(self._spelling):
                if s is not None:
                    self._ids_by_bytes.setdefault(s.encode("utf-8", "surrogateescape"), i)

    def _bind(self) -> None:
        # The client's connection pool and the rate gate belong to one event loop; callers that run each
        # batch under its own asyncio.run (evaluate, prove) get fresh ones instead of "Event loop is closed".
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._client = openai.AsyncOpenAI(**self._client_args)
            self._gate = RateGate(self._concurrency, self._rate_patience_s, stats=self.rate_stats)
            self._probe_lock = asyncio.Lock()

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop."""
        self._bind()
        return self._client

    async def profile(self) -> ServerProfile:
        """The server's profile: from `server`, or probed once with `GET /models` (harmless, no tokens)."""
        if self._profile is not None:
            return self._profile
        self._bind()
        async with self._probe_lock:
            if self._profile is None:
                self._profile = await self._probe()
        return self._profile

    async def _probe(self) -> ServerProfile:
        try:
            page = await self._client.with_options(max_retries=0, timeout=_PROBE_TIMEOUT_S).models.list()
            owners = {str(getattr(m, "owned_by", "") or "") for m in page.data}
        except openai.AuthenticationError as exc:
            raise AccessDenied(f"endpoint refused the API key (401): {exc.message}", 401) from None
        except openai.PermissionDeniedError as exc:
            raise AccessDenied(f"endpoint refused the account (403): {exc.message}", 403) from None
        except Exception as exc:  # noqa: BLE001 - no model list: assume the strictest server
            reason = getattr(exc, "status_code", None) or type(exc).__name__
            return ServerProfile("openai", False, f"auto: GET /models failed ({reason}); standard parameters only")
        if "vllm" in owners:
            return ServerProfile("vllm", True, "auto: GET /models lists a model owned_by 'vllm'")
        if "stillwatch" in owners:
            return ServerProfile("stillwatch", True, "auto: GET /models lists a model owned_by 'stillwatch' "
                                                     "(a stillwatch gateway, vLLM-compatible)")
        shown = ", ".join(sorted(o for o in owners if o)[:3]) or "none"
        return ServerProfile("openai", False, f"auto: GET /models owners ({shown}) are not vLLM's; "
                                              "standard parameters only")

    async def plan(self, top_logprobs: int) -> dict:
        """`ServerProfile.plan` for this teacher's API: what a harvest records and reports."""
        return (await self.profile()).plan(self.api, top_logprobs)

    # -- tokens ---------------------------------------------------------------------------------------------

    def _spell(self, token: str, raw: list[int] | None) -> tuple[int | None, str | None]:
        """(id or None, string or None) of one returned token: `token_id:N`, or a string (with its bytes)."""
        if token.startswith(TOKEN_ID_PREFIX):
            tid = int(token[len(TOKEN_ID_PREFIX):])
            spelled = self._spelling[tid] if self._spelling is not None and 0 <= tid < len(self._spelling) else None
            return tid, spelled
        text = bytes(raw).decode("utf-8", "surrogateescape") if raw is not None else token
        tid = self._ids_by_bytes.get(text.encode("utf-8", "surrogateescape")) if self._ids_by_bytes else None
        return tid, text

    async def _call(self, api: Literal["chat", "completions"], **kwargs):
        """One request through the rate gate: 429s are the gate's (shared back-off, fewer in flight), other
        transient faults (connection, timeout, 408, 409, 5xx) are retried here with back-off."""
        self._bind()
        resource = self._client.chat.completions if api == "chat" else self._client.completions
        faults = 0  # transient faults so far (429s are the gate's and do not count)
        while True:
            try:
                async with self._gate.slot():  # the answer is told to the gate before the slot is let go
                    try:
                        raw = await resource.with_raw_response.create(**kwargs)
                    except openai.RateLimitError as exc:
                        curable = waiting_helps(exc.response.headers, getattr(exc, "code", None))
                        raise _Limited(exc, curable, curable and await self._gate.limited(exc.response.headers))
                    await self._gate.succeeded(raw.headers)
                return raw.parse()
            except openai.AuthenticationError as exc:
                raise AccessDenied(f"endpoint refused the API key (401): {exc.message}", 401) from None
            except openai.PermissionDeniedError as exc:
                raise AccessDenied(f"endpoint refused the account (403): {exc.message}", 403) from None
            except _Limited as limited:
                message = limited.error.message
                if not limited.curable:
                    raise AccessDenied(f"endpoint says waiting will not help (429): {message}", 429) from None
                if not limited.retry:
                    raise TeacherError(f"endpoint answered only 429 for {self._gate.patience_s:.0f} s: "
                                       f"{message}") from None
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                transient = status is None or status in (408, 409) or status >= 500
                if not transient or faults >= self._max_retries:
                    raise TeacherError(f"endpoint error {status}: {exc.message}" if status is not None
                                       else f"cannot reach endpoint: {exc}") from None
                response = getattr(exc, "response", None)
                asked = retry_wait(response.headers) if response is not None else None
                await asyncio.sleep(min(MAX_TRANSIENT_WAIT_S, asked if asked is not None
                                        else 0.5 * 2 ** faults * random.uniform(0.75, 1.0)))
                faults += 1

    async def _complete_one(self, prompt: str | list[dict], params: SamplingParams) -> list[Completion]:
        profile = await self.profile()
        top_k = profile.plan(self.api, params.top_logprobs)["top_logprobs"]["sent"]
        common = dict(model=self.served_model, max_tokens=params.max_tokens, temperature=params.temperature,
                      top_p=params.top_p, n=params.n, seed=params.seed, stop=list(params.stop) or None)
        if profile.token_ids:
            common["extra_body"] = {"return_tokens_as_token_ids": True}
        if self.api == "chat":
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            resp = await self._call("chat", messages=messages, logprobs=True,
                                    top_logprobs=top_k or None, **common)
            out = []
            for choice in resp.choices:
                content = (choice.logprobs.content if choice.logprobs else None) or []
                tokens = [self._spell(c.token, c.bytes) for c in content]
                top = ([[(*self._spell(t.token, t.bytes), t.logprob) for t in c.top_logprobs] for c in content]
                       if top_k else None)
                out.append(self._completion(choice.message.content or "", tokens, [c.logprob for c in content],
                                            top, choice.finish_reason, resp.usage.prompt_tokens if resp.usage else 0))
            return out
        if isinstance(prompt, list):
            raise ConfigError("the completions API takes text prompts: render chat messages first")
        resp = await self._call("completions", prompt=prompt, logprobs=top_k or 1, **common)
        out = []
        for choice in resp.choices:
            lp = choice.logprobs
            tokens = [self._spell(t, None) for t in (lp.tokens or [])] if lp else []
            top = ([[(*self._spell(t, None), v) for t, v in (d or {}).items()] for d in (lp.top_logprobs or [])]
                   if top_k and lp else None)
            out.append(self._completion(choice.text, tokens, list(lp.token_logprobs or []) if lp else [], top,
                                        choice.finish_reason, resp.usage.prompt_tokens if resp.usage else 0))
        return out

    def _completion(self, text: str, tokens: list[tuple[int | None, str | None]], logprobs: list[float],
                    top: list[list[tuple[int | None, str | None, float]]] | None, finish: str | None,
                    prompt_tokens: int) -> Completion:
        ids = [i for i, _ in tokens]
        strings = [s for _, s in tokens]
        have_strings = all(s is not None for s in strings)
        if tokens and all(i is not None for i in ids):
            token_ids = ids
        elif self.tokenizer is not None:
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:  # strings only: the count stays right, and the strings say what the tokens were
            token_ids = [UNKNOWN_ID] * len(tokens)
        top_strings = None
        if top is None:
            clean_top = None
        elif all(s is not None for pos in top for _, s, _ in pos):
            clean_top = [[(UNKNOWN_ID if i is None else i, v) for i, _, v in pos] for pos in top]
            top_strings = [[s for _, s, _ in pos] for pos in top]
        else:  # ids without strings (token_id:N, no tokenizer to spell them)
            clean_top = [[(i, v) for i, _, v in pos if i is not None] for pos in top]
        return Completion(text=text, token_ids=token_ids, logprobs=[float(x) for x in logprobs],
                          finish_reason="length" if finish == "length" else "stop", prompt_tokens=prompt_tokens,
                          top_logprobs=clean_top, tokens=strings if tokens and have_strings else None,
                          top_tokens=top_strings)

    async def complete(self, prompts: Sequence[str | list[dict]], params: SamplingParams) -> list[list[Completion]]:
        """One request per prompt (text, or chat messages), at most `concurrency` in flight."""
        return list(await asyncio.gather(*(self._complete_one(p, params) for p in prompts)))

    async def score(self, prompt: str, continuation_ids: Sequence[int], top_k: int = 0) -> ScoredText:
        """Prompt logprobs of the continuation via `/v1/completions` with echo and max_tokens=0 (token-id prompt)."""
        if self.tokenizer is None:
            raise TeacherError("scoring through an endpoint needs the teacher's tokenizer")
        profile = await self.profile()
        if not profile.token_ids:
            raise TeacherError(f"scoring needs a vLLM-compatible endpoint (token-id prompts, echo); this one is "
                               f"{profile.kind}-style ({profile.decided_by}); give --server vllm if it is one")
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = profile.limit("completions")
        k = top_k if limit is None else min(top_k, limit)
        resp = await self._call("completions", model=self.served_model,
                                prompt=list(prompt_ids) + list(continuation_ids), max_tokens=0, echo=True,
                                logprobs=k or 1, extra_body={"return_tokens_as_token_ids": True})
        lp = resp.choices[0].logprobs
        values = list(lp.token_logprobs or [])[len(prompt_ids):]
        top = None
        if k and lp.top_logprobs:
            top = [[(self._spell(t, None)[0], v) for t, v in (d or {}).items()]
                   for d in lp.top_logprobs[len(prompt_ids):]]
            top = [[(i, v) for i, v in pos if i is not None] for pos in top]
        return ScoredText(list(continuation_ids), [float(v) for v in values], top)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()
