"""`stillwatch serve`: the OpenAI-compatible gateway in front of a local teacher or an upstream server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _secret(path: Optional[Path], what: str) -> Optional[str]:
    from stillwatch.keyfiles import read_secret_file

    return None if path is None else read_secret_file(path, what)


def serve(
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Serve this model directory in process."),
    upstream: Optional[str] = typer.Option(None, "--upstream",
                                           help="Or proxy this OpenAI-compatible base URL (e.g. http://HOST:8001/v1)."),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL (default: STILLWATCH_DB, else "
                                                        "sqlite:///stillwatch.db; postgresql://… for replicas)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", min=0, max=65535, help="Port (default 8000)."),
    admin_key_file: Optional[Path] = typer.Option(None, "--admin-key-file",
                                                  help="File holding the admin key (else env STILLWATCH_ADMIN_KEY)."),
    watermark_key_file: Optional[Path] = typer.Option(
        None, "--watermark-key-file", help="File holding the watermark secret (else env STILLWATCH_WATERMARK_KEY)."),
    upstream_key_file: Optional[Path] = typer.Option(
        None, "--upstream-key-file", help="File holding the upstream's API key (else STILLWATCH_UPSTREAM_API_KEY)."),
    quotas: Optional[Path] = typer.Option(None, "--quotas", help="Quotas TOML file (default: built-in limits)."),
    rate_limit_storage: Optional[str] = typer.Option(
        None, "--rate-limit-storage", help="memory:// (one replica) or redis://HOST:PORT (shared by replicas)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model id clients use."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="Most sequences per local model call."),
    batch_wait_ms: Optional[float] = typer.Option(None, "--batch-wait-ms", min=0.0,
                                                  help="How long to gather a batch (local backend)."),
    torch_threads: Optional[int] = typer.Option(None, "--torch-threads", min=1,
                                                help="torch intra-op threads for --teacher (default: torch's)."),
    antidistill_proxy: Optional[Path] = typer.Option(
        None, "--antidistill-proxy", help="Proxy student for antidistillation sampling of degraded accounts."),
    antidistill_all: bool = typer.Option(False, "--antidistill-all",
                                         help="Antidistillation sampling for every account, not only degraded ones."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Detection policy YAML (default: the built-in "
                                          "one); checked at start-up."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log each request line."),
) -> None:
    """Serve the OpenAI API with accounts, keys, quotas and a durable audit log."""
    import uvicorn

    from stillwatch.errors import ConfigError
    from stillwatch.guard.app import create_app
    from stillwatch.guard.backends import make_backend
    from stillwatch.guard.db import open_database
    from stillwatch.guard.quotas import Quotas
    from stillwatch.guard.settings import GuardSettings
    from stillwatch.redact import redact_url

    if (teacher is None) == (upstream is None):
        raise ConfigError("give exactly one of --teacher DIR or --upstream URL")
    if teacher is not None:
        from stillwatch.models import resolve_model_dir

        teacher = resolve_model_dir(teacher)
        if not (teacher / "config.json").is_file():
            raise ConfigError(f"{teacher} is not a model directory (no config.json)")
    given = {"teacher": teacher, "upstream": upstream, "db_url": db, "host": host, "port": port,
             "admin_key": _secret(admin_key_file, "admin key"),
             "watermark_key": _secret(watermark_key_file, "watermark key"),
             "upstream_api_key": _secret(upstream_key_file, "upstream key"), "quotas_file": quotas,
             "rate_limit_storage": rate_limit_storage, "served_model_name": served_model_name,
             "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "torch_threads": torch_threads,
             "antidistill_proxy": antidistill_proxy, "antidistill_all": antidistill_all or None,
             "policy_file": policy}
    try:
        settings = GuardSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError, e.g. a malformed STILLWATCH_* variable
        raise ConfigError(f"bad setting: {str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}") \
            from None
    if settings.watermark_key is not None and settings.upstream is not None:
        raise ConfigError("a watermark key applies to --teacher; an upstream watermarks (or not) itself")
    if settings.host not in LOOPBACK:
        print(f"stillwatch: warning: binding {settings.host}, reachable beyond this machine", file=sys.stderr)
    # Everything that can fail does so here, as one line, before the address is taken and "serving" said.
    open_database(settings.db_url, settings.sqlite_synchronous, migrate=True).dispose()
    Quotas(settings.rate_limit_storage, settings.quotas_file)  # a bad quotas file or storage URI
    if settings.detection:
        from stillwatch.detect.policy import load_policy

        load_policy(settings.policy_file)  # a bad policy file: PolicyError, one line
    sock = _bind(settings.host, settings.port)
    try:
        app = create_app(settings, backend=make_backend(settings))
        # proxy_headers off: the gateway itself believes X-Forwarded-For only from `trusted_proxies`.
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log,
                                               timeout_graceful_shutdown=10, proxy_headers=False))
        what = f"teacher {settings.teacher}" if settings.teacher else f"upstream {redact_url(settings.upstream or '')}"
        print(f"stillwatch: serving {what} as '{settings.served_model_name}' on "
              f"http://{_url_host(settings.host)}:{sock.getsockname()[1]}/v1 "
              f"(admin API {'on' if settings.admin_key else 'off'})", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the lifespan failed after the checks above; uvicorn has logged why
        raise ConfigError("the gateway did not start (see the log above)")


def _bind(host: str, port: int):  # -> socket.socket
    """A listening socket on host:port, or a one-line error (a busy port, an address not on this machine)."""
    import socket

    from stillwatch.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as exc:
        raise ConfigError(f"cannot bind {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def register(app: typer.Typer) -> None:
    """Add `stillwatch serve`."""
    app.command("serve")(serve)
