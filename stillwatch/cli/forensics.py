"""`stillwatch watermark detect|keygen` and `stillwatch prove`: thin commands over stillwatch.forensics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from stillwatch.forensics.config import WatermarkConfig, default_of

# The watermark's defaults, from its one config object (forensics/config.py), never copied here.
GAMMA, DELTA, WIDTH, SEEDING = (default_of(WatermarkConfig, n) for n in ("gamma", "delta", "context_width",
                                                                         "seeding"))

watermark_app = typer.Typer(help="Watermark keys and detection.", no_args_is_help=True)

KEY_FILE_HELP = "File holding the watermark secret (default: the env STILLWATCH_WATERMARK_KEY)."


def _config(key_file: Optional[Path], gamma: float, delta: float, context_width: int, seeding: str):
    from stillwatch.errors import ConfigError
    from stillwatch.forensics.watermark import KEY_ENV, WatermarkConfig, load_watermark_key

    secret = load_watermark_key(key_file)
    if secret is None:
        raise ConfigError(f"no watermark key: set {KEY_ENV} or pass --watermark-key-file")
    return WatermarkConfig(key=secret, gamma=gamma, delta=delta, context_width=context_width, seeding=seeding)  # type: ignore[arg-type]


def _tokenizer(directory: Optional[Path], *fallbacks: Optional[str]):
    from stillwatch.builtin import resolve_model_dir
    from stillwatch.errors import ConfigError
    from stillwatch.tokenizer import load_tokenizer

    for candidate in (str(directory) if directory else None, *fallbacks, os.environ.get("STILLWATCH_TEACHER")):
        if candidate and resolve_model_dir(candidate).is_dir():
            try:
                return load_tokenizer(candidate), candidate
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load a tokenizer from {candidate}: {str(exc).splitlines()[0]}") from None
    raise ConfigError("detection needs the teacher's tokenizer: pass --tokenizer MODEL_DIR")


def detect_cmd(
    text: Optional[str] = typer.Option(None, "--text", help="A completion to score."),
    file: Optional[Path] = typer.Option(None, "--file", help="JSONL rows with completion/text and optional prompt "
                                        "(a harvest export), or a harvest store."),
    prompt: str = typer.Option("", "--prompt", help="The prompt of --text (never scored; seeds the first tokens)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Model directory with the teacher's "
                                             "tokenizer (default: the store's teacher, or $STILLWATCH_TEACHER)."),
    key_file: Optional[Path] = typer.Option(None, "--watermark-key-file", help=KEY_FILE_HELP),
    gamma: float = typer.Option(GAMMA, "--gamma", help="Green-list fraction γ used at generation."),
    delta: float = typer.Option(DELTA, "--delta", help="Green-list bias δ used at generation."),
    context_width: int = typer.Option(WIDTH, "--context-width", help="Watermark window width (tokens)."),
    seeding: str = typer.Option(SEEDING, "--seeding", help="lefthash or selfhash."),
    threshold: float = typer.Option(4.0, "--threshold", help="z-score at or above which a text is flagged."),
    keep_repeats: bool = typer.Option(False, "--keep-repeated-ngrams", help="Score repeated n-grams every time."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (one object per text) instead of a table."),
) -> None:
    """Score text for the watermark: green tokens, scored tokens, z, p-value and a verdict per text."""
    from stillwatch.errors import ConfigError
    from stillwatch.forensics.prove import _iter_raw, evidence_tokenizer_dir
    from stillwatch.forensics.watermark import detect

    if (text is None) == (file is None):
        raise ConfigError("give exactly one of --text TEXT or --file FILE.jsonl")
    config = _config(key_file, gamma, delta, context_width, seeding)
    store_tok = evidence_tokenizer_dir(file) if file is not None else None
    tok, _ = _tokenizer(tokenizer, store_tok)
    rows = [(prompt, text, None)] if text is not None else [(p, c, ids) for p, _, c, ids in _iter_raw(file, None)]
    results = []
    for p, completion, ids in rows:
        prompt_ids = tok(p, add_special_tokens=False)["input_ids"] if p else None
        ids = ids if ids is not None else tok(completion or "", add_special_tokens=False)["input_ids"]
        results.append(detect(ids, config, prompt_ids, ignore_repeated_ngrams=not keep_repeats,
                              threshold=threshold, vocab_size=len(tok)))
    if json_out:
        for r in results:
            print(json.dumps(r))
        return
    table = Table(title=f"watermark detection (key {config.fingerprint}, γ={gamma}, δ={delta}, width {context_width})")
    for col in ("#", "scored", "green", "green %", "z", "p-value", "watermarked"):
        table.add_column(col, justify="right")
    for i, r in enumerate(results):
        table.add_row(str(i), str(r["num_tokens_scored"]), str(r["num_green_tokens"]), f"{r['green_fraction']:.1%}",
                      f"{r['z_score']:.2f}", f"{r['p_value']:.2e}", "YES" if r["prediction"] else "no")
    Console().print(table)
    if len(results) > 1:
        flagged = sum(r["prediction"] for r in results)
        Console().print(f"{flagged} of {len(results)} texts flagged at z >= {threshold}")


def keygen_cmd(out: Path = typer.Option(..., "--out", help="File to write the new secret to (mode 600).")) -> None:
    """Write a fresh random watermark secret to a file that only you can read."""
    import secrets

    from stillwatch.errors import ConfigError

    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a watermark key")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    Console(stderr=True).print(f"wrote a new watermark key to {out}; keep it secret and backed up")


def prove_cmd(
    evidence: str = typer.Option(..., "--evidence", help="Harvest store, JSONL file, or the gateway's audit "
                                 "database URL (sqlite:///..., postgresql://...)."),
    suspect: Optional[Path] = typer.Option(None, "--suspect", help="Open suspect: a model directory (reading mode)."),
    suspect_endpoint: Optional[str] = typer.Option(None, "--suspect-endpoint", help="Closed suspect: an "
                                                   "OpenAI-compatible base URL."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Key for the endpoint."),
    served_model: str = typer.Option("stillwatch", "--served-model", help="Model name at --suspect-endpoint."),
    out: Path = typer.Option(Path("prove-report"), "--out", help="Directory for report.json and report.md/html."),
    fmt: str = typer.Option("md", "--format", help="md or html."),
    account: Optional[str] = typer.Option(None, "--account", help="Only what this gateway account was served."),
    task: Optional[str] = typer.Option(None, "--task", help="Only evidence from this task (e.g. story)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Model directory with the teacher's "
                                             "tokenizer (default: the store's teacher, else the suspect)."),
    control: Optional[list[Path]] = typer.Option(None, "--control", help="Reference model known not to be "
                                                 "derived (repeatable): must come out p >= 0.01."),
    key_file: Optional[Path] = typer.Option(None, "--watermark-key-file", help=KEY_FILE_HELP),
    gamma: Optional[float] = typer.Option(None, "--gamma", help=f"γ (default: the store's, else {GAMMA})."),
    delta: Optional[float] = typer.Option(None, "--delta", help=f"δ (default: the store's, else {DELTA})."),
    context_width: Optional[int] = typer.Option(None, "--context-width",
                                                help=f"Window (default: the store's, else {WIDTH})."),
    seeding: Optional[str] = typer.Option(None, "--seeding", help="lefthash or selfhash (default: the store's)."),
    alpha: float = typer.Option(1e-4, "--alpha", help="Significance level for the verdict 'derived'."),
    max_texts: int = typer.Option(4000, "--max-texts", min=1, help="Evidence texts read (open mode)."),
    max_prompts: int = typer.Option(400, "--max-prompts", min=1, help="Prompts sent to the suspect (closed mode)."),
    samples: int = typer.Option(4, "--samples-per-prompt", min=1, help="Completions per prompt (closed mode)."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature (closed mode)."),
    kgram_top: Optional[int] = typer.Option(None, "--kgram-top", min=1, help="Score only the N windows most "
                                            "frequent in the evidence (Sander et al.'s filter)."),
    per_window_top: Optional[int] = typer.Option(None, "--per-window-top", min=1, help="Score only each "
                                                 "window's M most chosen tokens instead of every distinct one "
                                                 "(stronger where texts offer few windows)."),
    logprobs: bool = typer.Option(False, "--logprobs", help="Closed mode: ask the API for log-probabilities and "
                                  "score the suspect's most likely token at each position (needs the teacher's "
                                  "tokenizer on the suspect; other samples are scored as written)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Test whether a suspect model was trained on your watermarked outputs; writes a report with controls."""
    from stillwatch.errors import ConfigError
    from stillwatch.forensics.prove import ProveSettings, evidence_tokenizer_dir, load_evidence, prove
    from stillwatch.cli.paths import check_writable_dir
    from stillwatch.forensics.report import write_report
    from stillwatch.redact import command_line

    if (suspect is None) == (suspect_endpoint is None):
        raise ConfigError("give exactly one of --suspect DIR or --suspect-endpoint URL")
    if fmt not in ("md", "html"):
        raise ConfigError("--format must be md or html")
    settings = ProveSettings(alpha=alpha, max_texts=max_texts, task=task, max_prompts=max_prompts,
                             samples_per_prompt=samples, temperature=temperature, kgram_top=kgram_top,
                             per_window_top=per_window_top, closed_logprobs=logprobs, seed=seed)
    check_writable_dir(out)  # before the test, not after it
    from stillwatch.forensics.prove import stored_watermark

    recorded = stored_watermark(evidence) or {}
    config = _config(key_file, gamma if gamma is not None else recorded.get("gamma", GAMMA),
                     delta if delta is not None else recorded.get("delta", DELTA),
                     context_width if context_width is not None else recorded.get("context_width", WIDTH),
                     seeding or recorded.get("seeding", SEEDING))
    if recorded.get("key_fingerprint") not in (None, config.fingerprint):
        raise ConfigError(f"this key (fingerprint {config.fingerprint}) is not the one that watermarked "
                          f"{evidence} (fingerprint {recorded['key_fingerprint']})")
    tok, tok_dir = _tokenizer(tokenizer, evidence_tokenizer_dir(evidence), str(suspect) if suspect else None)
    ev = load_evidence(evidence, tok, account=account, task=task)
    report = prove(ev, config, tok, suspect_dir=suspect, suspect_endpoint=suspect_endpoint, api_key=api_key,
                   control_dirs=control or (), settings=settings, endpoint_model=served_model, progress=True)
    report["tokenizer"] = tok_dir
    paths = write_report(report, out, fmt, command=command_line(program="stillwatch", secrets=[api_key]),  # type: ignore[arg-type]
                         secrets=[api_key])
    t = report["test"]
    Console().print(f"[bold]{report['verdict'].upper()}[/bold]: {report['reason']}")
    Console().print(f"{t['num_tuples_scored']} tuples scored, {t['num_green']} green "
                    f"({t['green_fraction']:.1%} vs γ={t['gamma']}), log10 p = {t['log10_p_value']:.2f}")
    Console().print("report: " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    """Add `watermark detect|keygen` and `prove`."""
    watermark_app.command("detect")(detect_cmd)
    watermark_app.command("keygen")(keygen_cmd)
    app.add_typer(watermark_app, name="watermark")
    app.command("prove")(prove_cmd)
