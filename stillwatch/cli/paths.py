"""Output paths checked before the work that fills them, so a bad path fails in a second, not after an hour."""

from __future__ import annotations

import os
from pathlib import Path

from stillwatch.errors import ConfigError


def check_writable_file(path: Path) -> None:
    """Refuse a file path that cannot be written: a directory, or a parent that is missing or read-only."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is not a directory")
    if path.exists() and not os.access(path, os.W_OK) or not path.exists() and not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: permission denied")


def check_writable_dir(path: Path) -> None:
    """Refuse a directory path that cannot be created or written (a file, or under a read-only parent)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: permission denied")
