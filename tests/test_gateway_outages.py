"""Redis or PostgreSQL down: 503 with a code and Retry-After (never 500), /health says degraded, /ready says
503, and the gateway recovers by itself when the service is back. Each test starts (and kills) its own
Redis, or a TCP proxy in front of the shared PostgreSQL, on a free port: the shared services keep running."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway_helpers import ServerThread
from guard_support import PG_ADMIN_URL, free_port, fresh_postgres, mock_upstream
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


class TcpProxy:
    """A TCP relay on 127.0.0.1:port to a target port; `stop()` drops it and every connection through it."""

    def __init__(self, target: int, port: int) -> None:
        self.target, self.port = target, port
        self.socks: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> "TcpProxy":
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.listener is not None:
            try:  # wakes the thread blocked in accept(): close() alone would leave it listening
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.socks.clear()


def _post(base: str, key: str) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"},
                      timeout=30)


def _until(check, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_down_gives_503_then_recovers(tmp_path: Path) -> None:
    from stillwatch.guard.app import create_app

    port = free_port()
    redis = _redis(port)
    db = f"sqlite:///{tmp_path / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("alice")[1]
    engine.dispose()
    try:
        with mock_upstream() as upstream:
            closed = GuardSettings(upstream=upstream, db_url=db, rate_limit_storage=f"redis://127.0.0.1:{port}")
            opened = closed.model_copy(update={"quota_failure": "open"})
            with ServerThread(create_app(closed)) as gw, ServerThread(create_app(opened)) as gw_open:
                assert _post(gw.url, key).status_code == 200
                assert httpx.get(gw.url + "/ready").status_code == 200
                redis.kill()
                redis.wait()
                r = _post(gw.url, key)
                assert r.status_code == 503 and r.json()["error"]["code"] == "quota_unavailable"
                assert int(r.headers["Retry-After"]) >= 1
                health = httpx.get(gw.url + "/health", timeout=10)
                assert health.status_code == 200 and health.json()["status"] == "degraded"
                assert health.json()["checks"]["quota_store"] == "unavailable"
                ready = httpx.get(gw.url + "/ready", timeout=10)
                assert ready.status_code == 503 and "Retry-After" in ready.headers
                assert _post(gw_open.url, key).status_code == 200  # fail open: served, uncounted
                redis = _redis(port)
                assert _until(lambda: _post(gw.url, key).status_code == 200)
                assert httpx.get(gw.url + "/health").json()["status"] == "ok"
    finally:
        redis.kill()
        redis.wait()


def test_postgres_down_gives_503_then_recovers(tmp_path: Path) -> None:
    from stillwatch.guard.app import create_app

    target = int(PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])
    with fresh_postgres() as url:
        engine = make_engine(url)
        upgrade(engine)
        key = AccountStore(engine).create_key("alice")[1]
        engine.dispose()
        port = free_port()
        proxy = TcpProxy(target, port).start()
        proxied = url.replace(f":{target}/", f":{port}/")
        try:
            with mock_upstream() as upstream:
                settings = GuardSettings(upstream=upstream, db_url=proxied)
                with ServerThread(create_app(settings)) as gw:
                    assert _post(gw.url, key).status_code == 200
                    proxy.stop()
                    r = _post(gw.url, key)
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "database_unavailable" and "Retry-After" in r.headers
                    health = httpx.get(gw.url + "/health", timeout=10).json()
                    assert health["status"] == "degraded" and health["checks"]["database"] == "unavailable"
                    assert httpx.get(gw.url + "/ready", timeout=10).status_code == 503
                    proxy = TcpProxy(target, port).start()
                    assert _until(lambda: _post(gw.url, key).status_code == 200)
                    assert httpx.get(gw.url + "/ready").status_code == 200
        finally:
            proxy.stop()


def test_postgres_get_or_create_is_race_free_and_nul_is_no_500() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from stillwatch.guard.accounts import UnknownAccount, UnknownKey
    from stillwatch.guard.audit import query as audit_query

    with fresh_postgres() as url:
        engine = make_engine(url)
        upgrade(engine)
        store = AccountStore(engine)
        with ThreadPoolExecutor(8) as pool:  # eight replicas making the first key of one new account at once
            keys = list(pool.map(lambda _: store.create_key("newco"), range(8)))
        assert len({k for k, _ in keys}) == 8 and [a["name"] for a in store.list_accounts()] == ["newco"]
        assert store.block("newco", "nul\x00 in the reason")["blocked"]
        with pytest.raises(UnknownAccount):
            store.get_account("new\x00co")
        with pytest.raises(UnknownAccount):
            store.unblock("new\x00co")
        with pytest.raises(UnknownKey):
            store.revoke_key("0123\x00")
        with pytest.raises(UnknownAccount):
            audit_query(engine, account="new\x00co")
        engine.dispose()
