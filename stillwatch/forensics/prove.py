"""`prove`: test whether a suspect model was trained on watermarked outputs, with controls, and write the evidence.

Evidence (what was served) comes from a harvest store, a JSONL file, or the gateway's audit database, optionally
for one account. The suspect is an open model directory (reading mode) or an OpenAI-compatible endpoint (closed
mode). Three controls guard against a false accusation:

1. the evidence itself must carry the key's watermark (otherwise the key or the evidence is wrong);
2. the very same scored tuples, re-scored under several random keys, must not look significant: the tuple
   selection never depends on the key, so any structure found under other keys is a flaw of the test;
3. optional reference models (`control_dirs`) known not to have seen the evidence are tested the same way.

The verdict is "derived" only when p < alpha and every control passes.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from transformers import PreTrainedTokenizerBase

from stillwatch.errors import ConfigError, TokenizerMismatchError
from stillwatch.progress import LoggedProgress
from stillwatch.forensics.radioactivity import (EvidenceText, TupleTape, frequent_windows, generation_tape,
                                                radioactivity_test, reading_tape)
from stillwatch.forensics.watermark import WatermarkConfig, detect

DB_PREFIXES = ("sqlite:", "postgresql:", "postgres:", "postgresql+psycopg:")


@dataclass
class Evidence:
    """The watermarked texts that were served, tokenized with the teacher's tokenizer."""

    texts: list[EvidenceText]
    source: str
    account: str | None = None
    teacher: str | None = None
    tokenizer_dir: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class ProveSettings:
    """How `prove` tests: significance, controls, sample sizes and the closed-mode sampling."""

    alpha: float = 1e-4
    control_keys: int = 8
    max_texts: int = 4000
    task: str | None = None
    batch_size: int = 32
    # closed mode
    max_prompts: int = 400
    samples_per_prompt: int = 4
    temperature: float = 1.0
    max_tokens: int = 96
    kgram_top: int | None = None
    # None: every distinct (window, token) tuple (Sander et al.); m: each window's m most chosen tokens
    per_window_top: int | None = None
    # closed mode: ask the API for log-probabilities and score its most likely token at each generated position
    closed_logprobs: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha < 1.0):
            raise ConfigError(f"alpha is a significance level between 0 and 1, not {self.alpha}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ConfigError(f"temperature must be 0 or more, not {self.temperature}")
        for name in ("control_keys", "max_texts", "batch_size", "max_prompts", "samples_per_prompt", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("kgram_top", "per_window_top"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")


def is_db_url(source: str | Path) -> bool:
    """True for a database URL (the gateway's audit log) rather than a file path."""
    return isinstance(source, str) and source.startswith(DB_PREFIXES)


def evidence_tokenizer_dir(source: str | Path) -> str | None:
    """The teacher directory a harvest store records, when it is a local model directory that exists."""
    if is_db_url(source) or str(source).endswith(".jsonl") or not Path(source).is_file():
        return None
    from stillwatch.harvest.store import HarvestStore

    with HarvestStore(source) as store:
        meta = store.meta()
    for candidate in (meta.get("model_dir"), meta.get("name_or_path"), meta.get("teacher")):
        if candidate:
            path = Path(str(candidate).removeprefix("local:"))
            if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
                return str(path)
    return None


def stored_watermark(source: str | Path) -> dict | None:
    """The public watermark settings a harvest store recorded (γ, δ, width, seeding, key fingerprint), if any."""
    if is_db_url(source) or str(source).endswith(".jsonl") or not Path(source).is_file():
        return None
    from stillwatch.harvest.store import HarvestStore

    with HarvestStore(source) as store:
        return store.meta().get("watermark")


def _render_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Audit prompts of chat requests are stored as JSON messages: render them as the backend did."""
    if prompt.startswith("["):
        try:
            messages = json.loads(prompt)
        except json.JSONDecodeError:
            return prompt
        if isinstance(messages, list) and all(isinstance(m, dict) and "content" in m for m in messages):
            if getattr(tokenizer, "chat_template", None):
                return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return "\n".join(str(m["content"]) for m in messages) + "\n"
        if isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
            return messages[0]
    return prompt


def _completion_texts(completion: str) -> list[str]:
    if completion.startswith("["):
        try:
            values = json.loads(completion)
        except json.JSONDecodeError:
            return [completion]
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            return values
        if isinstance(values, list) and all(isinstance(v, dict) and "text" in v for v in values):
            return [str(v["text"]) for v in values]
    return [completion]


def _iter_raw(source: str | Path, account: str | None) -> Iterator[tuple[str, str | None, str | None, list[int] | None]]:
    """(prompt, task, completion text, completion token ids or None) from any evidence source."""
    if is_db_url(source):
        try:
            from stillwatch.guard.audit import iter_served
            from stillwatch.guard.db import open_database
        except ImportError as exc:
            raise ConfigError(f"reading a gateway database needs the guard package: {exc}") from None
        engine = open_database(str(source), migrate=False)  # evidence is read, never created or migrated
        try:
            for record in iter_served(engine, account=account):
                if record.get("prompt") is None or record.get("completion") is None:
                    continue  # purged by retention: only hashes are left
                for text in _completion_texts(record["completion"]):
                    yield record["prompt"], None, text, None
        finally:
            engine.dispose()
        return
    if account is not None:
        raise ConfigError("--account applies to a gateway database, not to a harvest store or file")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"no evidence at {path}")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    completion = row.get("completion", row.get("text"))
                    ids = None
                    if isinstance(completion, dict):
                        ids, completion = completion.get("token_ids"), completion.get("text")
                    yield str(row.get("prompt", "")), row.get("task"), str(completion), ids
                except (json.JSONDecodeError, AttributeError, TypeError) as exc:
                    raise ConfigError(f"{path}:{number}: not an evidence row ({exc})") from None
        return
    from stillwatch.harvest.store import HarvestStore

    with HarvestStore(path) as store:
        for row in store.iter_rows(with_top=False):
            yield row.prompt, row.task, row.completion.text, list(row.completion.token_ids)


def load_evidence(source: str | Path, tokenizer: PreTrainedTokenizerBase, account: str | None = None,
                  task: str | None = None, limit: int | None = None) -> Evidence:
    """Read the served texts from a harvest store, a JSONL file or a gateway DB URL, as teacher token ids."""
    texts: list[EvidenceText] = []
    for prompt, row_task, completion, ids in _iter_raw(source, account):
        if task is not None and row_task not in (task, None):
            continue
        prompt = _render_prompt(prompt, tokenizer)  # chat requests are audited as JSON messages
        if task is not None and row_task is None and not prompt.startswith(f"{task}:"):
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids is None:
            ids = tokenizer(completion or "", add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        texts.append(EvidenceText(tuple(prompt_ids), tuple(int(t) for t in ids), row_task))
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise ConfigError(f"no served texts in {source}" + (f" for account {account!r}" if account else ""))
    meta: dict = {}
    if not is_db_url(source) and not str(source).endswith(".jsonl"):
        from stillwatch.harvest.store import HarvestStore

        with HarvestStore(source) as store:
            meta = store.meta()
    return Evidence(texts=texts, source=str(source), account=account, teacher=meta.get("teacher"), meta=meta)


def evidence_check(evidence: Evidence, config: WatermarkConfig, vocab_size: int) -> dict:
    """Control 1: pooled watermark detection over the evidence (each text de-duplicated on its own)."""
    scored = green = flagged = 0
    for x in evidence.texts:
        r = detect(x.completion_ids, config, x.prompt_ids, vocab_size=vocab_size)
        scored, green = scored + r["num_tokens_scored"], green + r["num_green_tokens"]
        flagged += r["prediction"]
    from stillwatch.forensics.watermark import binomial_p_value, z_score

    z = z_score(green, scored, config.gamma)
    return {"texts": len(evidence.texts), "num_tokens_scored": scored, "num_green_tokens": green,
            "green_fraction": green / scored if scored else 0.0, "z_score": z,
            "p_value": binomial_p_value(green, scored, config.gamma), "texts_flagged": flagged,
            "passed": z >= 4.0}


def wrong_key_controls(tape: TupleTape, config: WatermarkConfig, vocab_size: int, count: int, mode: str,
                       alpha: float) -> dict:
    """Control 2: the same tuples scored under `count` random keys; p-values should look uniform."""
    p_values = []
    for _ in range(count):
        other = WatermarkConfig(key=secrets.token_hex(16), gamma=config.gamma, delta=config.delta,
                                context_width=config.context_width, seeding=config.seeding)
        p_values.append(radioactivity_test(tape, other, vocab_size, mode, sample=0).p_value)
    return {"keys": count, "p_values": p_values, "min_p_value": min(p_values) if p_values else None,
            "passed": all(p >= alpha for p in p_values)}


def _check_vocab(suspect_tokenizer: PreTrainedTokenizerBase, tokenizer: PreTrainedTokenizerBase) -> None:
    if suspect_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise TokenizerMismatchError("reading mode needs a suspect with the teacher's tokenizer; "
                                     "test a model with another tokenizer through its API (--suspect-endpoint)")


def open_tape(model_dir: str | Path, evidence: Evidence, config: WatermarkConfig,
              tokenizer: PreTrainedTokenizerBase, settings: ProveSettings,
              on_batch: Callable[[int], None] | None = None) -> TupleTape:
    """Reading mode on a model directory."""
    from stillwatch.models import load_model

    model, suspect_tokenizer = load_model(model_dir)
    _check_vocab(suspect_tokenizer, tokenizer)
    texts = evidence.texts[:settings.max_texts]
    kfilter = frequent_windows(texts, config.window, settings.kgram_top) if settings.kgram_top else None
    return reading_tape(model, texts, config.window, kfilter, settings.batch_size,
                        pad_token_id=tokenizer.pad_token_id or 0, per_window_top=settings.per_window_top,
                        on_batch=on_batch)


def closed_tape(endpoint: str, api_key: str | None, evidence: Evidence, config: WatermarkConfig,
                tokenizer: PreTrainedTokenizerBase, settings: ProveSettings, model_name: str = "stillwatch",
                teacher: Any = None) -> tuple[TupleTape, dict]:
    """Closed mode: sample the suspect on the evidence prompts through its API and score what it wrote.

    Generated text is re-tokenized with the teacher's tokenizer, so the suspect may use any tokenizer.
    `teacher` may be any object with the Teacher protocol (tests pass a LocalTeacher).
    """
    from stillwatch.teachers.completion import SamplingParams

    if teacher is None:
        from stillwatch.teachers.openai_teacher import OpenAITeacher

        teacher = OpenAITeacher(endpoint, api_key or "none", model=model_name, api="completions")
    prompts = list(dict.fromkeys(tokenizer.decode(x.prompt_ids) for x in evidence.texts))[:settings.max_prompts]
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                            n=settings.samples_per_prompt, seed=settings.seed,
                            top_logprobs=5 if settings.closed_logprobs else 0)

    async def run() -> list:
        try:
            return await teacher.complete(prompts, params)
        finally:
            await teacher.aclose()

    outputs = asyncio.run(run())
    generations = []
    for prompt, samples in zip(prompts, outputs):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in samples:
            ids = tokenizer(c.text, add_special_tokens=False)["input_ids"]
            generations.append((prompt_ids, ids, _top1(c, ids) if settings.closed_logprobs else None))
    kfilter = frequent_windows(evidence.texts, config.window, settings.kgram_top) if settings.kgram_top else None
    info = {"prompts": len(prompts), "samples_per_prompt": settings.samples_per_prompt,
            "temperature": settings.temperature, "max_tokens": settings.max_tokens,
            "generated_tokens": sum(len(g) for _, g, _ in generations),
            "samples_scored_by_logprobs": sum(top1 is not None for _, _, top1 in generations)}
    return generation_tape(generations, config.window, kfilter, settings.per_window_top), info


def _top1(completion: Any, teacher_ids: list[int]) -> list[int] | None:
    """The suspect's most likely token at each position, when its tokens are the teacher's (else None)."""
    top = completion.top_logprobs
    if not top or list(completion.token_ids) != teacher_ids or len(top) != len(teacher_ids):
        return None  # another tokenizer: positions do not line up, score the written tokens instead
    return [max(pos, key=lambda pair: pair[1])[0] if pos else token for pos, token in zip(top, teacher_ids)]


def prove(evidence: Evidence, config: WatermarkConfig, tokenizer: PreTrainedTokenizerBase,
          suspect_dir: str | Path | None = None, suspect_endpoint: str | None = None, api_key: str | None = None,
          control_dirs: Sequence[str | Path] = (), settings: ProveSettings | None = None,
          endpoint_model: str = "stillwatch", suspect_teacher: Any = None, progress: bool = False) -> dict:
    """Run the radioactivity test on one suspect with its controls; returns the report as a dict."""
    settings = settings or ProveSettings()
    if (suspect_dir is None) == (suspect_endpoint is None and suspect_teacher is None):
        raise ConfigError("give exactly one of --suspect DIR or --suspect-endpoint URL")
    texts = len(evidence.texts[:settings.max_texts])
    with LoggedProgress(TextColumn("prove: {task.fields[reading]}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), disable=not progress,
                        transient=True) as bar:
        job = bar.add_task("prove", total=texts * (1 + len(control_dirs)), reading="the suspect")
        return _prove(evidence, config, tokenizer, suspect_dir, suspect_endpoint, api_key, control_dirs, settings,
                      endpoint_model, suspect_teacher,
                      lambda reading: bar.update(job, reading=reading), lambda n: bar.update(job, advance=n))


def _prove(evidence: Evidence, config: WatermarkConfig, tokenizer: PreTrainedTokenizerBase,
           suspect_dir: str | Path | None, suspect_endpoint: str | None, api_key: str | None,
           control_dirs: Sequence[str | Path], settings: ProveSettings, endpoint_model: str, suspect_teacher: Any,
           reading: Callable[[str], None], advance: Callable[[int], None]) -> dict:
    vocab_size = len(tokenizer)
    began = time.time()
    check = evidence_check(evidence, config, vocab_size)
    mode = "open" if suspect_dir is not None else "closed"
    sampling = None
    if mode == "open":
        tape = open_tape(suspect_dir, evidence, config, tokenizer, settings, advance)
    else:
        tape, sampling = closed_tape(suspect_endpoint or "", api_key, evidence, config, tokenizer, settings,
                                     endpoint_model, suspect_teacher)
        advance(len(evidence.texts[:settings.max_texts]))
    result = radioactivity_test(tape, config, vocab_size, mode)
    keys = wrong_key_controls(tape, config, vocab_size, settings.control_keys, mode, settings.alpha)
    references = []
    for control in control_dirs:
        reading(f"control {Path(control).name}")
        ctape = open_tape(control, evidence, config, tokenizer, settings, advance)
        r = radioactivity_test(ctape, config, vocab_size, "open", sample=0)
        references.append({"model": str(control), "p_value": r.p_value, "log10_p_value": r.log10_p_value,
                           "num_tuples_scored": r.num_tuples_scored, "passed": r.p_value >= 0.01})
    controls_ok = check["passed"] and keys["passed"] and all(c["passed"] for c in references)
    if not check["passed"]:
        verdict = "inconclusive"
        reason = "the evidence does not carry this key's watermark: wrong key or wrong evidence"
    elif not controls_ok:
        verdict = "inconclusive"
        reason = "a control failed, so the test cannot be trusted on this data"
    elif result.p_value < settings.alpha:
        verdict = "derived"
        reason = f"p = {result.p_value:.3g} < alpha = {settings.alpha:g} with every control passing"
    else:
        verdict = "not shown"
        reason = f"p = {result.p_value:.3g} >= alpha = {settings.alpha:g}: no evidence of training on these outputs"
    return {
        "verdict": verdict,
        "reason": reason,
        "suspect": str(suspect_dir or suspect_endpoint or getattr(suspect_teacher, "name", "suspect")),
        "mode": mode,
        "alpha": settings.alpha,
        "method": METHOD[mode] + (PER_WINDOW.format(m=settings.per_window_top) if settings.per_window_top else "")
        + (LOGPROBS if mode == "closed" and settings.closed_logprobs else ""),
        "watermark": config.public_dict(),
        "evidence": {"source": evidence.source, "account": evidence.account, "teacher": evidence.teacher,
                     "texts": len(evidence.texts), "texts_used": min(len(evidence.texts), settings.max_texts)
                     if mode == "open" else None},
        "sampling": sampling,
        "test": result.to_dict(),
        "controls": {"evidence_watermark": check, "wrong_keys": keys, "reference_models": references},
        "settings": {k: v for k, v in settings.__dict__.items()},
        "seconds": round(time.time() - began, 2),
    }


METHOD = {
    "open": ("Reading mode (Sander et al. 2024, open model): each watermarked evidence text is teacher-forced through "
             "the suspect; at every completion position its top-1 next-token prediction is paired with the watermark "
             "window taken from the text. Tuples are de-duplicated, windows that occur in the text's prompt or earlier "
             "in the same text are skipped, and the number of green tuples is tested against Binomial(N, gamma) "
             "with an exact tail."),
    "closed": ("Closed model (Sander et al. 2024): the suspect is sampled through its API on the evidence prompts; "
               "its generated tokens are re-tokenized with the teacher's tokenizer and paired with their watermark "
               "windows. Tuples are de-duplicated, windows that occur in the prompt are skipped, and the number of "
               "green tuples is tested against Binomial(N, gamma) with an exact tail."),
}
PER_WINDOW = (" Per-window votes: instead of every distinct tuple, each window contributes only the {m} token(s) "
              "the suspect chose most often after it (ties broken by token id); the choice is made before any green "
              "list is consulted, so under H0 each scored tuple is still green with probability gamma.")
LOGPROBS = (" Log-probabilities: where the API returned them in the teacher's tokens, each position is scored with "
            "the suspect's most likely token there rather than the one it sampled.")
