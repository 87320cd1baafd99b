"""The harvest store: one SQLite file (WAL), one row per (prompt, sample), resumable and streamable.

Layout. Table `samples` holds one row per `(prompt_id, sample_index)` under a UNIQUE constraint, written with
`INSERT OR IGNORE` inside one transaction per prompt (or per LocalTeacher batch), so a re-run never duplicates
and a SIGKILL loses at most the transaction in flight. Table `meta` holds JSON values: the teacher's identity,
its tokenizer, the watermark configuration (never the key) and the schema version.

Compact arrays. Token ids are packed little-endian int32 and per-token logprobs float32 (exact enough for
importance weights). Top-k logprobs are a dense `[positions, k]` pair of blobs: int32 ids padded with -1 and
float16 logprobs (-2 marks a candidate an endpoint named only by its string). float16 keeps 11 significant bits: the relative error of a probability is below 0.05% near
lp = 0 and 0.4% at lp = -5, far under sampling noise, at half the bytes of float32; consumers that compute the
tail mass `1 - sum(exp(top))` should clamp it at 0. On disk a 96-token row with k = 20 takes about 12 KB,
against about 45 KB as JSON.

Token strings. Rows from an endpoint also keep the token strings it returned (`tokens`, `top_tokens`, JSON
with surrogate escapes for bytes that are not UTF-8), and chat prompts keep their `messages` (JSON), so that a
student with another tokenizer can spell the teacher's tokens and an export keeps the roles. Stores written
before these columns existed gain them (as NULL) the first time a harvest opens them.

Reading streams with keyset pagination on the integer primary key (`WHERE id > ? ORDER BY id LIMIT ?`), so a
store of any size is read in constant memory, also while a harvest is still writing to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from stillwatch.errors import ConfigError, StillwatchError
from stillwatch.teachers.completion import UNKNOWN_ID, Completion

SCHEMA_VERSION = 2
TOP_LOGPROBS_DTYPE = "float16"
_IDS, _LPS, _TOP_LPS = np.dtype("<i4"), np.dtype("<f4"), np.dtype("<f2")
_PAD_ID, _STRING_ONLY_ID = -1, -2  # on disk; a string-only candidate reads back as Completion's UNKNOWN_ID
# Bound parameters per `IN (...)` query: well under SQLite's limit on every build.
_IN_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    prompt_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    position INTEGER,
    prompt TEXT NOT NULL,
    task TEXT,
    answer TEXT,
    text TEXT NOT NULL,
    token_ids BLOB NOT NULL,
    logprobs BLOB NOT NULL,
    top_k INTEGER NOT NULL DEFAULT 0,
    top_ids BLOB,
    top_logprobs BLOB,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    teacher TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    messages TEXT,
    tokens TEXT,
    top_tokens TEXT,
    UNIQUE (prompt_id, sample_index)
);
"""
_SCHEMA_DROPPED = """
CREATE TABLE IF NOT EXISTS dropped (
    id INTEGER PRIMARY KEY,
    prompt_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    task TEXT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (prompt_id, sample_index)
);
"""
# Columns added after schema version 1 (ALTER TABLE ... ADD COLUMN on an older store).
_ADDED_COLUMNS = ("messages", "tokens", "top_tokens")
_COLUMNS = ("id, prompt_id, sample_index, prompt, task, answer, text, token_ids, logprobs, top_k, top_ids, "
            "top_logprobs, finish_reason, prompt_tokens, teacher, params, created_at, messages, tokens, top_tokens")


@dataclass
class HarvestRow:
    """One stored teacher sample; `created_at` is Unix time in seconds, `params` the SamplingParams dict."""

    prompt_id: str
    sample_index: int
    prompt: str
    task: str | None
    answer: str | None
    completion: Completion
    teacher: str
    params: dict
    created_at: float
    messages: list[dict] | None = None  # the chat prompt as sent (roles kept), when it was one


def pack_top(top: list[list[tuple[int, float]]] | None) -> tuple[int, bytes | None, bytes | None]:
    """(k, int32 ids, float16 logprobs) of ragged top-k lists, padded to the widest position with id -1."""
    if top is None:
        return 0, None, None
    k = max((len(pos) for pos in top), default=0) or (1 if top else 0)  # keep the positions count
    ids = np.full((len(top), k), _PAD_ID, dtype=_IDS)
    lps = np.full((len(top), k), -np.inf, dtype=_TOP_LPS)
    for i, pos in enumerate(top):
        if pos:
            ids[i, : len(pos)] = [t if t >= 0 else _STRING_ONLY_ID for t, _ in pos]
            lps[i, : len(pos)] = [lp for _, lp in pos]
    return k, ids.tobytes(), lps.tobytes()


