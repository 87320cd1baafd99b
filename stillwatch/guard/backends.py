"""What answers a request once the guard has let it through: a model in process, or an upstream server.

Both backends return a `Result`: a response body, or an async iterator of stream chunks whose last chunk
carries usage (the route drops it unless the client asked). Either way the route learns the texts and token
counts it must audit and charge.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, AsyncIterator, Hashable, Iterable, Protocol
from urllib.parse import quote

from stillwatch.errors import StillwatchError
from stillwatch.guard import render
from stillwatch.guard.batching import Batcher
from stillwatch.guard.errors import APIError, bad_request
from stillwatch.guard.hooks import ForensicsHooks
from stillwatch.guard.reasoning import add_reasoning_usage, hide_result, task_model, withhold_all
from stillwatch.guard.replies import RESPONSES_TERMINAL, Kind, check_chunk, outputs_of, usage_of
from stillwatch.guard.sampling import request_processors
from stillwatch.guard.schemas import ChatCompletionRequest, CompletionRequest
from stillwatch.guard.settings import GuardSettings
from stillwatch.tasks import ANSWER_MARK
from stillwatch.teachers import Completion, SamplingParams

log = logging.getLogger("stillwatch.guard")


@dataclass
class Result:
    """A backend's answer and what the guard needs to know about it."""

    body: dict | None = None
    chunks: AsyncIterator[dict] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What was answered, one per choice: a text, or {"content", "tool_calls"} for an answer with tool calls.
    texts: list[Any] = field(default_factory=list)
    finished: bool = False  # for streams: the backend delivered its last chunk
    raw: bytes | None = None  # `body` already encoded (off the event loop), when the backend did it
    error: Any = None  # for streams: the APIError that ended it early, sent as the last event
    # What was sent upstream, kept to estimate the prompt's tokens if the upstream reports no usage.
    request: dict | None = None


class Backend(Protocol):
    """The interface the routes use. A backend with `passthrough = True` takes the pass-through request
    schemas (every field kept as sent) and also serves `responses`, `embeddings` and `model`."""

    passthrough: bool

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def models(self) -> dict: ...
    async def chat(self, req: ChatCompletionRequest, degraded: bool, hide_reasoning: bool = False) -> Result: ...
    async def completions(self, req: CompletionRequest, degraded: bool,
                          hide_reasoning: bool = False) -> Result: ...


LARGE_BODY = 1_000_000  # bytes of JSON past which parsing goes to a worker thread


def malformed(message: str) -> APIError:
    """502 for an upstream reply the gateway cannot read."""
    return APIError(502, message, type="upstream_error", code="bad_gateway")


def estimate_tokens(value: Any) -> int:
    """About four characters a token, for what an upstream did not count (a text, or any JSON value)."""
    if value is None:
        return 0
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return (len(text) + 3) // 4


def estimate_prompt_tokens(body: dict | None) -> int:
    """The estimate for a request's prompt: its messages, prompt, input and instructions."""
    if not body:
        return 0
    return estimate_tokens([body[k] for k in ("messages", "prompt", "input", "instructions") if k in body])


