"""Secrets kept in files (admin key, watermark key, upstream key): read once, with a clear error."""

from __future__ import annotations

from pathlib import Path

from stillwatch.errors import ConfigError


def read_secret_file(path: Path | str, what: str) -> str:
    """The stripped contents of `path`; a missing, unreadable or empty file is a ConfigError naming `what`."""
    path = Path(path)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value
