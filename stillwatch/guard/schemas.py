"""OpenAI API schemas: what clients send and what the gateway answers (API shapes only, never ORM tables).

Two request dialects, one per kind of backend:
- the local backend's requests are strict: an unknown field is a 400 that names it, as OpenAI does, so a typo
  never passes silently, and a field OpenAI knows but a model in process cannot honour (`tools`) is a 400
  that says so;
- pass-through requests (`--upstream`) check only what the guard itself needs (the model, the messages or
  input for the audit, `n` and the token limits for quotas, `stream`) and keep every other field as sent:
  the upstream judges them, and the body reaches it unchanged.
Responses are documented here for the OpenAPI document but built as plain dicts on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SEED_BOUND = 2**63 - 1
MAX_STOPS = 4


def _encodable(text: str) -> str:
    # JSON escapes can smuggle lone surrogates ("\ud800") that no tokenizer or database can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class Strict(BaseModel):
    """Unknown fields are errors; no NaN or infinity; no silent string-to-number coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Passthrough(BaseModel):
    """Checks the fields the guard reads, keeps the rest as sent (`model_dump(exclude_unset=True)` gives the
    body back, explicit nulls included)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


# Fields of OpenAI's generation endpoints that a model served in process cannot honour: a 400 that says so
# (and points at --upstream), not "unrecognized argument", which would read like a typo.
UPSTREAM_ONLY_PARAMS = frozenset({
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "audio", "modalities",
    "prediction", "store", "metadata", "reasoning_effort", "service_tier", "web_search_options", "verbosity",
    "prompt_cache_key", "safety_identifier", "top_k", "min_p", "repetition_penalty",
})


class TextPart(Strict):
    """One text part of a message's content (images and audio are not served)."""

    type: Literal["text"]
    text: Text


class ChatMessage(Strict):
    """One chat message; the content goes through the model's chat template."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(Strict):
    """`response_format`: the local backend honours "text"; the JSON modes are refused by name."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(Strict):
    """Streaming options: a final chunk with usage when `include_usage` is true."""

    include_usage: bool | None = None


class _Sampling(Strict):
    """Fields shared by both generation endpoints."""

    model: Text = Field(max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-SEED_BOUND, le=SEED_BOUND)
    stop: Annotated[Text, Field(max_length=256)] | Annotated[list[Annotated[Text, Field(max_length=256)]], Field(max_length=MAX_STOPS)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=256)
    # OpenAI's additive penalties over the tokens generated so far (see guard/sampling.py).
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    # Token id (as a string) -> bias added to its logit; -100 bans a token, 100 forces it.
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")],
                     Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=1024)
    # vLLM's extension, which OpenAITeacher asks for: tokens spelled "token_id:N".
    return_tokens_as_token_ids: bool | None = None

    def stops(self) -> tuple[str, ...]:
        """Stop strings as a tuple (empty strings dropped)."""
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # {"type": "text"} is what every model does; JSON modes need a model that can be held to them.
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    """`POST /v1/completions`. `echo` with `max_tokens=0` and `logprobs=k` scores the prompt itself."""

    prompt: Text | list[TokenId] | list[Text] | list[list[TokenId]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: None = None


# ---- Pass-through requests (--upstream) ----

class PassthroughStreamOptions(Passthrough):
    include_usage: bool | None = None


def _roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Any chat message passes as sent (tool results, images, audio, refusals, tool calls); each needs a role.
    One check over plain dicts: a model per message cost ten times as much validation, and a body of thousands
    of messages is a cheap way to make a gateway spend CPU on the event loop."""
    for i, message in enumerate(messages):
        role = message.get("role")
        if not isinstance(role, str) or not 1 <= len(role) <= 64:
            raise ValueError(f"messages[{i}].role must be a string of 1 to 64 characters")
    return messages


PassthroughMessages = Annotated[list[dict[str, Any]], AfterValidator(_roles)]


class _PassthroughGeneration(Passthrough):
    model: Text = Field(max_length=256)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: PassthroughStreamOptions | None = None


class PassthroughChatRequest(_PassthroughGeneration):
    """`POST /v1/chat/completions` to an upstream: every field the client sends goes on unchanged."""

    # Agent conversations grow long; the body cap (max_body_bytes) bounds them, not a message count.
    messages: PassthroughMessages = Field(min_length=1, max_length=100_000)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)


class PassthroughCompletionRequest(_PassthroughGeneration):
    """`POST /v1/completions` to an upstream."""

    prompt: Any = None
    max_tokens: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1)


class ResponsesRequest(Passthrough):
    """`POST /v1/responses` (the Responses API), passed to an upstream unchanged."""

    model: Text = Field(max_length=256)
    input: Any = None
    instructions: Any = None
    max_output_tokens: int | None = Field(None, ge=1)
    stream: bool | None = None


class EmbeddingsRequest(Passthrough):
    """`POST /v1/embeddings`, passed to an upstream unchanged."""

    model: Text = Field(max_length=256)
    input: Any


# ---- Responses (documentation; the routes build the same shapes as dicts) ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [(400, "Bad request parameters"), (401, "Invalid or missing API key"),
                         (403, "Account blocked"), (413, "Request body too large"), (429, "Over quota")]
}
