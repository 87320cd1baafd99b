"""Export a harvest store to JSONL or Parquet that `datasets.load_dataset("json"|"parquet", ...)` reads.

Columns: prompt_id, sample_index, prompt, completion (the text), messages (the chat prompt as harvested, roles kept, or
the prompt as one user message, then the assistant completion: for chat-style SFT trainers), task, answer, token_ids, logprobs, top_token_ids and top_logprobs (parallel
`[position][rank]` lists, best first; null without top-k), finish_reason, prompt_tokens, completion_tokens,
teacher, params (the sampling parameters as a JSON string: its shape must not vary across chunks) and
created_at (ISO 8601, UTC). Both writers stream `batch_size` rows at a time.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from stillwatch.errors import ConfigError
from stillwatch.harvest.store import HarvestRow, HarvestStore


def _record(row: HarvestRow) -> dict:
    c = row.completion
    top = c.top_logprobs
    return {
        "prompt_id": row.prompt_id,
        "sample_index": row.sample_index,
        "prompt": row.prompt,
        "completion": c.text,
        "messages": [*(row.messages or [{"role": "user", "content": row.prompt}]),
                     {"role": "assistant", "content": c.text}],
        "task": row.task,
        "answer": row.answer,
        "token_ids": c.token_ids,
        "logprobs": c.logprobs,
        "top_token_ids": None if top is None else [[t for t, _ in pos] for pos in top],
        "top_logprobs": None if top is None else [[lp for _, lp in pos] for pos in top],
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "teacher": row.teacher,
        "params": json.dumps(row.params, sort_keys=True),
        "created_at": datetime.fromtimestamp(row.created_at, timezone.utc).isoformat(),
    }


def _parquet_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("prompt_id", pa.string()), ("sample_index", pa.int32()), ("prompt", pa.string()),
        ("completion", pa.string()), ("messages", pa.list_(message)), ("task", pa.string()),
        ("answer", pa.string()), ("token_ids", pa.list_(pa.int32())), ("logprobs", pa.list_(pa.float32())),
        ("top_token_ids", pa.list_(pa.list_(pa.int32()))), ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
        ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
        ("teacher", pa.string()), ("params", pa.string()), ("created_at", pa.string()),
    ])


def export(store: HarvestStore, out: str | Path, batch_size: int = 1000) -> int:
    """Write every row of `store` to `out` (.jsonl or .parquet), streaming; returns the number of rows."""
    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"{out}: export writes .jsonl or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")  # a crash never leaves a truncated file under the real name
    rows = 0
    if out.suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for row in store.iter_rows(batch_size):
                f.write(json.dumps(_record(row), ensure_ascii=False) + "\n")
                rows += 1
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _parquet_schema()
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            chunk: list[dict] = []
            for row in store.iter_rows(batch_size):
                chunk.append(_record(row))
                if len(chunk) >= batch_size:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    rows, chunk = rows + len(chunk), []
            if chunk:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                rows += len(chunk)
    tmp.replace(out)
    return rows
