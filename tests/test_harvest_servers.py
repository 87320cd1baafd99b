"""Harvest from endpoints as they really behave: a strict OpenAI-like stub and a vLLM-like one (127.0.0.1)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from stillwatch.cli import main
from stillwatch.harvest import HarvestStore
from stillwatch.teachers.completion import UNKNOWN_ID, Completion
from tests.endpoint_stubs import REPLY_PIECES, StrictOpenAIStub, VLLMStub

CHAT = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "add: 1+2"}],
         "task": "add", "answer": "3"},
        {"prompt": "add: 2+2\n"}]


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in CHAT))
    return path


def _harvest(url: str, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "store.db"
    main(["harvest", "--endpoint", url, "--api-key", "sk-test", "--prompts", str(_prompts(tmp_path)),
          "--out", str(out), "--max-tokens", "8", "--no-progress", "--retries", "0", *extra])
    return out


def test_strict_openai_endpoint_gets_roles_standard_arguments_and_a_capped_top_k(tmp_path, capsys) -> None:
    with StrictOpenAIStub() as stub:
        out = _harvest(stub.url, tmp_path, "--logprobs", "30", "--samples", "2")
        bodies = sorted(stub.bodies("/chat/completions"), key=lambda b: len(b["messages"]), reverse=True)
    err = capsys.readouterr().err
    assert len(bodies) == 2
    # Roles intact: the system message went out as a system message, not glued onto the user's.
    assert bodies[0]["messages"] == CHAT[0]["messages"]
    assert bodies[1]["messages"] == [{"role": "user", "content": "add: 2+2\n"}]
    assert all("return_tokens_as_token_ids" not in b and b["top_logprobs"] == 20 for b in bodies)
    assert "top_logprobs 30 is above this openai endpoint's limit" in err and "asking for 20" in err
    with HarvestStore(out) as store:
        meta, rows = store.meta(), list(store.iter_rows())
    assert meta["server"]["kind"] == "openai" and meta["server"]["decided_by"].startswith("auto: GET /models")
    assert meta["server"]["top_logprobs"] == {"requested": 30, "sent": 20, "limit": 20, "capped": True}
    assert len(rows) == 4 and all(r.params["top_logprobs"] == 20 for r in rows)
    assert sorted(str(r.messages) for r in rows)[-1] == str(CHAT[0]["messages"])
    c = rows[0].completion
    # Token strings are kept as bytes (surrogate escapes where a character is cut); ids are unknown.
    assert [t.encode("utf-8", "surrogateescape") for t in c.tokens] == REPLY_PIECES
    assert c.token_ids == [UNKNOWN_ID] * len(REPLY_PIECES) and c.completion_tokens == len(REPLY_PIECES)
    assert c.top_tokens[0][:3] == ["1+2", " 4", "=2"] and [t for t, _ in c.top_logprobs[0]] == [UNKNOWN_ID] * 3
    assert c.text == "1+2=3 -> 3 café"
    # No ids: the fingerprint sends every student through re-encoding or alignment of these strings.
    assert meta["tokenizer"]["fingerprint"].startswith("none")
    main(["harvest", "export", str(out), "--out", str(tmp_path / "x.jsonl")])
    exported = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert sorted([m["role"] for m in r["messages"]] for r in exported)[-1] == ["user", "assistant"]
    assert sorted([m["role"] for m in r["messages"]] for r in exported)[0] == ["system", "user", "assistant"]


def test_the_strict_stub_rejects_vllm_arguments_like_openai(tmp_path, capsys) -> None:
    with StrictOpenAIStub() as stub, pytest.raises(SystemExit) as exc:
        _harvest(stub.url, tmp_path, "--server", "vllm", "--max-failures", "1")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "400" in err and "Unrecognized request argument supplied: return_tokens_as_token_ids" in err


def test_strict_completions_api_caps_at_five(tmp_path, capsys) -> None:
    with StrictOpenAIStub() as stub:
        out = _harvest(stub.url, tmp_path, "--api", "completions", "--server", "openai", "--logprobs", "8")
        bodies = stub.bodies("/completions")
    assert bodies and all(b["logprobs"] == 5 and isinstance(b["prompt"], str) for b in bodies)
    assert "asking for 5" in capsys.readouterr().err
    with HarvestStore(out) as store:
        c = next(store.iter_rows()).completion
    assert c.top_tokens and len(c.top_tokens[0]) == 3 and c.tokens[0] == "1+2"


def test_vllm_endpoint_gets_token_ids_and_strings_are_spelled(tiny_teacher: Path, tmp_path) -> None:
    from stillwatch.tokenizer import load_tokenizer, token_strings

    tok = load_tokenizer(tiny_teacher)
    with VLLMStub(tok) as stub:
        out = _harvest(stub.url, tmp_path, "--logprobs", "3", "--tokenizer", str(tiny_teacher))
        bodies = stub.bodies("/chat/completions")
    assert bodies and all(b["return_tokens_as_token_ids"] is True for b in bodies)
    with HarvestStore(out) as store:
        meta, c = store.meta(), next(store.iter_rows()).completion
    assert meta["server"]["kind"] == "vllm" and meta["server"]["token_ids"] is True
    expected = tok("1+2=3 -> 3", add_special_tokens=False)["input_ids"]
    assert c.token_ids == expected and [t for t, _ in c.top_logprobs[0]][0] == expected[0]
    spelled = token_strings(tok)
    # Each row spells its ids, so a student with another tokenizer needs no vocabulary beside the harvest.
    assert c.tokens == [spelled[i] for i in expected] and "".join(c.tokens) == "1+2=3 -> 3"
    assert c.top_tokens[0][0] == spelled[expected[0]]


def test_string_only_top_k_round_trips_the_store(tmp_path) -> None:
    from stillwatch.harvest import PromptItem, prompt_id

    c = Completion(text="ab\u00e9", token_ids=[UNKNOWN_ID] * 3, logprobs=[-0.5] * 3, finish_reason="stop",
                   prompt_tokens=2, top_logprobs=[[(UNKNOWN_ID, -0.5), (7, -1.0)]] * 3,
                   tokens=["a", "b", b"\xc3".decode("utf-8", "surrogateescape")], top_tokens=[["a", "x"]] * 3)
    item = PromptItem(prompt_id("p", 0), 0, "p", messages=({"role": "user", "content": "p"},))
    with HarvestStore(tmp_path / "s.db", create=True) as store:
        store.add([(item, 0, c, "t", {})])
        back = next(store.iter_rows())
    assert back.completion.tokens == c.tokens and back.completion.top_tokens == c.top_tokens
    assert back.completion.top_logprobs == c.top_logprobs and back.messages == [{"role": "user", "content": "p"}]


def test_a_store_from_before_token_strings_still_reads_and_resumes(tmp_path) -> None:
    from stillwatch.harvest import PromptItem, prompt_id

    path = tmp_path / "old.db"
    c = Completion(text="x", token_ids=[3], logprobs=[-0.1], finish_reason="stop", prompt_tokens=1)
    with HarvestStore(path, create=True) as store:
        store.add([(PromptItem(prompt_id("p", 0), 0, "p"), 0, c, "t", {})])
    db = sqlite3.connect(path)
    for column in ("messages", "tokens", "top_tokens"):  # what a schema-1 store looks like
        db.execute(f"ALTER TABLE samples DROP COLUMN {column}")
    db.commit()
    db.close()
    with HarvestStore(path) as store:  # read only: the missing columns read as nothing
        assert next(store.iter_rows()).completion.tokens is None
    with HarvestStore(path, create=True) as store:  # a harvest resuming it adds them
        store.add([(PromptItem(prompt_id("q", 1), 1, "q"), 0, c, "t", {})])
        assert store.count() == 2 and store.meta()["schema_version"] == 2
