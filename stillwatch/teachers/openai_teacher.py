"""OpenAITeacher: any OpenAI-compatible endpoint (vLLM, a stillwatch gateway, OpenAI) via the official async client."""

from __future__ import annotations

import asyncio
from typing import Literal, Sequence

import openai
from transformers import PreTrainedTokenizerBase

from stillwatch.errors import TeacherError
from stillwatch.redact import redact_url
from stillwatch.teachers.completion import Completion, SamplingParams, ScoredText

TOKEN_ID_PREFIX = "token_id:"  # vLLM's `return_tokens_as_token_ids` spelling, which the gateway also speaks


class AccessDenied(TeacherError):
    """The endpoint refused our key (401) or our account (403): retrying will not help."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible API.

    Retries with exponential back-off that honours `Retry-After` come from the official client; 401 and 403
    become `AccessDenied` so that callers can stop cleanly. Token ids come from `token_id:N` tokens when the
    server supports them, else from `tokenizer` when one is given.
    """

    def __init__(self, base_url: str, api_key: str, model: str = "stillwatch",
                 tokenizer: PreTrainedTokenizerBase | None = None, api: Literal["chat", "completions"] = "chat",
                 concurrency: int = 16, max_retries: int = 6, timeout: float = 120.0):
        self._client_args = dict(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self._concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        # `served_model`, not `model`: callers read `teacher.model` as in-process weights (LocalTeacher's).
        self.served_model, self.tokenizer, self.api = model, tokenizer, api
        self.name = f"endpoint:{redact_url(base_url)}#{model}"  # names are recorded: no credentials
        self._vocab = {v: k for k, v in tokenizer.get_vocab().items()} if tokenizer is not None else None

    def _bind(self) -> None:
        # The client's connection pool and the semaphore belong to one event loop; callers that run each
        # batch under its own asyncio.run (evaluate, prove) get fresh ones instead of "Event loop is closed".
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._client = openai.AsyncOpenAI(**self._client_args)
            self._slots = asyncio.Semaphore(self._concurrency)

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop."""
        self._bind()
        return self._client

    def _token_id(self, token: str) -> int | None:
        if token.startswith(TOKEN_ID_PREFIX):
            return int(token[len(TOKEN_ID_PREFIX):])
        if self.tokenizer is not None:
            ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
            return ids[0] if len(ids) == 1 else None
        return None

    async def _call(self, method, **kwargs):
        self._bind()
        try:
            async with self._slots:
                return await method(**kwargs)
        except openai.AuthenticationError as exc:
            raise AccessDenied(f"endpoint refused the API key (401): {exc.message}", 401) from None
        except openai.PermissionDeniedError as exc:
            raise AccessDenied(f"endpoint refused the account (403): {exc.message}", 403) from None
        except openai.APIStatusError as exc:
            raise TeacherError(f"endpoint error {exc.status_code}: {exc.message}") from None
        except openai.APIConnectionError as exc:
            raise TeacherError(f"cannot reach endpoint: {exc}") from None

    def _ids_and_text(self, tokens: list[str], text: str) -> list[int]:
        ids = [self._token_id(t) for t in tokens]
        if tokens and all(i is not None for i in ids):
            return ids  # type: ignore[return-value]
        if self.tokenizer is not None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return []

    async def _complete_one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        common = dict(model=self.served_model, max_tokens=params.max_tokens, temperature=params.temperature,
                      top_p=params.top_p, n=params.n, seed=params.seed, stop=list(params.stop) or None,
                      extra_body={"return_tokens_as_token_ids": True})
        if self.api == "chat":
            resp = await self._call(self.client.chat.completions.create,
                                    messages=[{"role": "user", "content": prompt}], logprobs=True,
                                    top_logprobs=params.top_logprobs or None, **common)
            out = []
            for choice in resp.choices:
                content = (choice.logprobs.content if choice.logprobs else None) or []
                tokens = [c.token for c in content]
                top = ([[(self._token_id(t.token), t.logprob) for t in c.top_logprobs] for c in content]
                       if params.top_logprobs else None)
                out.append(self._completion(choice.message.content or "", tokens, [c.logprob for c in content],
                                            top, choice.finish_reason, resp.usage.prompt_tokens if resp.usage else 0))
            return out
        resp = await self._call(self.client.completions.create, prompt=prompt, logprobs=params.top_logprobs or 1,
                                **common)
        out = []
        for choice in resp.choices:
            lp = choice.logprobs
            tokens = list(lp.tokens or []) if lp else []
            top = ([[(self._token_id(t), v) for t, v in (d or {}).items()] for d in (lp.top_logprobs or [])]
                   if params.top_logprobs and lp else None)
            out.append(self._completion(choice.text, tokens, list(lp.token_logprobs or []) if lp else [], top,
                                        choice.finish_reason, resp.usage.prompt_tokens if resp.usage else 0))
        return out

    def _completion(self, text: str, tokens: list[str], logprobs: list[float],
                    top: list[list[tuple[int | None, float]]] | None, finish: str | None,
                    prompt_tokens: int) -> Completion:
        clean_top = None if top is None else [[(i, v) for i, v in pos if i is not None] for pos in top]
        return Completion(text=text, token_ids=self._ids_and_text(tokens, text), logprobs=[float(x) for x in logprobs],
                          finish_reason="length" if finish == "length" else "stop", prompt_tokens=prompt_tokens,
                          top_logprobs=clean_top)

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """One request per prompt, at most `concurrency` in flight."""
        return list(await asyncio.gather(*(self._complete_one(p, params) for p in prompts)))

    async def score(self, prompt: str, continuation_ids: Sequence[int], top_k: int = 0) -> ScoredText:
        """Prompt logprobs of the continuation via `/v1/completions` with echo and max_tokens=0 (token-id prompt)."""
        if self.tokenizer is None:
            raise TeacherError("scoring through an endpoint needs the teacher's tokenizer")
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        resp = await self._call(self.client.completions.create, model=self.served_model,
                                prompt=list(prompt_ids) + list(continuation_ids), max_tokens=0, echo=True,
                                logprobs=top_k or 1, extra_body={"return_tokens_as_token_ids": True})
        lp = resp.choices[0].logprobs
        values = list(lp.token_logprobs or [])[len(prompt_ids):]
        top = None
        if top_k and lp.top_logprobs:
            top = [[(self._token_id(t), v) for t, v in (d or {}).items()] for d in lp.top_logprobs[len(prompt_ids):]]
            top = [[(i, v) for i, v in pos if i is not None] for pos in top]
        return ScoredText(list(continuation_ids), [float(v) for v in values], top)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()
