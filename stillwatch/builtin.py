"""Where the shipped default teacher lives, and the word `builtin` that names it wherever a model goes."""

from __future__ import annotations

from pathlib import Path

# The default teacher, as `stillwatch teach` makes it, ships inside the package: the demo and the benchmarks
# start from it without training. Any command that takes a model or tokenizer directory accepts `builtin`.
BUILTIN = "builtin"
BUILTIN_TEACHER_DIR = Path(__file__).resolve().parent / "assets" / "teacher"


def resolve_model_dir(path: str | Path) -> Path:
    """`path`, or the shipped default teacher when `path` is `builtin` and no directory of that name exists."""
    path = Path(path)
    return BUILTIN_TEACHER_DIR if str(path) == BUILTIN and not path.exists() else path
