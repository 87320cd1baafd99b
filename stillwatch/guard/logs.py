"""Operators' logs: `serve --log-format json` writes every log line as one JSON object, and one line per
request with its request id, account, key id, route, status, latency and decision.

A key never appears (only its public id), and a prompt only with `--log-prompts`, cut to 200 characters and
JSON-escaped: prompts are hostile input, and a log is read by people and parsers.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

REQUESTS_LOGGER = "stillwatch.requests"
PROMPT_CHARS = 200


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and a request's fields when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
            timespec="milliseconds"), "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_config(level: str = "info", json_lines: bool = True) -> dict[str, Any]:
    """A logging dictConfig for uvicorn and stillwatch: JSON lines on stderr (or uvicorn's plain text)."""
    formatter = {"()": f"{__name__}.JSONFormatter"} if json_lines else {"format": "%(levelname)s %(name)s: %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "stillwatch")}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"default": formatter},
            "handlers": {"default": handler}, "loggers": loggers}


def _prompt_text(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, default=str)
    return text[:PROMPT_CHARS]


def request_fields(call: Any, method: str, path: str, status: int, latency_s: float,
                   with_prompt: bool = False) -> dict[str, Any]:
    """The fields of one request's log line (`call` is the guard's Call, or None before authentication)."""
    principal = getattr(call, "principal", None)
    fields: dict[str, Any] = {
        "event": "request", "request_id": getattr(call, "request_id", None), "method": method,
        "route": path[:200], "status": status, "latency_ms": round(latency_s * 1000.0, 3),
        "account": getattr(principal, "account_name", None), "key_id": getattr(principal, "key_id", None),
        "decision": getattr(call, "decision", None) or ("deny" if status == 401 else None),
    }
    if call is not None and getattr(call, "client_addr", None):
        fields["client"] = call.client_addr
    if with_prompt and call is not None and call.prompt is not None:
        fields["prompt"] = _prompt_text(call.prompt)
    return fields


def log_request(fields: dict[str, Any]) -> None:
    """Write one request's line (a structured record: JSONFormatter prints its fields)."""
    logging.getLogger(REQUESTS_LOGGER).info("request %s %s %s", fields.get("method"), fields.get("route"),
                                            fields.get("status"), extra={"fields": fields})