def rough_size(body: dict) -> int:
    """About how many characters `body` encodes to, looking only at its top-level texts and one level of
    messages (cheap, and enough to tell a megabyte prompt from a chat turn)."""
    size = 0
    for value in body.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += 16 * len(value)
            for item in value[:10_000]:
                if isinstance(item, str):
                    size += len(item)
                elif isinstance(item, dict) and isinstance(item.get("content"), str):
                    size += len(item["content"])
    return size


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every response body is sent."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def max_prompt_chars(tokenizer: Any, context: int) -> int:
    """Characters beyond which no text fits `context` tokens: every token spells at most as many characters
    as its vocabulary entry, so a text of N characters needs at least N / longest tokens. Checking this
    costs nothing, where tokenizing a megabyte takes about a second of CPU."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return context * max(1, longest)


async def _aiter(items: Iterable[dict], result: Result) -> AsyncIterator[dict]:
    for item in items:
        yield item
    result.finished = True


def _check_greedy_n(n: int | None, temperature: float | None) -> None:
    # Greedy decoding has one answer: n copies of it would be charged n times for nothing.
    if (n or 1) > 1 and temperature == 0:
        raise bad_request("n must be 1 when temperature is 0 (greedy decoding gives one answer).", param="n")


def unsupported(what: str, param: str) -> APIError:
    """400: a parameter this backend (a model in process) cannot honour."""
    return APIError(400, f"This backend (a model served in process) cannot honour {what}; serve it with "
                         f"--upstream to pass it to a server that does.", param=param, code="unsupported_parameter")


def model_not_found(name: str) -> APIError:
    """404 for a model this gateway does not serve."""
    return APIError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")


class LocalBackend:
    """A LocalTeacher in process, behind dynamic batching (`stillwatch.guard.batching`)."""

    passthrough = False

    def __init__(self, teacher: Any, settings: GuardSettings, hooks: ForensicsHooks | None = None):
        self.teacher, self.settings = teacher, settings
        self.hooks = hooks or ForensicsHooks()
        self.tok = teacher.tokenizer
        self.context = int(teacher.context_length)
        self.max_chars = max_prompt_chars(self.tok, self.context)
        self.name = settings.served_model_name
        self.batcher = Batcher(self._run, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms)
        self._decode_one = lru_cache(maxsize=65536)(lambda tid: self.tok.decode([tid], skip_special_tokens=False))
        self._degraded: tuple[Any, ...] | None = None
        # Antidistillation sampling needs a proxy student; without one a degraded account is refused, not served.
        self.can_degrade = self.hooks.can_degrade
        # A model trained on the built-in tasks ends its trace at the answer mark: what hide_reasoning withholds.
        self.answer_mark = ANSWER_MARK if task_model(settings.teacher) else None

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def _card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "stillwatch"}

    async def models(self) -> dict:
        return {"object": "list", "data": [self._card()]}

    async def model(self, model_id: str) -> dict:
        if model_id != self.name:
            raise model_not_found(model_id)
        return self._card()

    # ---- helpers ----
    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _speller(self, as_ids: bool | None):
        if as_ids:
            return lambda tid: f"token_id:{tid}"
        return self._decode_one

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _too_long(self, chars: int, param: str) -> APIError:
        return APIError(400, f"This model's maximum context length is {self.context} tokens. However, your "
                             f"prompt of {chars} characters cannot fit it (at most {self.max_chars} characters "
                             f"can).", param=param, code="context_length_exceeded")

    def _check_chars(self, chars: int, param: str) -> None:
        """The cheap check before any tokenizing: a prompt that cannot fit is refused in microseconds."""
        if chars > self.max_chars:
            raise self._too_long(chars, param)

    def _check_fits(self, prompt_tokens: int, max_tokens: int, param: str) -> None:
        if prompt_tokens + max_tokens > self.context:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
                                f"{max_tokens} for the completion).", param=param, code="context_length_exceeded")

    async def _processors(self, degraded: bool) -> tuple[Any, ...]:
        if not (degraded or self.settings.antidistill_all):
            return tuple(self.hooks.always)
        if self._degraded is None:  # built once, off the event loop (it may load a proxy student)
            try:
                self._degraded = await asyncio.to_thread(lambda: self.hooks.processors(True))
            except StillwatchError as exc:
                # Serving a degraded account clean traces would defeat the point: refuse instead.
                log.error("antidistillation sampling unavailable: %s", exc)
                raise APIError(503, "Sampling for this account is unavailable right now.", type="server_error",
                               code="degrade_unavailable") from None
        return self._degraded

    async def _generate(self, prompts: list[str], params: SamplingParams, degraded: bool,
                        extra: tuple[Any, ...] = ()) -> list[list[Completion]]:
        processors = await self._processors(degraded) + extra
        # Requests batch only with the same parameters and processors (a degraded account's requests get
        # their own group); a seeded request runs alone, so its result never depends on its batch-mates.
        key: Hashable = ("gen", params, processors, object() if params.seed is not None else None)
        try:
            return await self.batcher.submit(key, (prompts, processors), size=len(prompts) * params.n)
        except StillwatchError as exc:  # e.g. a token-id prompt that re-tokenizes past the context window
            raise bad_request(str(exc), code="context_length_exceeded") from None

    async def _score(self, ids: list[int], k: int) -> render.PromptScores:
        return await self.batcher.submit(("score", k), ids, size=1)

    def _run(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """Runs in the batcher's worker thread: one model call per group."""
        if key[0] == "score":
            return self._score_batch(payloads, key[1])
        _, params, _, _ = key
        processors = payloads[0][1]
        prompts = [p for prompts, _ in payloads for p in prompts]
        out = self.teacher.generate(prompts, params, extra_processors=processors)
        results, i = [], 0
        for prompts_, _ in payloads:
            results.append(out[i:i + len(prompts_)])
            i += len(prompts_)
        return results

    def _score_batch(self, rows: list[list[int]], k: int) -> list[render.PromptScores]:
        """Teacher-forced logprobs of each row's own tokens, rows right-padded into one forward pass."""
        import torch

        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            logits = self.teacher.model(input_ids=ids, attention_mask=mask).logits
            lp = logits[:, :-1].float().log_softmax(dim=-1)
            target = lp.gather(2, ids[:, 1:, None]).squeeze(2)
            top_v, top_i = lp.topk(k, dim=-1) if k else (None, None)
        out = []
        for row, r in enumerate(rows):
            n = len(r) - 1
            values = [None] + target[row, :n].tolist()
            tops: list = [None]
            if k:
                tops += [list(zip(i, v)) for i, v in zip(top_i[row, :n].tolist(), top_v[row, :n].tolist())]
            else:
                tops += [[] for _ in range(n)]
            out.append(render.PromptScores(list(r), values, tops))
        return out

    def _max_tokens(self, requested: int | None, prompt_tokens: int, default: int | None) -> int:
        if requested is not None:
            return requested
        room = max(1, self.context - prompt_tokens)
        return min(default or self.settings.max_tokens_limit, self.settings.max_tokens_limit, room)

    # ---- endpoints ----
    def _render_chat(self, messages: list[dict]) -> tuple[str, int]:
        """The templated prompt and its token count (in a worker thread: templates and tokenizers are slow)."""
        if getattr(self.tok, "chat_template", None):
            prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a foreign model without a template: plain concatenation
            prompt = "\n".join(m["content"] for m in messages) + "\n"
        self._check_chars(len(prompt), "messages")  # the template's own text counts too
        return prompt, len(self._encode(prompt))

    async def chat(self, req: ChatCompletionRequest, degraded: bool, hide_reasoning: bool = False) -> Result:
        if req.model != self.name:
            raise model_not_found(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        chars = sum(len(m["content"]) for m in messages)
        self._check_chars(chars, "messages")
        if len(messages) > self.context:  # every message adds at least one token
            raise self._too_long(chars, "messages")
        prompt, n_prompt = await asyncio.to_thread(self._render_chat, messages)
        if n_prompt == 0:
            raise bad_request("The messages render to an empty prompt.", param="messages")
        max_tokens = self._max_tokens(req.max_completion_tokens or req.max_tokens, n_prompt, None)
        self._check_fits(n_prompt, max_tokens, "messages")
        top = req.top_logprobs or 0 if req.logprobs else 0
        _check_greedy_n(req.n, req.temperature)
        if req.response_format is not None and req.response_format.type != "text":
            raise unsupported(f"response_format of type '{req.response_format.type}'", "response_format")
        extra = request_processors(req, len(self.tok))
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                                top_p=1.0 if req.top_p is None else req.top_p, n=req.n or 1, seed=req.seed,
                                stop=req.stops(), top_logprobs=top)
        completions = (await self._generate([prompt], params, degraded, extra))[0]
        spell = self._speller(req.return_tokens_as_token_ids)
        rid = render.new_id("chatcmpl")
        result = Result(prompt_tokens=n_prompt, completion_tokens=sum(c.completion_tokens for c in completions),
                        texts=[c.text for c in completions])

        def build() -> None:  # decoding every token and building logprobs: a worker's job, not the loop's
            served, hidden = completions, None
            if hide_reasoning:
                asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
                served, hidden = withhold_all(completions, asked, self._decode, self.answer_mark)
                result.texts = [c.text for c in served]
            if req.stream:
                chunks = list(render.chat_chunks(rid, self.name, served, self._decode, spell, bool(req.logprobs),
                                                 top > 0))
                if hidden is not None:
                    add_reasoning_usage(chunks[-1]["usage"], hidden, result.completion_tokens)
                result.chunks = _aiter(chunks, result)
            else:
                result.body = render.chat_body(rid, self.name, served, spell, bool(req.logprobs), top > 0)
                if hidden is not None:
                    add_reasoning_usage(result.body["usage"], hidden, result.completion_tokens)
                result.raw, result.finished = encode_json(result.body), True

        await asyncio.to_thread(build)
        return result

    def _prompts(self, prompt: Any) -> list[tuple[str, list[int]]]:
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif prompt and all(isinstance(x, int) for x in prompt):
            items = [list(prompt)]
        else:
            items = list(prompt)
        out = []
        vocab = len(self.tok)
        for i, item in enumerate(items):
            param = "prompt" if len(items) == 1 else f"prompt[{i}]"
            if isinstance(item, str):
                ids = self._encode(item)
                text = item
            else:
                if any(t >= vocab for t in item):
                    raise bad_request(f"Token ids must be below the vocabulary size {vocab}.", param=param)
                ids, text = list(item), self._decode(list(item))
            if not ids:
                raise bad_request("The prompt is empty.", param=param)
            out.append((text, ids))
        return out

    async def completions(self, req: CompletionRequest, degraded: bool, hide_reasoning: bool = False) -> Result:
        if req.model != self.name:
            raise model_not_found(req.model)
        items = [req.prompt] if isinstance(req.prompt, str) or isinstance(req.prompt[0], int) else req.prompt
        for i, item in enumerate(items):  # cheap checks first: characters, and token-id lists by length
            param = "prompt" if len(items) == 1 else f"prompt[{i}]"
            if isinstance(item, str):
                self._check_chars(len(item), param)
            elif len(item) > self.context:
                self._check_fits(len(item), 0, param)
        prompts = await asyncio.to_thread(self._prompts, req.prompt)
        n = req.n or 1
        _check_greedy_n(n, req.temperature)
        extra = request_processors(req, len(self.tok))
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        for text, ids in prompts:
            self._check_fits(len(ids), max_tokens, "prompt")
        k = req.logprobs
        echo = bool(req.echo)
        scores: list[render.PromptScores | None] = [None] * len(prompts)
        if echo and k is not None:
            scores = list(await asyncio.gather(*(self._score(ids, k) for _, ids in prompts)))
        generated: list[list[Completion | None]] = [[None] * n for _ in prompts]
        if max_tokens > 0:
            params = SamplingParams(max_tokens=max_tokens,
                                    temperature=1.0 if req.temperature is None else req.temperature,
                                    top_p=1.0 if req.top_p is None else req.top_p, n=n, seed=req.seed,
                                    stop=req.stops(), top_logprobs=k or 0)
            generated = await self._generate([text for text, _ in prompts], params, degraded, extra)
        spell = self._speller(req.return_tokens_as_token_ids)
        prompt_tokens = sum(len(ids) for _, ids in prompts)
        completion_tokens = sum(c.completion_tokens for row in generated for c in row if c is not None)
        rid = render.new_id("cmpl")
        result = Result(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        texts=[c.text for row in generated for c in row if c is not None])

        def build() -> None:  # echo with top-k logprobs can make megabytes of JSON: off the event loop
            served, hidden = generated, None
            if hide_reasoning and max_tokens > 0:
                served, hidden = [], 0
                for (text, _), row in zip(prompts, generated):
                    kept, dropped = withhold_all([c for c in row if c is not None], text, self._decode,
                                                 self.answer_mark)
                    served.append(kept)
                    hidden += dropped
                result.texts = [c.text for row in served for c in row]
            choices = [render.text_choice(text if echo else None, scores[i], c, self._decode, spell, k)
                       for i, (text, _) in enumerate(prompts) for c in served[i]]
            if req.stream:
                chunks = list(render.text_chunks(rid, self.name, choices, prompt_tokens, completion_tokens))
                if hidden is not None:
                    add_reasoning_usage(chunks[-1]["usage"], hidden)
                result.chunks = _aiter(chunks, result)
            else:
                result.body = render.text_body(rid, self.name, choices, prompt_tokens, completion_tokens)
                if hidden is not None:
                    add_reasoning_usage(result.body["usage"], hidden)
                result.raw, result.finished = encode_json(result.body), True

        await asyncio.to_thread(build)
        return result


