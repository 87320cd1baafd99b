"""Shared fixtures: the tiny teacher is trained once per source version and cached."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

# Tests run servers and subprocesses beside the test process: one torch thread each, or small CPUs thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# The files whose change must retrain the cached teacher.
_TEACHER_SOURCES = ["tasks/base.py", "tasks/arithmetic.py", "tasks/story.py", "tokenizer.py", "models.py",
                    "teach.py", "train.py", "data.py"]


@pytest.fixture(scope="session", autouse=True)
def _no_shell_settings():
    """Tests never read the user's STILLWATCH_* variables (a shell with STILLWATCH_DB or an admin key set
    would change what they test); STILLWATCH_TEST_* say where the test services are, and stay. Session-wide,
    so that module fixtures building settings see a clean environment too; tests set variables with
    monkeypatch, which restores them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("STILLWATCH_") and not k.startswith("STILLWATCH_TEST_")]:
            patch.delenv(name)
        yield


def _source_hash() -> str:
    digest = hashlib.sha256()
    for rel in _TEACHER_SOURCES:
        digest.update((ROOT / "stillwatch" / rel).read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_teacher() -> Path:
    """A trained `tiny` teacher directory (read-only: copy it before changing anything)."""
    from stillwatch.teach import teach

    cache = Path(os.environ.get("STILLWATCH_TEST_CACHE", ROOT / ".cache" / "tests"))
    path = cache / f"tiny-teacher-{_source_hash()}"
    if not (path / "stillwatch_card.json").is_file():
        teach(path, preset="tiny", seed=0, eval_n=50, progress=False)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in this process: oversubscribed threads make small models ~10x slower on 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def untrained_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` model with random weights (context 256): serving or loading it needs no training."""
    from stillwatch.models import build_model, save_model
    from stillwatch.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("untrained") / "tiny"
    tokenizer = train_tokenizer()
    save_model(build_model("tiny", tokenizer, seed=0), tokenizer, path, {"kind": "test"})
    return path
