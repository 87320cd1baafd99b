"""One source of configuration: GuardSettings holds every default, help text and invariant; the watermark
it serves is the one it says; the CLI and the docs are generated from it; tests never read the shell's
STILLWATCH_* variables."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from stillwatch.errors import ConfigError
from stillwatch.guard.settings import GuardSettings, env_name, settings_docs

ROOT = Path(__file__).resolve().parents[1]


def test_the_settings_table_in_the_docs_is_generated_from_the_settings():
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == settings_docs(), \
        "docs/settings.md is stale: python -m stillwatch.guard.settings > docs/settings.md"
    documented = set(re.findall(r"`(STILLWATCH_[A-Z0-9_]+)`", settings_docs()))
    used = set()
    for path in (ROOT / "stillwatch").rglob("*.py"):
        used |= set(re.findall(r"STILLWATCH_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    assert used - documented == set(), "every STILLWATCH_* variable the code reads is documented"
    assert all(field.description for field in GuardSettings.model_fields.values())


def test_serve_options_take_help_and_defaults_from_the_fields(capsys):
    from stillwatch.cli.serve import serve
    import inspect

    options = {p.name: p.default for p in inspect.signature(serve).parameters.values()}
    assert GuardSettings.model_fields["max_batch"].description in options["max_batch"].help
    assert "default 64; env STILLWATCH_MAX_BATCH" in options["max_batch"].help
    assert options["max_batch"].default is None  # unset: the field (or its variable) decides
    assert env_name("db_url") == "STILLWATCH_DB"


def test_the_watermark_served_is_the_one_the_settings_say(untrained_tiny):
    from stillwatch.guard.hooks import load_hooks
    from stillwatch.teachers.local import LocalTeacher

    settings = GuardSettings(teacher=untrained_tiny, watermark_key="k" * 32, watermark_delta=1.0,
                             watermark_gamma=0.5, watermark_context_width=2)
    (processor,) = load_hooks(settings, LocalTeacher.from_dir(untrained_tiny)).always
    assert (processor.config.delta, processor.config.gamma, processor.config.context_width) == (1.0, 0.5, 2)
    assert (processor.bias, processor.greenlist_size, processor.context_width) == (1.0, processor.vocab_size // 2, 2)


def test_invariants_live_beside_the_fields(tmp_path):
    with pytest.raises(ValidationError, match="exactly one"):
        GuardSettings(teacher=tmp_path, upstream="http://127.0.0.1:1/v1")
    with pytest.raises(ValidationError, match="watermark key applies"):
        GuardSettings(upstream="http://127.0.0.1:1/v1", watermark_key="k" * 32)
    with pytest.raises(ValidationError, match="gamma"):
        GuardSettings(watermark_gamma=1.5)
    with pytest.raises(ValidationError, match="max_batch"):
        GuardSettings(max_batch=0)
    with pytest.raises(ConfigError, match="exactly one"):
        GuardSettings().backend_kind()
    assert GuardSettings(upstream="http://127.0.0.1:1/v1").backend_kind() == "upstream"


def test_the_shells_stillwatch_variables_do_not_reach_tests(monkeypatch):
    assert not [k for k in os.environ if k.startswith("STILLWATCH_") and not k.startswith("STILLWATCH_TEST_")]
    monkeypatch.setenv("STILLWATCH_MAX_N", "3")  # a test may still set one for itself
    assert GuardSettings().max_n == 3
