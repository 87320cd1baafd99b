"""`stillwatch harvest` (collect teacher completions into a store) and `stillwatch harvest export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

HELP = (
    "Collect teacher completions for distillation into a resumable harvest store (SQLite).\n\n"
    "Give a teacher (--teacher DIR, or --endpoint URL --api-key KEY) and prompts (--task NAME --n N, or "
    "--prompts FILE.jsonl|FILE.parquet with a 'prompt' or 'messages' column). Re-running the same command after "
    "a crash or a kill resumes: complete prompts are skipped and nothing is stored twice.\n\n"
    "`stillwatch harvest export STORE --out FILE.jsonl|FILE.parquet` writes the store for `datasets`; "
    "`stillwatch harvest merge OUT STORE...` combines shards."
)


def harvest(
    ctx: typer.Context,
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher model directory (in-process)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Or an OpenAI-compatible base URL (…/v1)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY",
                                          help="Key for --endpoint (env OPENAI_API_KEY)."),
    served_model: str = typer.Option("stillwatch", "--served-model", help="Model name at --endpoint."),
    api: str = typer.Option("chat", "--api", help="Endpoint API: chat or completions."),
    server: str = typer.Option("auto", "--server",
                               help="What --endpoint accepts: vllm (its token-id extension), openai (standard "
                                    "parameters only) or auto (ask GET /models once, and record the answer)."),
    tokenizer_dir: Optional[Path] = typer.Option(
        None, "--tokenizer", help="Teacher tokenizer for --endpoint: token ids and chat templates."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Built-in task for prompts (repeatable)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Prompts per --task."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Or a JSONL/Parquet prompt file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Harvest store to create or resume (SQLite file)."),
    logprobs: int = typer.Option(0, "--logprobs", min=0,
                                 help="Also keep the top-K logprobs per token (an endpoint's limit caps it: "
                                      "20 on OpenAI's chat API)."),
    concurrency: int = typer.Option(8, "--concurrency", min=1,
                                    help="Requests in flight (endpoint) or prompts per batch (in-process)."),
    samples: int = typer.Option(1, "--samples", min=1, help="Completions per prompt."),
    verify: bool = typer.Option(False, "--verify",
                                help="Keep only completions a verifier accepts (the built-in task scorers, or "
                                     "--verifier); the others are stored apart with a reason each."),
    verifier: Optional[str] = typer.Option(None, "--verifier", metavar="MODULE:FUNCTION",
                                           help="With --verify: a Python callable fn(prompt, completion) -> bool, "
                                                "as module:function or path/to/file.py:function."),
    vote: bool = typer.Option(False, "--vote",
                              help="With --samples N: keep only the samples whose answer has the majority."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling threshold."),
    max_tokens: int = typer.Option(96, "--max-tokens", min=1, help="Most tokens per completion."),
    seed: int = typer.Option(0, "--seed", help="Seed for task prompts and, per prompt, for sampling."),
    watermark_key_file: Optional[Path] = typer.Option(
        None, "--watermark-key-file",
        help="Watermark the in-process teacher with this secret (else env STILLWATCH_WATERMARK_KEY)."),
    retries: int = typer.Option(2, "--retries", min=0, help="Extra tries per prompt after the client's own."),
    max_failures: int = typer.Option(10, "--max-failures", min=1,
                                     help="Stop after this many prompts fail in a row."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N",
                                        help="Harvest only every N-th prompt from the I-th (0-based): one shard "
                                             "per process or endpoint, into one shared store or merged later."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    from stillwatch.errors import ConfigError, TeacherError
    from stillwatch.harvest import HarvestStore, file_source, harvest as run_harvest, task_source, tokenizer_info
    from stillwatch.harvest.store import discard_store
    from stillwatch.teachers.completion import SamplingParams

    if ctx.invoked_subcommand is not None:
        return
    if (teacher is None) == (endpoint is None):
        raise ConfigError("give exactly one of --teacher DIR or --endpoint URL")
    if endpoint is not None and not api_key:
        raise ConfigError("--endpoint needs --api-key (or env OPENAI_API_KEY)")
    if (task is None) == (prompts is None):
        raise ConfigError("give exactly one of --task NAME --n N or --prompts FILE")
    if task is not None and n is None:
        raise ConfigError("--task needs --n N (prompts per task)")
    if out is None:
        raise ConfigError("--out STORE is required")
    if api not in ("chat", "completions"):
        raise ConfigError(f"--api must be chat or completions, not {api!r}")
    if teacher is not None and server != "auto":
        raise ConfigError("--server describes an --endpoint; an in-process --teacher takes every parameter")
    if endpoint is not None and watermark_key_file is not None:
        raise ConfigError("--watermark-key-file applies to an in-process --teacher; an endpoint watermarks itself")

    if verifier is not None and not verify:
        raise ConfigError("--verifier names the check for --verify; give --verify too")
    if vote and samples < 2:
        raise ConfigError("--vote needs --samples N with N >= 2 (one sample has nothing to vote against)")
    selector = None
    if verify or vote:
        from stillwatch.harvest.select import Selector

        selector = Selector(verify=verify, verifier=verifier, vote=vote)
    shard_spec = _parse_shard(shard) if shard is not None else None
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=samples, seed=seed,
                            top_logprobs=logprobs)
    if teacher is not None:
        subject, info = _local_teacher(teacher, watermark_key_file)
    else:
        subject, info = _endpoint_teacher(endpoint, api_key, served_model, api, tokenizer_dir, concurrency, server)
    tokenizer = getattr(subject, "tokenizer", None)
    # A chat endpoint applies its own template, so messages are only joined here; else we apply the teacher's.
    renderer = tokenizer if teacher is not None or api == "completions" else None
    source = task_source(task, n, seed) if task is not None else file_source(prompts, renderer)
    if shard_spec is not None:
        source = source.shard(*shard_spec)
    if tokenizer is not None:
        info["tokenizer"] = tokenizer_info(tokenizer)
    new_store = not out.exists()
    try:
        with HarvestStore(out, create=True) as store:
            store.record_teacher(subject.name, info)
            print(f"harvest: {source.describe} from {subject.name} into {out}"
                  + (" (watermarked)" if "watermark" in info else ""), file=sys.stderr)
            result = run_harvest(subject, source, store, params, concurrency=concurrency, total=source.total,
                                 progress=progress, retries=retries, max_consecutive_failures=max_failures,
                                 selector=selector)
            selection = store.meta().get("selection")
            empty = store.count() == 0
    except BaseException as exc:
        # A failed first run leaves no empty store behind to be mistaken for a harvest (rows are always kept).
        if new_store and out.exists() and _empty(out):
            discard_store(out)
            if isinstance(exc, TeacherError):
                reason = str(exc).split(";")[0]
                raise TeacherError(f"{reason}; nothing was collected, so no store was left at {out}") from None
        raise
    if new_store and empty and result.prompts_failed:
        discard_store(out)
        raise TeacherError(f"every prompt failed ({result.prompts_failed}); no store was written at {out}")
    rate = result.completion_tokens / result.seconds if result.seconds else 0.0
    print(f"harvested {result.rows_added} new rows from {result.prompts_done} prompts in "
          f"{result.seconds:.1f} s ({rate:,.0f} tok/s); {result.prompts_skipped} prompts were already complete; "
          f"{out} holds {result.rows_total} rows")
    limits = getattr(subject, "rate_stats", None)
    if limits is not None and limits.limited:
        print(f"rate limits: {limits.describe(concurrency)}")
    if selection is not None:
        dropped = ", ".join(f"{n} {kind}" for kind, n in selection["dropped"].items()) or "none"
        print(f"kept {selection['kept']} samples; dropped: {dropped} (see the store's dropped table)")
    if result.prompts_failed:
        raise TeacherError(f"{result.prompts_failed} prompts failed after every retry; {result.rows_total} rows "
                           f"are kept in {out}; re-run the same command to retry them")


def _empty(path: Path) -> bool:
    from stillwatch.harvest import HarvestStore

    try:
        with HarvestStore(path) as store:
            return store.count() == 0
    except Exception:  # noqa: BLE001 - unreadable: leave it for a person to look at
        return False


def _parse_shard(text: str) -> tuple[int, int]:
    from stillwatch.errors import ConfigError

    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(count) >= 1):
        raise ConfigError(f"--shard takes I/N with 0 <= I < N, not {text!r}")
    return int(index), int(count)


def _local_teacher(model_dir: Path, key_file: Optional[Path]):
    """A LocalTeacher, watermarked when a key is configured, and what the store records of it."""
    from stillwatch.models import read_card, resolve_model_dir
    from stillwatch.teachers.local import LocalTeacher

    model_dir = resolve_model_dir(model_dir)  # the store names the real directory, which `prove` reads later
    info: dict = {"model_dir": str(model_dir.resolve())}
    card = read_card(model_dir)
    if card:
        info["teacher_card"] = {k: card.get(k) for k in ("kind", "preset", "parameters") if k in card}
    processors = []
    key = _watermark_key(key_file)
    subject = LocalTeacher.from_dir(model_dir)
    if key is not None:
        from stillwatch.forensics.watermark import WatermarkConfig, watermark_processor

        config = WatermarkConfig(key=key)
        processors.append(watermark_processor(config, int(subject.model.config.vocab_size)))
        info["watermark"] = config.public_dict()
    subject.logits_processors.extend(processors)
    return subject, info


def _watermark_key(key_file: Optional[Path]) -> str | None:
    """The secret from --watermark-key-file or env STILLWATCH_WATERMARK_KEY; None when neither is set."""
    import os

    if key_file is None and not os.environ.get("STILLWATCH_WATERMARK_KEY", "").strip():
        return None  # no key: do not import the forensics stack at all
    from stillwatch.forensics.watermark import load_watermark_key

    return load_watermark_key(key_file)


def _endpoint_teacher(endpoint: str, api_key: str, served_model: str, api: str, tokenizer_dir: Optional[Path],
                      concurrency: int, server: str):
    from stillwatch.teachers.openai_teacher import OpenAITeacher

    tokenizer = None
    if tokenizer_dir is not None:
        from stillwatch.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
    subject = OpenAITeacher(endpoint, api_key, model=served_model, tokenizer=tokenizer, api=api,
                            concurrency=concurrency, server=server)  # type: ignore[arg-type]
    from stillwatch.redact import redact_url

    return subject, {"endpoint": redact_url(endpoint), "served_model": served_model, "api": api}


def export(
    store: Path = typer.Argument(..., help="Harvest store to read."),
    out: Path = typer.Option(..., "--out", help="FILE.jsonl or FILE.parquet to write."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Rows in memory at a time."),
) -> None:
    """Write a harvest store as JSONL or Parquet that `datasets.load_dataset` reads (streamed in chunks)."""
    from stillwatch.harvest import HarvestStore
    from stillwatch.harvest import export as run_export

    with HarvestStore(store) as source:
        rows = run_export(source, out, batch_size=batch_size)
    print(f"wrote {rows} rows to {out}")


def merge(
    out: Path = typer.Argument(..., help="Store to merge into (created when missing)."),
    sources: list[Path] = typer.Argument(..., help="Stores to copy rows from (for example one per shard)."),
) -> None:
    """Merge harvest stores (say, shards harvested on several machines) into one, without duplicates."""
    from stillwatch.harvest import HarvestStore

    with HarvestStore(out, create=True) as target:
        for source in sources:
            added = target.merge_from(source)
            print(f"{source}: {added} new rows")
        print(f"{out} holds {target.count()} rows")


def register(app: typer.Typer) -> None:
    """Add `harvest` (a command with options that is also the group of `harvest export`)."""
    group = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=True, add_completion=False,
                        subcommand_metavar="[export | merge] ...")
    group.callback()(harvest)
    group.command("export")(export)
    group.command("merge")(merge)
    app.add_typer(group, name="harvest")
