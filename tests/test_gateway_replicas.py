"""Two `stillwatch serve` replicas on one PostgreSQL database and one Redis: blocks and quotas hold across both."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import openai
import pytest

from guard_support import Server, fresh_postgres, mock_upstream, require_redis

ADMIN = "replica-admin-key"


def _ask(server: Server, key: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=20.0)
    return client.completions.create(model="mock", prompt=prompt, max_tokens=8).choices[0].text


def _admin(server: Server, method: str, path: str, **kw) -> dict:
    response = httpx.request(method, server.base_url + "/admin" + path, timeout=20.0,
                             headers={"Authorization": f"Bearer {ADMIN}"}, **kw)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_two_replicas_share_blocks_and_quotas(tmp_path: Path) -> None:
    redis_url = require_redis()
    quotas = tmp_path / "quotas.toml"
    quotas.write_text('[default]\nrequests = "unlimited"\ntokens = "unlimited"\n'
                      '[accounts.metered]\nrequests = "6/minute"\n')
    # A fresh key prefix per run: the counters of an earlier run (same account ids) must not count.
    storage = f"{redis_url}?prefix=sw-test-{uuid.uuid4().hex[:10]}"
    with fresh_postgres() as db, mock_upstream() as upstream:
        args = ["--upstream", upstream, "--db", db, "--quotas", str(quotas), "--rate-limit-storage", storage]
        env = {"STILLWATCH_ADMIN_KEY": ADMIN}
        a = Server(args, env, tmp_path / "a.log")
        b = Server(args, env, tmp_path / "b.log")
        try:
            a.launch(), b.launch()  # both migrate the empty database at once: one waits for the other
            a.wait_ready(), b.wait_ready()

            suspect = _admin(a, "POST", "/keys", json={"account": "suspect"})["key"]
            assert _ask(b, suspect, "hello") == "-> olleh"  # a key made through A works on B
            _admin(a, "POST", "/accounts/suspect/block", json={"reason": "harvesting"})
            with pytest.raises(openai.PermissionDeniedError) as info:  # enforced by B on the next request
                _ask(b, suspect, "again")
            assert info.value.code == "account_blocked" and "harvesting" in str(info.value)
            with pytest.raises(openai.PermissionDeniedError):
                _ask(a, suspect, "again")
            _admin(b, "POST", "/accounts/suspect/unblock")
            assert _ask(a, suspect, "back") == "-> kcab"

            metered = _admin(b, "POST", "/keys", json={"account": "metered"})["key"]
            for i in range(3):  # 6 per minute in all: 3 through each replica
                _ask(a, metered, f"a{i}")
                _ask(b, metered, f"b{i}")
            for replica in (a, b):
                with pytest.raises(openai.RateLimitError) as info:
                    _ask(replica, metered, "one too many")
                assert int(info.value.response.headers["retry-after"]) >= 1
            assert _ask(a, suspect, "others unaffected") == "-> detceffanu srehto"

            usage = _admin(b, "GET", "/accounts/metered/usage")
            assert usage["requests"] == 8 and usage["refused"] == 2  # both replicas audit into one database
        finally:
            a.stop()
            b.stop()
