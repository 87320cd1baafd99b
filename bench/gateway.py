"""Gateway benchmark: what stillwatch's guard costs, next to LiteLLM's proxy, and what batching buys.

Peers, against the same instant mock upstream on 127.0.0.1 (one process each, one run):
  direct      the client calls the mock upstream itself;
  stillwatch  `stillwatch serve --upstream` as shipped: requests passed through as sent, key auth, quotas, online
              detection on (the default) and a durable audit record per request before its response;
  litellm     LiteLLM's proxy (`litellm --config`, master key auth), from the `bench` extra.
Every client sends the same mix in turn: a plain chat completion, a chat completion with tools (the mock
answers with a tool call), and a Responses API request (POST /v1/responses).
Reported: latency each adds over direct (p50/p99, one client in a loop) and requests/s at a fixed concurrency.
Then a stall figure: /health latency on the stillwatch gateway while one key sends abusive requests (~0.9 MB
prompts, 5,000-message bodies, bodies over the size cap), goal p99 <= 100 ms.
Then the local backend: `stillwatch serve --teacher` at 1 vs 32 concurrent clients (tokens/s; batching).

    python bench/gateway.py            # full size
    python bench/gateway.py --smoke    # a few seconds per peer, for CI

LiteLLM pins versions that clash with stillwatch's own (rich, among others), so install it in its own
environment and point `--litellm` at its `litellm` executable (default: .cache/litellm-venv/bin/litellm, else
PATH). Results go to bench/results/gateway.json (gateway-smoke.json with --smoke, so
a smoke run never replaces the full results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gateway.json"
HOST = "127.0.0.1"
MODEL = "stillwatch"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "add: 4721+3856\n"}], "max_tokens": 16}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
TOOLS_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS,
              "tool_choice": "auto", "max_tokens": 16}
RESPONSES_BODY = {"model": MODEL, "input": "Say hello.", "instructions": "Be brief.", "max_output_tokens": 16}
# (path, body) of the mix every client sends in turn.
MIX = [("/v1/chat/completions", CHAT_BODY), ("/v1/chat/completions", TOOLS_BODY), ("/v1/responses", RESPONSES_BODY)]
MOCK_REPLY = {
    "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4721+3856=8577 -> 8577"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25},
}
MOCK_TOOL_REPLY = {
    "id": "chatcmpl-mock-tool", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                 "message": {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "call_1", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
}
MOCK_RESPONSE = {
    "id": "resp_mock", "object": "response", "created_at": 0, "status": "completed", "model": MODEL,
    "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]}],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15},
}


# ---------------------------------------------------------------- the instant mock upstream (raw asyncio)
class _MockProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers every POST with the same chat completion and GET /v1/models with a list."""

    reply = json.dumps(MOCK_REPLY).encode()
    tool_reply = json.dumps(MOCK_TOOL_REPLY).encode()
    response = json.dumps(MOCK_RESPONSE).encode()
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                      "owned_by": "mock"}]}).encode()

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            request = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if head.startswith("GET"):
                body = self.models
            elif head.startswith("POST /v1/responses"):
                body = self.response
            else:
                body = self.tool_reply if b'"tools"' in request else self.reply
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


