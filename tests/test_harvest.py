"""Harvest store, prompt sources, runner (fake and tiny teachers), export and streaming memory."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import tracemalloc

import numpy as np
import pytest

from stillwatch.cli import main
from stillwatch.errors import ConfigError, StillwatchError, TeacherError
from stillwatch.harvest import (HarvestStopped, HarvestStore, PromptItem, export, file_source, harvest, prompt_id,
                                task_source)
from stillwatch.harvest.store import pack_top, unpack_top
from stillwatch.teachers.completion import Completion, SamplingParams


def _completion(text: str = "1+2=3 -> 3", k: int = 2) -> Completion:
    ids = list(range(3, 3 + len(text) // 3))
    top = [[(i, -0.25), (i + 1, -1.5)][:k] for i in ids] if k else None
    return Completion(text=text, token_ids=ids, logprobs=[-0.125] * len(ids), finish_reason="stop",
                      prompt_tokens=4, top_logprobs=top)


def _item(i: int, task: str | None = "add") -> PromptItem:
    prompt = f"add: {i}+{i}\n"
    return PromptItem(prompt_id(prompt, i), i, prompt, task, str(2 * i) if task else None)


class FakeTeacher:
    """An endpoint-like teacher (no `generate`): records calls, fails on chosen prompts."""

    name = "fake"

    def __init__(self, fail_on: set[str] = frozenset(), error: Exception | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail_on, self.error = fail_on, error

    async def complete(self, prompts, params):
        out = []
        for p in prompts:
            self.calls.append((p, params.n))
            if p in self.fail_on or self.error is not None:
                raise self.error or TeacherError("endpoint error 500: boom")
            out.append([_completion(f"{p.strip()} #{j} -> x", k=params.top_logprobs) for j in range(params.n)])
        return out

    async def aclose(self):
        pass


# -- store --------------------------------------------------------------------------------------------------

def test_store_round_trip_and_insert_or_ignore(tmp_path):
    store = HarvestStore(tmp_path / "s.db", create=True)
    c = _completion()
    params = SamplingParams(max_tokens=8, top_logprobs=2, seed=3).to_dict()
    assert store.add([(_item(1), 0, c, "fake", params), (_item(1), 1, c, "fake", params)]) == 2
    # the same (prompt_id, sample_index) again is ignored, a new index is not
    assert store.add([(_item(1), 0, _completion("other"), "fake", params), (_item(1), 2, c, "fake", params)]) == 1
    assert store.count() == 3 and store.count_prompts() == 1
    # token totals count inserted rows only (the ignored duplicate is not counted)
    assert store.meta()["completion_tokens"] == 3 * c.completion_tokens and store.meta()["prompt_tokens"] == 12
    rows = list(store.iter_rows(batch_size=2))
    assert [r.sample_index for r in rows] == [0, 1, 2]
    row = rows[0]
    assert (row.prompt, row.task, row.answer, row.teacher, row.params) == ("add: 1+1\n", "add", "2", "fake", params)
    assert row.completion.text == c.text and row.completion.token_ids == c.token_ids
    assert row.completion.logprobs == c.logprobs  # float32 holds these exactly
    assert row.completion.top_logprobs == c.top_logprobs  # and float16 these
    assert row.completion.finish_reason == "stop" and row.completion.prompt_tokens == 4
    assert abs(row.created_at - time.time()) < 3600
    assert next(store.iter_rows(with_top=False)).completion.top_logprobs is None
    assert store.existing_samples([_item(1).prompt_id, _item(2).prompt_id]) == {_item(1).prompt_id: {0, 1, 2}}
    store.close()
    # the file is in WAL mode and readable by a plain HarvestStore(path)
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with HarvestStore(tmp_path / "s.db") as again:
        assert again.count() == 3 and again.meta()["top_logprobs_dtype"] == "float16"


def test_pack_top_ragged_and_float16_precision():
    top = [[(5, -0.001), (7, -3.25), (9, -12.0)], [(4, -0.5)], []]
    k, ids, lps = pack_top(top)
    assert k == 3 and len(ids) == 3 * 3 * 4 and len(lps) == 3 * 3 * 2
    back = unpack_top(k, ids, lps)
    assert [[t for t, _ in pos] for pos in back] == [[5, 7, 9], [4], []]
    for got, want in zip(back[0], top[0]):
        assert got[1] == pytest.approx(want[1], rel=1e-3)
    assert pack_top(None) == (0, None, None) and unpack_top(0, None, None) is None
    assert unpack_top(*pack_top([])) == []


def test_store_open_errors(tmp_path):
    with pytest.raises(ConfigError, match="no harvest store"):
        HarvestStore(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a harvest store"):
        HarvestStore(junk)
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ConfigError, match="not a harvest store"):
        HarvestStore(tmp_path / "other.db")


def test_iterating_a_large_store_keeps_memory_bounded(tmp_path):
    """120k rows inserted directly; streaming them must hold only about one page of rows in memory."""
    store = HarvestStore(tmp_path / "big.db", create=True)
    ids, lps = np.arange(8, dtype="<i4").tobytes(), np.zeros(8, dtype="<f4").tobytes()
    n = 120_000
    rows = ((f"p{i:07d}", 0, i, f"prompt {i} " + "x" * 60, "add", str(i), "completion " + "y" * 60, ids, lps, 0,
             None, None, "stop", 4, 8, "fake", "{}", 0.0) for i in range(n))
    store._db.execute("BEGIN")
    store._db.executemany(
        "INSERT INTO samples (prompt_id, sample_index, position, prompt, task, answer, text, token_ids, logprobs, "
        "top_k, top_ids, top_logprobs, finish_reason, prompt_tokens, completion_tokens, teacher, params, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    store._db.execute("COMMIT")
    assert store.count() == n
    tracemalloc.start()
    seen, last = 0, ""
    for row in store.iter_rows(batch_size=500):
        assert row.prompt_id > last  # storage order, each row once
        last, seen = row.prompt_id, seen + 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    store.close()
    assert seen == n
    # Loading the store whole would take about 100 MB of Python objects; one page takes under 2 MB.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming"


# -- prompt sources -----------------------------------------------------------------------------------------

def test_task_source_is_stable_and_keeps_answers():
    a = list(task_source(["add", "mul"], 5, seed=0))
    b = list(task_source(["add", "mul"], 5, seed=0))
    assert a == b and len(a) == 10 and len({x.prompt_id for x in a}) == 10
    assert {x.task for x in a} == {"add", "mul"} and all(x.answer for x in a)
    assert a[0].prompt.startswith("add:") and a[5].prompt.startswith("mul:")
    # a longer harvest of the same task extends the shorter one (same ids: resume across --n)
    assert [x.prompt_id for x in task_source(["add"], 8, 0)][:5] == [x.prompt_id for x in a[:5]]
    with pytest.raises(StillwatchError, match="unknown task"):
        task_source(["nope"], 3)


def test_file_sources_jsonl_messages_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stillwatch.tokenizer import train_tokenizer

    lines = [{"prompt": "add: 1+2\n", "task": "add", "answer": "3"},
             {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    src = file_source(path)
    items = list(src)
    assert src.total == 2 and [x.prompt for x in items] == ["add: 1+2\n", "be brief\nhi"]
    assert (items[0].task, items[0].answer, items[1].task) == ("add", "3", None)
    # with a tokenizer, messages go through its chat template (the project's puts each turn on its own line)
    assert list(file_source(path, tokenizer=train_tokenizer(n_per_task=50)))[1].prompt == "be brief\nhi\n"
    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [x.prompt_id for x in file_source(gz)] == [x.prompt_id for x in items]
    pq.write_table(pa.table({"prompt": ["a\n", "b\n", "c\n"], "extra": [1, 2, 3]}), tmp_path / "p.parquet")
    psrc = file_source(tmp_path / "p.parquet")
    assert psrc.total == 3 and [x.prompt for x in psrc] == ["a\n", "b\n", "c\n"]
    msgs = pa.table({"messages": [[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]]})
    pq.write_table(msgs, tmp_path / "m.parquet")
    assert [x.prompt for x in file_source(tmp_path / "m.parquet")] == ["x", "y"]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"prompt": \n', "p.jsonl:2: not valid JSON"),
    ('{"text": "no prompt"}\n', "p.jsonl:1: needs a non-empty string 'prompt'"),
    ('{"messages": "hi"}\n', "p.jsonl:1: 'messages' must be"),
    ('[1, 2]\n', "p.jsonl:1: each row must be a JSON object"),
    ("\n", "holds no prompts"),
])
def test_bad_jsonl_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        file_source(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_files_through_the_cli_exit_2_with_one_line(tmp_path, tiny_teacher, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "bad.parquet")
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    cases = {tmp_path / "bad.parquet": "no 'prompt' or 'messages' column", tmp_path / "p.csv": "must be .jsonl",
             tmp_path / "broken.parquet": "not a readable Parquet file", tmp_path / "nope.jsonl": "no prompt file"}
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["harvest", "--teacher", str(tiny_teacher), "--prompts", str(path), "--out",
                  str(tmp_path / "s.db"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and err[-1].startswith("stillwatch: error:") and message in err[-1]
        assert not any("Traceback" in line for line in err)


# -- the runner ---------------------------------------------------------------------------------------------

def test_runner_resumes_partial_prompts_and_skips_complete_ones(tmp_path):
    items = [_item(i) for i in range(6)]
    store = HarvestStore(tmp_path / "s.db", create=True)
    params = SamplingParams(max_tokens=8, n=3, seed=7, top_logprobs=2)
    store.add([(items[0], i, _completion(), "fake", {}) for i in range(3)])  # complete
    store.add([(items[1], 1, _completion(), "fake", {})])  # partial: has sample 1 only
    teacher = FakeTeacher()
    result = harvest(teacher, items, store, params, concurrency=3, progress=False)
    asked = dict(teacher.calls)
    assert items[0].prompt not in asked and asked[items[1].prompt] == 2  # only the missing samples
    assert all(asked[x.prompt] == 3 for x in items[2:])
    assert (result.prompts_done, result.prompts_skipped, result.rows_added, result.rows_total) == (5, 1, 14, 18)
    for item in items:
        assert store.existing_samples([item.prompt_id])[item.prompt_id] == {0, 1, 2}
    # the partial prompt got indices 0 and 2 from the new call; index 1 is the old row, untouched
    rows = {(r.prompt_id, r.sample_index): r for r in store.iter_rows()}
    assert rows[(items[1].prompt_id, 1)].completion.text == _completion().text
    assert rows[(items[1].prompt_id, 0)].completion.text.endswith("#0 -> x")
    assert rows[(items[1].prompt_id, 2)].completion.text.endswith("#1 -> x")
    # per-prompt seeds are recorded and differ between prompts
    seeds = {r.params["seed"] for r in rows.values() if r.params}
    assert len(seeds) == 5
    again = harvest(FakeTeacher(), items, store, params, concurrency=3, progress=False)
    assert (again.rows_added, again.prompts_skipped, store.count()) == (0, 6, 18)


def test_runner_counts_failed_prompts_and_stops_on_a_run_of_failures(tmp_path):
    items = [_item(i) for i in range(8)]
    store = HarvestStore(tmp_path / "s.db", create=True)
    params = SamplingParams(max_tokens=8)
    result = harvest(FakeTeacher(fail_on={items[2].prompt}), items, store, params, concurrency=2, progress=False,
                     retries=1, retry_delay=0.01)
    assert (result.prompts_failed, result.rows_added) == (1, 7)
    # the failed prompt is harvested by a re-run
    assert harvest(FakeTeacher(), items, store, params, progress=False).rows_added == 1
    down = HarvestStore(tmp_path / "down.db", create=True)
    with pytest.raises(HarvestStopped, match="3 prompts failed in a row .*endpoint error 500.*0 rows collected"):
        harvest(FakeTeacher(error=TeacherError("endpoint error 500: boom")), items, down, params, concurrency=1,
                progress=False, retries=0, max_consecutive_failures=3)


def test_local_teacher_harvest_batches_and_keeps_top_k(tmp_path, tiny_teacher):
    from stillwatch.teachers.local import LocalTeacher

    teacher = LocalTeacher.from_dir(tiny_teacher)
    calls = []
    generate = teacher.generate
    teacher.generate = lambda prompts, params: calls.append(len(prompts)) or generate(prompts, params)
    store = HarvestStore(tmp_path / "s.db", create=True)
    source = task_source(["add"], 10)
    result = harvest(teacher, source, store, SamplingParams(max_tokens=12, n=2, seed=1, top_logprobs=3),
                     concurrency=4, total=source.total, progress=False)
    assert calls == [4, 4, 2] and result.rows_added == 20 == store.count()
    for row in store.iter_rows():
        c = row.completion
        assert len(c.token_ids) == len(c.logprobs) == len(c.top_logprobs) <= 12
        assert all(len(pos) == 3 for pos in c.top_logprobs) and row.task == "add" and row.answer
        # the top-1 logprob is at least the sampled token's (float16 rounding aside)
        assert all(pos[0][1] >= lp - 1e-2 for pos, lp in zip(c.top_logprobs, c.logprobs))


def test_cli_harvest_watermarked_teacher_records_config_not_key(tmp_path, tiny_teacher, monkeypatch, capsys):
    pytest.importorskip("stillwatch.forensics.watermark")
    secret = "harvest-test-secret-8d1f"
    args = ["harvest", "--teacher", str(tiny_teacher), "--task", "story", "--n", "6", "--max-tokens", "16",
            "--concurrency", "6", "--no-progress"]
    main(args + ["--out", str(tmp_path / "plain.db")])
    monkeypatch.setenv("STILLWATCH_WATERMARK_KEY", secret)
    main(args + ["--out", str(tmp_path / "wm.db")])
    capsys.readouterr()
    with HarvestStore(tmp_path / "plain.db") as plain, HarvestStore(tmp_path / "wm.db") as marked:
        assert "watermark" not in plain.meta()
        wm = marked.meta()["watermark"]
        assert wm["key_fingerprint"] and 0 < wm["gamma"] < 1 and wm["delta"] > 0
        assert marked.count() == plain.count() == 6
        # same prompts and seeds: the green-list bias changed what was sampled
        assert [r.completion.text for r in marked.iter_rows()] != [r.completion.text for r in plain.iter_rows()]
    for path in tmp_path.glob("wm.db*"):
        assert secret.encode() not in path.read_bytes()


def test_export_jsonl_and_parquet_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    store = HarvestStore(tmp_path / "s.db", create=True)
    params = SamplingParams(max_tokens=8, top_logprobs=2).to_dict()
    # rows with and without task/answer/top-k, in more than one export chunk
    store.add([(_item(i, task="add" if i % 2 else None), 0, _completion(k=2 if i % 3 else 0), "fake", params)
               for i in range(25)])
    for suffix in ("jsonl", "parquet"):
        out = tmp_path / f"out.{suffix}"
        assert export(store, out, batch_size=7) == 25 and not (tmp_path / f"out.{suffix}.partial").exists()
        ds = datasets.load_dataset("json" if suffix == "jsonl" else "parquet", data_files=str(out), split="train",
                                   cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == 25
        first, second = ds[0], ds[1]
        assert first["prompt"] == "add: 0+0\n" and first["completion"] == _completion().text
        assert first["messages"][1] == {"role": "assistant", "content": _completion().text}
        assert first["task"] is None and second["task"] == "add" and second["answer"] == "2"
        assert first["token_ids"] == _completion().token_ids and first["top_logprobs"] is None
        assert second["top_token_ids"][0] == [3, 4] and second["top_logprobs"][0] == [-0.25, -1.5]
        assert json.loads(second["params"]) == params and second["teacher"] == "fake"
    with pytest.raises(ConfigError, match="jsonl or .parquet"):
        export(store, tmp_path / "out.csv")


def test_cli_export_command(tmp_path, capsys):
    store = HarvestStore(tmp_path / "s.db", create=True)
    store.add([(_item(i), 0, _completion(), "fake", {}) for i in range(3)])
    store.close()
    main(["harvest", "export", str(tmp_path / "s.db"), "--out", str(tmp_path / "o.jsonl")])
    assert "wrote 3 rows" in capsys.readouterr().out
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit) as info:
        main(["harvest", "export", str(tmp_path / "missing.db"), "--out", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2 and "no harvest store" in capsys.readouterr().err


def test_shards_cover_the_source_and_merge_without_duplicates(tmp_path, capsys):
    source = task_source(["add"], 11)
    shards = [source.shard(i, 3) for i in range(3)]
    assert [s.total for s in shards] == [4, 4, 3]
    ids = [[x.prompt_id for x in s] for s in shards]
    assert sorted(sum(ids, [])) == sorted(x.prompt_id for x in source)
    with pytest.raises(ConfigError, match="shard 3/3"):
        source.shard(3, 3)
    paths = []
    for i, shard in enumerate(shards):
        paths.append(tmp_path / f"shard{i}.db")
        with HarvestStore(paths[-1], create=True) as store:
            store.record_teacher(f"fake{i}")
            harvest(FakeTeacher(), shard, store, SamplingParams(max_tokens=8, n=2), progress=False)
    main(["harvest", "merge", str(tmp_path / "all.db"), *map(str, paths)])
    main(["harvest", "merge", str(tmp_path / "all.db"), str(paths[0])])  # again: nothing new
    out = capsys.readouterr().out
    assert "shard0.db: 8 new rows" in out and "shard0.db: 0 new rows" in out and "holds 22 rows" in out
    with HarvestStore(tmp_path / "all.db") as merged:
        assert merged.count() == 22 and merged.count_prompts() == 11
        assert merged.meta()["teachers"] == ["fake0", "fake1", "fake2"]
        assert merged.meta()["completion_tokens"] == sum(r.completion.completion_tokens for r in merged.iter_rows())
        row = next(merged.iter_rows())
        assert row.task == "add" and row.completion.text.endswith("-> x")
    with pytest.raises(SystemExit):
        main(["harvest", "--teacher", "x", "--task", "add", "--n", "2", "--out", "y.db", "--shard", "2"])
    assert "--shard takes I/N" in capsys.readouterr().err


def test_one_store_one_watermark(tmp_path):
    with HarvestStore(tmp_path / "s.db", create=True) as store:
        store.record_teacher("local:t", {"model_dir": "/t"})
        store.record_teacher("local:t", {"model_dir": "/t"})  # a resume: fine
        with pytest.raises(ConfigError, match="harvested without a watermark, but this run is watermarked"):
            store.record_teacher("local:t", {"watermark": {"key_fingerprint": "abc"}})
        assert store.meta()["teachers"] == ["local:t"]
