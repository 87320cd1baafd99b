"""Teacher backends that all return `Completion` objects: LocalTeacher in process, OpenAITeacher over HTTP."""

from __future__ import annotations

from pathlib import Path

from stillwatch.errors import ConfigError
from stillwatch.teachers.base import Teacher
from stillwatch.teachers.completion import Completion, SamplingParams, ScoredText


def open_teacher(model_dir: str | Path | None = None, endpoint: str | None = None, api_key: str | None = None,
                 model_name: str = "stillwatch", tokenizer_dir: str | Path | None = None, **kwargs) -> Teacher:
    """A LocalTeacher for a model directory, or an OpenAITeacher for an endpoint URL."""
    if (model_dir is None) == (endpoint is None):
        raise ConfigError("give exactly one of a model directory or an endpoint URL")
    if model_dir is not None:
        from stillwatch.teachers.local import LocalTeacher

        return LocalTeacher.from_dir(model_dir, **kwargs)
    from stillwatch.teachers.openai_teacher import OpenAITeacher
    from stillwatch.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    return OpenAITeacher(endpoint, api_key or "none", model=model_name, tokenizer=tokenizer, **kwargs)


__all__ = ["Completion", "SamplingParams", "ScoredText", "Teacher", "open_teacher"]