class ProxyBackend:
    """Forwards to an OpenAI-compatible upstream (vLLM, TGI, OpenAI) over one pooled aiohttp session.

    Requests pass through as the client sent them (tools, tool messages, `response_format`, `logit_bias`,
    penalties, images, any field the upstream knows) and replies come back as the upstream sent them; the
    guard only reads usage and the answers for its charge and its audit. The one change: a stream asks for
    usage (`stream_options.include_usage`), since the guard charges tokens; the route drops that chunk again
    unless the client asked for it.

    aiohttp rather than httpx on this hop: at 32 concurrent requests httpx's pool sustained about 1/15 of
    aiohttp's requests/s on the benchmark machine (see bench/gateway.py), and this hop is all a proxy does."""

    passthrough = True
    can_degrade = False  # antidistillation sampling needs the model in process

    def __init__(self, settings: GuardSettings):
        if not settings.upstream:
            raise ValueError("ProxyBackend needs settings.upstream")
        self.base = settings.upstream.rstrip("/")
        self.settings = settings
        self.headers = {"Content-Type": "application/json"}
        if settings.upstream_api_key is not None:
            self.headers["Authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.settings.upstream_connections, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.settings.upstream_timeout_s, sock_connect=10.0)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers,
                                             auto_decompress=True, trust_env=False)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    @staticmethod
    def _unreachable(exc: BaseException) -> APIError:
        return APIError(502, f"Cannot reach the upstream: {type(exc).__name__}", type="upstream_error",
                        code="bad_gateway")

    def _upstream_error(self, status: int, raw: bytes, headers: Any = None) -> APIError:
        try:
            err = json.loads(raw)["error"]
            message, type_, param, code = (str(err.get("message", "")), str(err.get("type") or "upstream_error"),
                                           err.get("param"), err.get("code"))
        except (ValueError, KeyError, TypeError, AttributeError):
            message, type_, param, code = raw[:200].decode("utf-8", "replace"), "upstream_error", None, None
        if status in (401, 403) or status >= 500:
            # Our credentials upstream, or the upstream's own failure: not the client's fault.
            return APIError(502, f"Upstream error {status}: {message}", type="upstream_error", code="bad_gateway")
        passed = {k: v for k, v in (headers or {}).items() if k.lower() in ("retry-after", "retry-after-ms",
                                                                            "x-should-retry")}
        return APIError(status, message, type=type_, param=param if isinstance(param, str) else None,
                        code=str(code) if code is not None else None, headers=passed)

    async def _open(self, path: str, body: dict) -> Any:
        import aiohttp

        # A megabyte prompt takes milliseconds to encode: a worker's job, not the event loop's.
        data = await asyncio.to_thread(encode_json, body) if rough_size(body) > LARGE_BODY // 4 else encode_json(body)
        try:
            return await self.session.post(self.base + path, data=data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None

    def _too_large(self) -> APIError:
        return APIError(502, f"The upstream's response exceeds {self.settings.max_upstream_bytes} bytes.",
                        type="upstream_error", code="upstream_response_too_large")

    async def _read(self, resp: Any) -> bytes:
        """The whole response body, at most `max_upstream_bytes` of it."""
        cap = self.settings.max_upstream_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _parse(self, raw: bytes) -> Any:
        try:
            # A big reply (echo scoring, embeddings) takes tens of milliseconds to parse: not on the event loop.
            return await asyncio.to_thread(json.loads, raw) if len(raw) > LARGE_BODY else json.loads(raw)
        except ValueError:
            raise malformed("The upstream sent invalid JSON.") from None

    async def _exchange(self, method: str, path: str, body: dict | None = None) -> tuple[Any, bytes]:
        """One non-streaming call: the parsed reply and its bytes (an error status becomes an APIError)."""
        import aiohttp

        if method == "POST":
            resp = await self._open(path, body or {})
        else:
            try:
                resp = await self.session.get(self.base + path)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise self._unreachable(exc) from None
        try:
            raw = await self._read(resp)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None
        finally:
            resp.release()
        if resp.status != 200:
            raise self._upstream_error(resp.status, raw, resp.headers)
        return await self._parse(raw), raw

    async def _stream(self, kind: Kind, path: str, body: dict, result: Result) -> AsyncIterator[dict]:
        import aiohttp

        if kind != "responses":
            # Ask for usage whatever the client asked: the guard charges and audits tokens.
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        resp = await self._open(path, body)
        if resp.status != 200:
            try:
                raw = await resp.read()
            finally:
                resp.release()
            raise self._upstream_error(resp.status, raw, resp.headers)

        async def chunks() -> AsyncIterator[dict]:
            cap, size = self.settings.max_upstream_bytes, 0
            try:
                async for raw_line in resp.content:
                    size += len(raw_line)
                    if size > cap:
                        result.error = self._too_large()
                        break
                    line = raw_line.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):  # `event:` lines too: the Responses API's data names its type
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        result.finished = True
                        break
                    try:
                        chunk = json.loads(data)
                        usage = check_chunk(kind, chunk)  # the shape the route relies on, before the client sees it
                    except (ValueError, TypeError, AttributeError):
                        log.warning("upstream sent a malformed stream chunk")
                        result.error = malformed("The upstream sent a malformed stream chunk.")
                        break
                    if usage is not None:
                        result.prompt_tokens, result.completion_tokens = usage
                    if kind == "responses" and chunk["type"] in RESPONSES_TERMINAL:
                        result.finished = True
                    yield chunk
                    if result.finished:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):  # ValueError: an overlong line
                log.warning("upstream stream broke off")
            finally:
                resp.release()

        return chunks()

    @staticmethod
    def _absorb(kind: Kind, result: Result, body: Any, raw: bytes) -> Result:
        """Read usage and answers from an upstream reply; 502 for a reply that is not of its kind."""
        try:
            if not isinstance(body, dict):
                raise TypeError("not an object")
            usage = usage_of(kind, body.get("usage"))
            texts = outputs_of(kind, body)
        except (TypeError, ValueError, AttributeError):
            raise malformed(f"The upstream sent a reply that is not a {KIND_NAMES[kind]}.") from None
        # No usage from the upstream: the answer is charged at about four characters a token (the prompt
        # likewise, when the route settles it), never free.
        result.prompt_tokens, result.completion_tokens = usage or (0, sum(estimate_tokens(t) for t in texts))
        result.texts, result.body, result.raw, result.finished = texts, body, raw, True
        return result

    async def models(self) -> dict:
        body, _ = await self._exchange("GET", "/models")
        return body

    async def model(self, model_id: str) -> dict:
        body, _ = await self._exchange("GET", "/models/" + quote(model_id, safe="/:@"))
        return body

    async def forward(self, kind: Kind, path: str, body: dict, stream: bool) -> Result:
        """Send `body` as it is to the upstream's `path`; the reply (or its stream) as a Result."""
        result = Result(request=body)
        if stream:
            result.chunks = await self._stream(kind, path, body, result)
            return result
        return self._absorb(kind, result, *await self._exchange("POST", path, body))

    async def chat(self, req: Any, degraded: bool, hide_reasoning: bool = False) -> Result:
        result = await self.forward("chat", "/chat/completions", req.model_dump(exclude_unset=True),
                                    bool(req.stream))
        return hide_result(result) if hide_reasoning else result

    async def completions(self, req: Any, degraded: bool, hide_reasoning: bool = False) -> Result:
        result = await self.forward("completions", "/completions", req.model_dump(exclude_unset=True),
                                    bool(req.stream))
        return hide_result(result) if hide_reasoning else result

    async def responses(self, req: Any) -> Result:
        return await self.forward("responses", "/responses", req.model_dump(exclude_unset=True), bool(req.stream))

    async def embeddings(self, req: Any) -> Result:
        return await self.forward("embeddings", "/embeddings", req.model_dump(exclude_unset=True), False)


KIND_NAMES = {"chat": "chat completion", "completions": "completion", "responses": "response",
              "embeddings": "list of embeddings"}


def make_backend(settings: GuardSettings) -> Backend:
    """The backend the settings ask for (a local model is loaded here, which takes a moment)."""
    if settings.backend_kind() == "upstream":
        return ProxyBackend(settings)
    from stillwatch.guard.hooks import load_hooks
    from stillwatch.teachers.local import LocalTeacher

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)  # process-wide, which is what a server process wants
    teacher = LocalTeacher.from_dir(settings.teacher, max_batch=settings.max_batch)
    hooks = load_hooks(settings, teacher)
    if settings.antidistill_all or settings.antidistill_proxy is not None:
        hooks.processors(True)  # configured: build it now, so that a misconfiguration stops the start
    return LocalBackend(teacher, settings, hooks)
