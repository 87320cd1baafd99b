"""`stillwatch serve`: the OpenAI-compatible gateway in front of a local teacher or an upstream server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from stillwatch.guard.settings import GuardSettings, default_text, env_name

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def setting(name: str, *flags: str, **kwargs) -> typer.models.OptionInfo:
    """A `serve` option for one GuardSettings field: its help, default and variable come from the field,
    so that the CLI never holds a second copy (an unset option leaves the field to the environment)."""
    field = GuardSettings.model_fields[name]
    default = default_text(name)
    shown = "" if default == "none" else f"default {default}; "
    # Parentheses, not brackets: Typer's rich help reads [...] as markup.
    return typer.Option(None, *flags, help=f"{field.description} ({shown}env {env_name(name)})",
                        show_default=False, **kwargs)


def _secret(path: Optional[Path], what: str) -> Optional[str]:
    from stillwatch.keyfiles import read_secret_file

    return None if path is None else read_secret_file(path, what)


def serve(
    teacher: Optional[Path] = setting("teacher", "--teacher"),
    upstream: Optional[str] = setting("upstream", "--upstream"),
    db: Optional[str] = setting("db_url", "--db"),
    host: Optional[str] = setting("host", "--host"),
    port: Optional[int] = setting("port", "--port"),
    admin_key_file: Optional[Path] = typer.Option(None, "--admin-key-file",
                                                  help="File holding the admin key (else env STILLWATCH_ADMIN_KEY)."),
    watermark_key_file: Optional[Path] = typer.Option(
        None, "--watermark-key-file", help="File holding the watermark secret (else env STILLWATCH_WATERMARK_KEY)."),
    upstream_key_file: Optional[Path] = typer.Option(
        None, "--upstream-key-file", help="File holding the upstream's API key (else STILLWATCH_UPSTREAM_API_KEY)."),
    quotas: Optional[Path] = setting("quotas_file", "--quotas"),
    rate_limit_storage: Optional[str] = setting("rate_limit_storage", "--rate-limit-storage"),
    served_model_name: Optional[str] = setting("served_model_name", "--served-model-name"),
    max_tokens_limit: Optional[int] = setting("max_tokens_limit", "--max-tokens-limit"),
    max_batch: Optional[int] = setting("max_batch", "--max-batch"),
    batch_wait_ms: Optional[float] = setting("batch_wait_ms", "--batch-wait-ms"),
    torch_threads: Optional[int] = setting("torch_threads", "--torch-threads"),
    antidistill_proxy: Optional[Path] = setting("antidistill_proxy", "--antidistill-proxy"),
    antidistill_all: Optional[bool] = setting("antidistill_all", "--antidistill-all/--no-antidistill-all"),
    policy: Optional[Path] = setting("policy_file", "--policy"),
    log_format: Optional[str] = setting("log_format", "--log-format"),
    log_prompts: Optional[bool] = setting("log_prompts", "--log-prompts/--no-log-prompts"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log each request line."),
) -> None:
    """Serve the OpenAI API with accounts, keys, quotas and a durable audit log."""
    import uvicorn

    from stillwatch.errors import ConfigError
    from stillwatch.guard.app import create_app
    from stillwatch.guard.backends import make_backend
    from stillwatch.guard.db import open_database
    from stillwatch.guard.logs import log_config
    from stillwatch.guard.quotas import Quotas
    from stillwatch.guard.settings import GuardSettings
    from stillwatch.redact import redact_url

    if teacher is not None and upstream is None:
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
             "antidistill_proxy": antidistill_proxy, "antidistill_all": antidistill_all,
             "policy_file": policy, "max_tokens_limit": max_tokens_limit, "log_format": log_format,
             "log_prompts": log_prompts}
    try:
        settings = GuardSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError, e.g. a malformed STILLWATCH_* variable
        raise ConfigError(f"bad setting: {_first_error(exc)}") from None
    settings.backend_kind()  # exactly one backend (the settings' own rule)
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
        structured = settings.log_format == "json"
        # JSON lines for every logger; the request line replaces uvicorn's access line.
        logging = {"log_config": log_config(log_level)} if structured else {}
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log and not structured,
                                               timeout_graceful_shutdown=10, proxy_headers=False, **logging))
        what = f"teacher {settings.teacher}" if settings.teacher else f"upstream {redact_url(settings.upstream or '')}"
        print(f"stillwatch: serving {what} as '{settings.served_model_name}' on "
              f"http://{_url_host(settings.host)}:{sock.getsockname()[1]}/v1 "
              f"(admin API {'on' if settings.admin_key else 'off'})", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the lifespan failed after the checks above; uvicorn has logged why
        raise ConfigError("the gateway did not start (see the log above)")


def _first_error(exc: ValueError) -> str:
    """pydantic's first complaint in one line: "field: message" (a model rule has no field)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc).splitlines()[0]


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