def unpack_top(k: int, ids: bytes | None, lps: bytes | None) -> list[list[tuple[int, float]]] | None:
    """Inverse of `pack_top` (padding dropped)."""
    if ids is None or lps is None:
        return None
    if k == 0:  # no position had any entry
        return []
    id_arr = np.frombuffer(ids, dtype=_IDS).reshape(-1, k).tolist()
    lp_arr = np.frombuffer(lps, dtype=_TOP_LPS).astype(np.float32).reshape(-1, k).tolist()
    return [[(t if t >= 0 else UNKNOWN_ID, lp) for t, lp in zip(ti, li) if t != _PAD_ID] for ti, li in zip(id_arr, lp_arr)]


def _pack(values: Sequence, dtype: np.dtype) -> bytes:
    return np.asarray(values, dtype=dtype).tobytes()


def _unpack(blob: bytes, dtype: np.dtype) -> list:
    return np.frombuffer(blob, dtype=dtype).tolist()


class HarvestStore:
    """A harvest store in one SQLite file: resumable writes, streaming reads.

    `HarvestStore(path)` opens an existing store for reading (ConfigError when there is none);
    `HarvestStore(path, create=True)` creates it when missing, as the harvest runner does.
    """

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigError(f"no harvest store at {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: every multi-row change opens its own explicit transaction below.
            self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 60000")  # several shard processes may share one store
            self._db.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL survives any process kill; only a power cut can drop the last commits.
            self._db.execute("PRAGMA synchronous = NORMAL")
            if create:
                self._db.executescript(_SCHEMA + _SCHEMA_DROPPED)
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?)",
                                 ("schema_version", json.dumps(SCHEMA_VERSION),
                                  "top_logprobs_dtype", json.dumps(TOP_LOGPROBS_DTYPE),
                                  "created_at", json.dumps(time.time())))
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path} is not a harvest store: {exc}") from None
        if not {"meta", "samples"} <= tables:
            self._db.close()
            raise ConfigError(f"{self.path} is not a harvest store (no samples table)")
        have = {r[1] for r in self._db.execute("PRAGMA table_info(samples)")}
        missing = [c for c in _ADDED_COLUMNS if c not in have]
        if create and "dropped" not in tables:
            self._db.executescript(_SCHEMA_DROPPED)
        if missing and create:
            with self._transaction():
                for column in missing:
                    self._db.execute(f"ALTER TABLE samples ADD COLUMN {column} TEXT")
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION),))
            missing = []
        self._has_dropped = "dropped" in tables or create
        # An older store opened only for reading: its missing columns read as NULL.
        self._columns = _COLUMNS
        for column in missing:
            self._columns = self._columns.replace(f", {column}", f", NULL AS {column}")

    # -- reading ------------------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of stored samples."""
        return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def count_prompts(self) -> int:
        """Number of distinct prompts with at least one stored sample."""
        return self._db.execute("SELECT COUNT(DISTINCT prompt_id) FROM samples").fetchone()[0]

    def iter_rows(self, batch_size: int = 1000, with_top: bool = True) -> Iterator[HarvestRow]:
        """Every row in insertion order, `batch_size` rows in memory at a time (keyset pagination).

        `with_top=False` skips decoding top-k logprobs (`completion.top_logprobs` is then None): much faster
        for SFT, which only needs the text and tokens.
        """
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        columns = self._columns if with_top else self._columns.replace("top_ids, top_logprobs", "NULL, NULL")
        last = 0
        while True:
            batch = self._db.execute(f"SELECT {columns} FROM samples WHERE id > ? ORDER BY id LIMIT ?",
                                     (last, batch_size)).fetchall()
            if not batch:
                return
            last = batch[-1][0]
            for row in batch:
                yield self._decode(row)

    @staticmethod
    def _decode(row: tuple) -> HarvestRow:
        (_, prompt_id, index, prompt, task, answer, text, ids, lps, k, top_ids, top_lps, finish,
         prompt_tokens, teacher, params, created, messages, tokens, top_tokens) = row
        top = unpack_top(k, top_ids, top_lps)
        completion = Completion(text=text, token_ids=_unpack(ids, _IDS), logprobs=_unpack(lps, _LPS),
                                finish_reason=finish, prompt_tokens=prompt_tokens, top_logprobs=top,
                                tokens=json.loads(tokens) if tokens else None,
                                top_tokens=json.loads(top_tokens) if top_tokens and top is not None else None)
        return HarvestRow(prompt_id=prompt_id, sample_index=index, prompt=prompt, task=task, answer=answer,
                          completion=completion, teacher=teacher, params=json.loads(params), created_at=created,
                          messages=json.loads(messages) if messages else None)

    def meta(self) -> dict:
        """Store metadata: teacher identity, tokenizer info when known, watermark config, schema version, and
        the totals `prompt_tokens` / `completion_tokens` over every stored row. A filtered or voted harvest also
        has `selection`: what selected (`verify`, `vote`), the samples `kept`, `dropped` by kind, and
        `consumed` (teacher tokens of kept and dropped samples together: what the harvest cost)."""
        meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        if "selection" in meta and self._has_dropped:
            dropped = dict(self._db.execute("SELECT kind, COUNT(*) FROM dropped GROUP BY kind ORDER BY kind"))
            d_prompt, d_completion = self._db.execute(
                "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM dropped").fetchone()
            meta["selection"] = {**meta["selection"], "kept": self.count(), "dropped": dropped,
                                 "consumed": {"prompt_tokens": int(meta.get("prompt_tokens", 0)) + d_prompt,
                                              "completion_tokens": int(meta.get("completion_tokens", 0)) + d_completion}}
        return meta

    def iter_dropped(self) -> Iterator[dict]:
        """Every dropped sample with its reason (prompt_id, sample_index, task, kind, reason, text), in order."""
        if not self._has_dropped:
            return
        cursor = self._db.execute("SELECT prompt_id, sample_index, task, kind, reason, text FROM dropped ORDER BY id")
        names = ("prompt_id", "sample_index", "task", "kind", "reason", "text")
        for row in cursor:
            yield dict(zip(names, row))

    def existing_samples(self, prompt_ids: Sequence[str]) -> dict[str, set[int]]:
        """The stored sample indices of each of `prompt_ids` that has any (uses the UNIQUE index)."""
        found: dict[str, set[int]] = {}
        for start in range(0, len(prompt_ids), _IN_CHUNK):
            chunk = list(prompt_ids[start:start + _IN_CHUNK])
            marks = ",".join("?" * len(chunk))
            union = (f" UNION ALL SELECT prompt_id, sample_index FROM dropped WHERE prompt_id IN ({marks})"
                     if self._has_dropped else "")
            for pid, index in self._db.execute(
                    f"SELECT prompt_id, sample_index FROM samples WHERE prompt_id IN ({marks}){union}",
                    chunk * (2 if union else 1)):
                found.setdefault(pid, set()).add(index)
        return found

    # -- writing ------------------------------------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        """Set metadata keys (JSON values), in one transaction."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in values.items()])

    def record_teacher(self, name: str, info: dict | None = None) -> None:
        """Note the teacher of this run: `teacher` keeps the first one, `teachers` lists all of them."""
        meta = self.meta()
        if "teacher" in meta and meta.get("watermark") != (info or {}).get("watermark"):
            # one store, one watermark: forensics reads the store's config to prove what was served
            raise ConfigError(f"{self.path} was harvested {_watermark_words(meta.get('watermark'))}, but this run "
                              f"is {_watermark_words((info or {}).get('watermark'))}; use another store")
        teachers = meta.get("teachers", [])
        values: dict[str, Any] = {"teachers": teachers + [name]} if name not in teachers else {}
        if "teacher" not in meta:
            values.update({"teacher": name, **(info or {})})
        if values:
            self.set_meta(**values)

    def add(self, rows: Sequence[tuple[Any, int, Completion, str, dict]],
            dropped: Sequence[tuple[Any, int, Completion, Any]] = ()) -> int:
        """Insert `(prompt item, sample index, completion, teacher, params)` rows in one transaction, with the
        `(prompt item, sample index, completion, drop)` samples a selection dropped (`drop.kind`, `drop.reason`).

        The prompt item needs `prompt_id, position, prompt, task, answer` attributes. Rows whose
        (prompt_id, sample_index) is already stored are ignored. Returns the number of kept rows inserted.
        """
        now = time.time()
        records = []
        for item, index, c, teacher, params in rows:
            k, top_ids, top_lps = pack_top(c.top_logprobs)
            messages = getattr(item, "messages", None)
            records.append((item.prompt_id, index, item.position, item.prompt, item.task, item.answer, c.text,
                            _pack(c.token_ids, _IDS), _pack(c.logprobs, _LPS), k, top_ids, top_lps,
                            c.finish_reason, c.prompt_tokens, c.completion_tokens, teacher,
                            json.dumps(params, sort_keys=True), now,
                            None if messages is None else json.dumps(list(messages)),
                            None if c.tokens is None else json.dumps(c.tokens),
                            None if c.top_tokens is None else json.dumps(c.top_tokens)))
        with self._transaction():
            if dropped:
                self._db.executemany(
                    "INSERT OR IGNORE INTO dropped (prompt_id, sample_index, task, kind, reason, text, prompt_tokens, "
                    "completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(item.prompt_id, index, item.task, drop.kind, drop.reason, c.text, c.prompt_tokens,
                      c.completion_tokens, now) for item, index, c, drop in dropped])
            last = self._last_id()
            self._db.executemany(
                "INSERT OR IGNORE INTO samples (prompt_id, sample_index, position, prompt, task, answer, text, "
                "token_ids, logprobs, top_k, top_ids, top_logprobs, finish_reason, prompt_tokens, "
                "completion_tokens, teacher, params, created_at, messages, tokens, top_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            return self._count_new(last)

    def _last_id(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM samples").fetchone()[0]

    def _count_new(self, last: int) -> int:
        """Add the rows after id `last` (this transaction's) to the token totals in meta; return their number."""
        added, prompt_tokens, completion_tokens = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM samples "
            "WHERE id > ?", (last,)).fetchone()
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
            [("prompt_tokens", str(prompt_tokens)), ("completion_tokens", str(completion_tokens))])
        return added

    def merge_from(self, other: str | Path) -> int:
        """Copy every row of another store into this one (INSERT OR IGNORE, inside SQLite: constant memory).

        Returns the number of rows added. Teachers of both stores are kept in `meta()["teachers"]`.
        """
        source = HarvestStore(other)  # validates it is a harvest store
        theirs, their_columns = source.meta(), source._columns.replace("id, ", "", 1) + ", position, completion_tokens"
        their_dropped = source._has_dropped
        source.close()
        if Path(other).resolve() == self.path.resolve():
            raise ConfigError(f"cannot merge {other} into itself")
        columns = _COLUMNS.replace("id, ", "", 1) + ", position, completion_tokens"
        self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self._transaction():
                last = self._last_id()
                self._db.execute(f"INSERT OR IGNORE INTO samples ({columns}) SELECT {their_columns} FROM other.samples "
                                 "ORDER BY id")
                added = self._count_new(last)
                if their_dropped:  # a selected shard's dropped samples (and their reasons) come along
                    dropped = ("prompt_id, sample_index, task, kind, reason, text, prompt_tokens, completion_tokens, "
                               "created_at")
                    self._db.execute(f"INSERT OR IGNORE INTO dropped ({dropped}) SELECT {dropped} FROM "
                                     "other.dropped ORDER BY id")
        finally:
            self._db.execute("DETACH DATABASE other")
        skip = ("teachers", "created_at", "schema_version", "prompt_tokens", "completion_tokens")
        for name in theirs.get("teachers", []):
            self.record_teacher(name, {k: v for k, v in theirs.items() if k not in skip})
        if "selection" in theirs and "selection" not in self.meta():
            self.set_meta(selection={k: theirs["selection"].get(k) for k in ("verify", "vote")})
        return added

    def _transaction(self):
        return _Transaction(self._db)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> "HarvestStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def discard_store(path: str | Path) -> None:
    """Delete a store file with its WAL and shared-memory files (a store this run created and left empty)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _watermark_words(config: dict | None) -> str:
    return f"watermarked (key {config.get('key_fingerprint')})" if config else "without a watermark"


class StoreWriteError(StillwatchError):
    """The store cannot be written (disk full, read-only, locked by another writer for too long)."""


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, read-only, disk full
            raise StoreWriteError(f"cannot write to the harvest store: {exc}") from None

    def __exit__(self, exc_type, exc, _tb) -> None:
        if exc_type is not None:
            self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreWriteError(f"cannot write to the harvest store: {exc}") from None
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreWriteError(f"cannot write to the harvest store: {exc}") from None


def _token_strings(tokenizer: Any) -> list[str | None]:
    from stillwatch.tokenizer import token_strings  # transformers: only where a tokenizer is in hand

    return token_strings(tokenizer)


def tokenizer_info(tokenizer: Any) -> dict:
    """What a student needs to check that it shares the teacher's tokenizer: sizes, specials, fingerprint.

    `fingerprint` hashes the vocabulary (sorted by id) with the eos and pad tokens, the same formula as
    `stillwatch.distill.data.tokenizer_fingerprint`: equal fingerprints mean equal token ids.
    """
    payload = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]),
               "eos": tokenizer.eos_token, "pad": tokenizer.pad_token}
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "fingerprint": hashlib.sha256(json.dumps(payload, ensure_ascii=True).encode()).hexdigest()[:16],
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        # Each id's text, so that a student with another tokenizer can align this harvest's top-k onto its own.
        "tokens": _token_strings(tokenizer),
    }