def serve_mock(port: int) -> None:
    """Run the mock upstream until killed."""
    async def main():
        server = await asyncio.get_running_loop().create_server(_MockProtocol, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # noqa: F401 - uvicorn[standard] brings it

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# ---------------------------------------------------------------- a lean keep-alive HTTP client
def http_request(port: int, path: str, body: dict | bytes | None, key: str | None, method: str = "POST") -> bytes:
    """The bytes of one HTTP/1.1 request."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    kind = "Content-Type: application/json\r\n" if body is not None else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}{kind}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Conn:
    """One keep-alive connection that sends its requests in turn (a mix) and reads each response (length or
    chunked)."""

    def __init__(self, port: int, mix: list[tuple[str, dict]], key: str | None, offset: int = 0):
        self.requests = [http_request(port, path, body, key) for path, body in mix]
        self.turn = offset
        self.port = port
        self.reader = self.writer = None

    @property
    def request(self) -> bytes:
        return self.requests[self.turn % len(self.requests)]

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def call(self) -> tuple[int, bytes]:
        request = self.request
        self.turn += 1
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
            await self.open()
        return status, body

    def close(self):
        if self.writer is not None:
            self.writer.close()


async def _latency(port: int, mix: list[tuple[str, dict]], key: str | None, n: int, warmup: int) -> dict:
    conn = Conn(port, mix, key)
    await conn.open()
    for _ in range(warmup):
        await conn.call()
    times, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = await conn.call()
        times.append(time.perf_counter() - t0)
        errors += status != 200
    conn.close()
    times.sort()
    return {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.99))],
            "mean_ms": 1000 * statistics.fmean(times), "errors": errors, "requests": n}


async def _throughput(port: int, mix: list[tuple[str, dict]], key: str | None, n: int, concurrency: int,
                      parse_usage: bool = False) -> dict:
    conns = [Conn(port, mix, key, offset=i) for i in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    remaining, errors, tokens = n, 0, 0

    async def worker(conn: Conn):
        nonlocal remaining, errors, tokens
        while remaining > 0:
            remaining -= 1
            status, raw = await conn.call()
            if status != 200:
                errors += 1
            elif parse_usage:
                tokens += json.loads(raw)["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"requests": n, "concurrency": concurrency, "seconds": elapsed, "requests_per_s": n / elapsed,
            "errors": errors, "completion_tokens": tokens, "tokens_per_s": tokens / elapsed}


# ---------------------------------------------------------------- the stall figure
def abusive_requests(port: int, key: str) -> list[bytes]:
    """What one hostile key sends: a ~0.9 MB prompt, a 5,000-message body, and a body over the 1 MB cap."""
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 900_000}], "max_tokens": 16}
    many = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 5000, "max_tokens": 16}
    over = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1_200_000}]}
    return [http_request(port, "/v1/chat/completions", body, key) for body in (big, many, over)]


async def _stall(port: int, key: str, seconds: float, attackers: int) -> dict:
    """/health latency, probed every 10 ms by its own connection, while `attackers` connections of one key
    send abusive requests back to back."""
    conns = [Conn(port, [], key) for _ in range(attackers)]
    for i, conn in enumerate(conns):
        conn.requests, conn.turn = abusive_requests(port, key), i
    probe = Conn(port, [], None)
    probe.requests = [http_request(port, "/health", None, None, method="GET")]
    await asyncio.gather(*(c.open() for c in conns), probe.open())
    for _ in range(5):  # the probe's own first requests (connection, first-use costs) are not the attack's
        await probe.call()
    stop = time.perf_counter() + seconds
    statuses: dict[str, int] = {}

    async def attack(conn: Conn) -> None:
        while time.perf_counter() < stop:
            try:
                status, _ = await conn.call()
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 0  # the gateway closed a connection whose body it refused
                conn.close()
                await conn.open()
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def watch() -> list[float]:
        times = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, _ = await probe.call()
            times.append(time.perf_counter() - t0)
            assert status == 200, status
            await asyncio.sleep(0.01)
        return times

    await asyncio.sleep(0)
    *_, times = await asyncio.gather(*(attack(c) for c in conns), watch())
    for conn in (*conns, probe):
        conn.close()
    in_order = [round(1000 * t, 1) for t in times]
    times.sort()
    pick = lambda q: 1000 * times[min(len(times) - 1, int(len(times) * q))]  # noqa: E731
    return {"seconds": seconds, "attackers": attackers, "probes": len(times), "health_p50_ms": pick(0.5),
            "health_p99_ms": pick(0.99), "health_max_ms": 1000 * times[-1], "abusive_statuses": statuses,
            "health_ms_in_order": in_order,
            "goal": "/health p99 <= 100 ms while one key sends abusive requests"}


# ---------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen, headers: dict | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it served {path}")
        try:
            if httpx.get(f"http://{HOST}:{port}{path}", headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing answered on {HOST}:{port}{path} within {timeout:.0f} s")


class Proc:
    """A child process in its own process group, stopped on exit."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def stillwatch_env(tmp: Path) -> tuple[dict, str, Path]:
    """Env for a stillwatch gateway: a fresh SQLite file, one key, quotas high enough not to bind."""
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.db import make_engine, upgrade

    db = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("bench")[1]
    engine.dispose()
    quotas = tmp / "quotas.toml"
    quotas.write_text('[default]\nrequests = "10000000/minute"\ntokens = "1000000000/minute"\n')
    env = {**os.environ, "STILLWATCH_DB": db, "STILLWATCH_QUOTAS_FILE": str(quotas)}
    return env, key, tmp / "bench.db"


def find_litellm(given: str | None) -> str | None:
    for candidate in (given, str(ROOT / ".cache" / "litellm-venv" / "bin" / "litellm"), shutil.which("litellm")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def litellm_version(exe: str) -> str | None:
    python = Path(exe).parent / "python"
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- the run
def run_proxy_peers(args, tmp: Path) -> dict:
    mock_port = free_port()
    procs: list[Proc] = []
    out: dict = {"peers": {}}
    try:
        mock = Proc([sys.executable, __file__, "--serve-mock", str(mock_port)], tmp / "mock.log")
        procs.append(mock)
        wait_http(mock_port, "/v1/models", 30, mock.proc)
        upstream = f"http://{HOST}:{mock_port}/v1"

        peers: list[tuple[str, int, str | None]] = [("direct", mock_port, None)]
        env, key, _ = stillwatch_env(tmp)
        sw_port = free_port()
        sw = Proc([sys.executable, "-m", "stillwatch", "serve", "--upstream", upstream, "--port", str(sw_port),
                   "--log-level", "warning"], tmp / "stillwatch.log", env=env)
        procs.append(sw)
        wait_http(sw_port, "/health", 60, sw.proc)
        peers.append(("stillwatch", sw_port, key))

        exe = find_litellm(args.litellm)
        if exe is None:
            out["litellm"] = {"installed": False, "note": "litellm[proxy] not found; pip install it into its own "
                                                          "venv and pass --litellm PATH"}
        else:
            ll_port = free_port()
            cfg = tmp / "litellm.yaml"
            cfg.write_text(
                "model_list:\n  - model_name: stillwatch\n    litellm_params:\n      model: openai/stillwatch\n"
                f"      api_base: {upstream}\n      api_key: mock\n"
                "general_settings:\n  master_key: sk-bench-master\n"
                "litellm_settings:\n  telemetry: false\n  drop_params: true\n")
            ll_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                      "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"}
            ll = Proc([exe, "--config", str(cfg), "--host", HOST, "--port", str(ll_port), "--num_workers", "1"],
                      tmp / "litellm.log", env=ll_env)
            procs.append(ll)
            wait_http(ll_port, "/health/liveliness", 180, ll.proc)
            out["litellm"] = {"installed": True, "version": litellm_version(exe), "auth": "master key",
                              "note": "no database: LiteLLM keeps no per-request audit record in this setup"}
            peers.append(("litellm", ll_port, "sk-bench-master"))

        for name, port, k in peers:
            lat = asyncio.run(_latency(port, MIX, k, args.latency_requests, args.warmup))
            thr = asyncio.run(_throughput(port, MIX, k, args.throughput_requests, args.concurrency))
            out["peers"][name] = {"latency": lat, "throughput": thr}
            print(f"  {name:<11} p50 {lat['p50_ms']:7.2f} ms  p99 {lat['p99_ms']:7.2f} ms  "
                  f"{thr['requests_per_s']:8.0f} req/s at {args.concurrency}  errors {lat['errors'] + thr['errors']}",
                  flush=True)
        stall = asyncio.run(_stall(sw_port, key, args.stall_seconds, args.stall_attackers))
        out["stall"] = stall
        print(f"  stall: /health p50 {stall['health_p50_ms']:.1f} ms  p99 {stall['health_p99_ms']:.1f} ms  max "
              f"{stall['health_max_ms']:.1f} ms over {stall['probes']} probes while {stall['attackers']} connections "
              f"of one key sent {sum(stall['abusive_statuses'].values())} abusive requests "
              f"{stall['abusive_statuses']} (goal p99 <= 100 ms)", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
    direct = out["peers"]["direct"]["latency"]
    for name, res in out["peers"].items():
        if name != "direct":
            res["added_p50_ms"] = res["latency"]["p50_ms"] - direct["p50_ms"]
            res["added_p99_ms"] = res["latency"]["p99_ms"] - direct["p99_ms"]
    sw_res, ll_res = out["peers"].get("stillwatch"), out["peers"].get("litellm")
    if sw_res and ll_res:
        out["comparison"] = {
            "p50_overhead_ratio": sw_res["added_p50_ms"] / ll_res["added_p50_ms"] if ll_res["added_p50_ms"] > 0 else None,
            "requests_per_s_ratio": sw_res["throughput"]["requests_per_s"] / ll_res["throughput"]["requests_per_s"],
            "goal": "stillwatch adds <= 1/3 of LiteLLM's p50 overhead and sustains >= 2x its requests/s",
        }
    return out


def tiny_teacher_dir() -> Path:
    """The test suite's cached tiny teacher, trained here if missing."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _source_hash  # the same cache key the tests use

    path = ROOT / ".cache" / "tests" / f"tiny-teacher-{_source_hash()}"
    if not (path / "stillwatch_card.json").is_file():
        from stillwatch.teach import teach

        teach(path, preset="tiny", seed=0, eval_n=50, progress=False)
    return path


def run_local(args, tmp: Path) -> dict:
    teacher = Path(args.teacher) if args.teacher else tiny_teacher_dir()
    env, key, _ = stillwatch_env(tmp / "local")
    port = free_port()
    proc = Proc([sys.executable, "-m", "stillwatch", "serve", "--teacher", str(teacher), "--port", str(port),
                 "--log-level", "warning", "--max-batch", "64", "--torch-threads", str(args.torch_threads)],
                tmp / "local.log", env=env)
    from stillwatch.tasks import examples, get_task

    # The open-ended task: long, high-entropy completions, so each request runs close to max_tokens.
    prompt = examples(get_task("story"), 1, args.seed)[0].prompt
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": args.local_tokens,
            "temperature": 1.0}
    try:
        wait_http(port, "/health", 120, proc.proc)
        local_mix = [("/v1/chat/completions", body)]
        asyncio.run(_throughput(port, local_mix, key, 4, 1, parse_usage=True))  # warm up
        one = asyncio.run(_throughput(port, local_mix, key, args.local_requests_1, 1, True))
        many = asyncio.run(_throughput(port, local_mix, key, args.local_requests_32, 32, True))
    finally:
        proc.stop()
    speedup = many["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else float("nan")
    print(f"  local 1 client  {one['tokens_per_s']:8.0f} tokens/s  {one['requests_per_s']:6.1f} req/s  "
          f"errors {one['errors']}\n"
          f"  local 32 clients {many['tokens_per_s']:7.0f} tokens/s  {many['requests_per_s']:6.1f} req/s  "
          f"errors {many['errors']}  speed-up {speedup:.1f}x (goal >= 4x)", flush=True)
    return {"teacher": str(teacher.relative_to(ROOT) if teacher.is_relative_to(ROOT) else teacher),
            "prompt": prompt, "max_tokens": args.local_tokens, "torch_threads": args.torch_threads,
            "one_client": one, "32_clients": many, "speedup": speedup if speedup == speedup else None,
            "goal": "tokens/s at 32 clients >= 4x one client"}


def fsync_ms(tmp: Path, n: int = 200) -> dict:
    """What one durable commit costs on this disk: the floor of the audit log's per-request latency."""
    times = []
    with open(tmp / "fsync.probe", "wb") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 256)
            f.flush()
            os.fsync(f.fileno())
            times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return {"p50_ms": times[n // 2], "p99_ms": times[int(n * 0.99)]}


def main(argv: list[str] | None = None) -> None:
    from stillwatch.redact import command_line
    from stillwatch.runinfo import git_commit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--litellm", help="path to LiteLLM's `litellm` executable")
    parser.add_argument("--teacher", help="model directory for the local-backend part (default: tiny teacher)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of the local backend")
    parser.add_argument("--out", type=Path, default=None, help="default: gateway.json, or gateway-smoke.json")
    parser.add_argument("--serve-mock", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        serve_mock(args.serve_mock)
        return
    size = dict(latency_requests=200, warmup=20, throughput_requests=600, local_requests_1=8, local_requests_32=64,
                local_tokens=32, stall_seconds=3.0, stall_attackers=4) if args.smoke else \
        dict(latency_requests=2000, warmup=200, throughput_requests=3000, local_requests_1=32, local_requests_32=256,
             local_tokens=64, stall_seconds=10.0, stall_attackers=4)
    for k, v in size.items():
        setattr(args, k, v)
    print(f"gateway benchmark ({'smoke' if args.smoke else 'full'}): proxy peers against an instant mock upstream",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="stillwatch-bench-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "local").mkdir()
        fsync = fsync_ms(tmp)
        print(f"  fsync on this disk: p50 {fsync['p50_ms']:.2f} ms, p99 {fsync['p99_ms']:.2f} ms", flush=True)
        proxy = run_proxy_peers(args, tmp)
        local = None if args.skip_local else run_local(args, tmp)
    result = {
        "benchmark": "gateway", "command": command_line(argv, program="python " + os.path.relpath(__file__, ROOT)),
        "git_commit": git_commit(), "seed": args.seed, "smoke": args.smoke,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(), "fsync": fsync,
                    "load_average_at_end": os.getloadavg()},
        "setup": {"mix": [{"path": path, "body": body} for path, body in MIX],
                  "upstream": "instant mock (raw asyncio HTTP/1.1, keep-alive): a chat completion, a tool call for "
                              "a request with tools, a Responses API response for /v1/responses",
                  "client": "raw asyncio keep-alive HTTP client in the benchmark process",
                  "stillwatch": "stillwatch serve --upstream as shipped: bodies passed through as sent, key auth "
                                "(SQLite), quotas from the database (memory:// counters) with x-ratelimit headers, "
                                "online detection on, audit record committed (SQLite WAL, synchronous=NORMAL, "
                                "group commit) before each response",
                  "sizes": size, "concurrency": args.concurrency},
        "proxy": proxy, "local": local,
    }
    if proxy.get("stall"):
        result["stall"] = proxy["stall"]
    if args.out is None:
        args.out = RESULTS.with_name("gateway-smoke.json") if args.smoke else RESULTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cmp_ = proxy.get("comparison")
    if cmp_:
        print(f"stillwatch/LiteLLM: p50 overhead ratio {cmp_['p50_overhead_ratio']:.2f} (goal <= 0.33), "
              f"req/s ratio {cmp_['requests_per_s_ratio']:.2f} (goal >= 2)")
    print(f"wrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
