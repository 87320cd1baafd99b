"""Prompt sources for a harvest: built-in tasks, or a JSONL/Parquet file streamed row by row.

A file row has a `prompt` string or a `messages` list of `{role, content}` dicts (the Hugging Face datasets
convention), and optionally `task` and `answer`. Messages are kept as they are, for a chat endpoint to receive
with their roles; `prompt` holds their rendering through the teacher tokenizer's chat template when one is
known (what an in-process teacher or a completions endpoint is given), else their contents joined by newlines.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from stillwatch.errors import ConfigError

_PARQUET_BATCH = 1024


@dataclass(frozen=True)
class PromptItem:
    """One prompt to harvest, with its stable id and, for built-in tasks, the task and reference answer."""

    prompt_id: str
    position: int
    prompt: str
    task: str | None = None
    answer: str | None = None
    messages: tuple[dict, ...] | None = None  # a chat prompt as given, roles intact

    def request(self) -> str | list[dict]:
        """What a chat endpoint is sent: the messages when the prompt was a conversation, else the text."""
        return [dict(m) for m in self.messages] if self.messages else self.prompt


def prompt_id(prompt: str, position: int) -> str:
    """A stable id: SHA-256 of the source position and the prompt text (128 bits, hex)."""
    return hashlib.sha256(f"{position}\x00{prompt}".encode()).hexdigest()[:32]


@dataclass
class PromptSource:
    """An iterable of prompts that can be read again, with its size when known (for the progress ETA)."""

    describe: str
    total: int | None
    _open: Callable[[], Iterator[PromptItem]]

    def __iter__(self) -> Iterator[PromptItem]:
        return self._open()

    def shard(self, index: int, count: int) -> "PromptSource":
        """Every `count`-th prompt starting at `index` (0-based): disjoint shards that cover the source."""
        if not 0 <= index < count:
            raise ConfigError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
        if count == 1:
            return self
        parent = self._open
        total = None if self.total is None else len(range(index, self.total, count))
        return PromptSource(f"{self.describe}, shard {index}/{count}", total,
                            lambda: (item for i, item in enumerate(parent()) if i % count == index))


def task_source(names: Sequence[str], n: int, seed: int = 0) -> PromptSource:
    """`n` prompts of each built-in task, with their reference answers (positions count within a task)."""
    from stillwatch.tasks import examples, get_task

    if n < 1:
        raise ConfigError("--n must be at least 1")
    tasks = [get_task(name) for name in names]  # fail fast on an unknown name

    def items() -> Iterator[PromptItem]:
        for task in tasks:
            for position, ex in enumerate(examples(task, n, seed)):
                yield PromptItem(prompt_id(ex.prompt, position), position, ex.prompt, task.name, ex.answer or None)

    return PromptSource(f"task {'+'.join(names)} x {n} (seed {seed})", n * len(tasks), items)


def file_source(path: str | Path, tokenizer: Any = None) -> PromptSource:
    """Prompts from a JSONL (`.jsonl`, `.json`, `.gz`) or Parquet file, validated and counted in one pass."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no prompt file at {path}")
    to_prompt = _messages_renderer(tokenizer)
    if path.suffix == ".parquet":
        total = _check_parquet(path)
        rows = lambda: _parquet_rows(path)  # noqa: E731
    elif path.suffix in (".jsonl", ".json", ".gz"):
        rows = lambda: _jsonl_rows(path)  # noqa: E731
        total = sum(1 for _ in (_item(where, row, 0, to_prompt) for where, row in rows()))
    else:
        raise ConfigError(f"{path}: prompt files must be .jsonl, .json, .jsonl.gz or .parquet")
    if total == 0:
        raise ConfigError(f"{path} holds no prompts")

    def items() -> Iterator[PromptItem]:
        for position, (where, row) in enumerate(rows()):
            yield _item(where, row, position, to_prompt)

    return PromptSource(f"{path.name} ({total} prompts)", total, items)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path.name}:{lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path.name}:{lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _check_parquet(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ConfigError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    names = meta.schema_arrow.names
    if not {"prompt", "messages"} & set(names):
        raise ConfigError(f"{path} has no 'prompt' or 'messages' column (columns: {', '.join(names)})")
    return meta.metadata.num_rows


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = [c for c in ("prompt", "messages", "task", "answer") if c in pf.schema_arrow.names]
    index = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=columns):
        for row in batch.to_pylist():
            yield f"{path.name} row {index}", row
            index += 1


def _item(where: str, row: Any, position: int, to_prompt: Callable[[list], str]) -> PromptItem:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: each row must be a JSON object with a 'prompt' or 'messages' field")
    prompt, messages = row.get("prompt"), row.get("messages")
    if prompt is None and messages is not None:
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        messages = tuple({"role": str(m.get("role") or "user"), "content": m["content"]} for m in messages)
        prompt = to_prompt(list(messages))
    else:
        messages = None
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f"{where}: needs a non-empty string 'prompt' or a 'messages' list")
    task, answer = row.get("task"), row.get("answer")
    return PromptItem(prompt_id(prompt, position), position, prompt,
                      None if task is None else str(task), None if answer is None else str(answer), messages)


def _messages_renderer(tokenizer: Any) -> Callable[[list], str]:
    """Chat template of the teacher's tokenizer when it has one, else the contents joined by newlines."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return lambda messages: "\n".join(m["content"] for m in messages)

    def render(messages: list) -> str:
        try:
            return tokenizer.apply_chat_template([{"role": m.get("role") or "user", "content": m["content"]}
                                                  for m in messages], tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may reject a conversation shape (e.g. roles out of turn)
            raise ConfigError(f"the teacher's chat template rejected a conversation: {exc}") from None

    return render
