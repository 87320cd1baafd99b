"""`distill(...)`: train a student from a harvest store (and optionally a live teacher) on the shared loop.

Losses: `sft` (sequence-level KD on the teacher's text), `kd` (sparse top-k logit KD from the harvest, or
white-box KD on full logits of an in-process teacher), `on-policy` (GKD: student samples scored by the
teacher, mixed with harvested data by lambda). The output is a normal HF model directory with a card.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedType
from transformers import PreTrainedTokenizerBase

from stillwatch.data import IGNORE
from stillwatch.distill.align import CONTINUATION_ROWS, Aligner, StudentVocab, recorded_vocabulary
from stillwatch.distill.data import (BatchMaker, RowSource, check_tokenizers, completion_start, forward_logits, shift,
                                     tokenizer_fingerprint)
from stillwatch.distill.losses import (Divergence, divergence_beta, full_kd_loss, sparse_kd_loss,
                                       token_reverse_kl_loss)
from stillwatch.distill.onpolicy import (CrossTokenizerScorer, EndpointScorer, LocalScorer, is_on_policy_step,
                                        on_policy_batch)
from stillwatch.errors import ConfigError, ModelDirError, TokenizerMismatchError
from stillwatch.models import (MODEL_CARD, build_model, count_parameters, get_preset, load_model, save_model,
                               save_tokenizer)
from stillwatch.redact import redact
from stillwatch.runinfo import run_info
from stillwatch.train import CHECKPOINT, Batch, TrainConfig, train, unwrap

RUN_DIR = "_run"
COUNTERS = "distill_counters.json"
RUN_CONFIG = "distill_config.json"
# Settings a resumed run may change: they decide when to write and log, never what is learned.
RESUMABLE = ("checkpoint_every", "log_every")
LOSSES = ("sft", "kd", "on-policy")
# Teacher candidates aligned per position when an in-process teacher has another tokenizer (--teacher-top-k 0):
# full logits cannot cross vocabularies, and each candidate costs a walk in Python, so a bounded k is the price.
CROSS_TOP_K = 32
Loss = Literal["sft", "kd", "on-policy"]


@dataclass
class DistillConfig:
    """What to optimise and how (the TRL-style config of `distill`)."""

    loss: Loss = "sft"
    divergence: Divergence | None = None  # None: forward KL for kd, reverse KL for on-policy
    beta: float = 0.5  # generalized JSD interpolation when divergence == "jsd"
    temperature: float = 1.0
    lmbda: float = 0.5  # GKD: fraction of on-policy steps
    ce_weight: float = 0.0  # extra cross-entropy on the sampled token, mixed into kd
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    max_length: int = 256
    max_new_tokens: int = 96  # student samples, on-policy
    sample_temperature: float = 1.0
    # in-process teacher: 0 = full logits (CROSS_TOP_K aligned candidates when its tokenizer is another);
    # K = only its top K (what an API returns)
    teacher_top_k: int = 0
    endpoint_top_k: int = 5  # top-k alternatives asked of an endpoint when it scores (0: sampled token only)
    checkpoint_every: int = 200
    log_every: int = 20
    buffer_rows: int = 50_000

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        for name in ("lr", "temperature", "beta", "lmbda", "ce_weight", "sample_temperature"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        for name in ("steps", "batch_size", "max_length", "max_new_tokens", "checkpoint_every", "log_every",
                     "buffer_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("warmup", "teacher_top_k", "endpoint_top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.sample_temperature <= 0:
            raise ConfigError(f"sample_temperature must be positive, not {self.sample_temperature}")
        if self.divergence is None:
            self.divergence = "reverse" if self.loss == "on-policy" else "forward"
        try:
            divergence_beta(self.divergence, self.beta)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.temperature <= 0 or not 0.0 <= self.lmbda <= 1.0 or self.ce_weight < 0 or self.batch_size < 1:
            raise ConfigError(f"impossible settings: temperature={self.temperature} lmbda={self.lmbda} "
                              f"ce_weight={self.ce_weight} batch_size={self.batch_size}")

    @property
    def jsd_beta(self) -> float:
        """The generalized-JSD beta of the chosen divergence."""
        return divergence_beta(self.divergence, self.beta)  # type: ignore[arg-type]


def _ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.any()):
        return logits.sum() * 0.0  # keeps every parameter in the graph (DDP needs that)
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def distill_loss(model: torch.nn.Module, batch: Batch, beta: float, temperature: float,
                 ce_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (loss sum, completion tokens): teacher terms where the batch has them, CE elsewhere.

    Whichever teacher view the batch carries decides the term: full `teacher_logits` (white-box), harvested
    or scored `topk_*` (sparse, with the tail bucket), `teacher_token_logprobs` (on-policy, sampled token
    only), or none (sft). Positions without a teacher distribution, such as the end token of a harvested
    completion, fall back to cross-entropy on the teacher's sampled token; `ce_weight` adds that CE everywhere.
    """
    start = completion_start(batch)
    logits = forward_logits(model, batch, start)
    tgt = shift(batch, start)
    labels = tgt["labels"]
    mask = labels != IGNORE
    if "teacher_logits" in batch:  # computed by LocalScorer for the same positions
        soft, _ = full_kd_loss(logits, batch["teacher_logits"][:, :-1], mask, beta, temperature)
        covered = mask
    elif "has_topk" in batch:
        covered = mask & tgt["has_topk"]
        soft, _ = sparse_kd_loss(logits, tgt["topk_ids"], tgt["topk_logprobs"], tgt["topk_valid"], covered, beta,
                                 temperature)
    elif "teacher_token_logprobs" in batch:
        covered = mask & tgt["has_teacher_lp"]
        soft, _ = token_reverse_kl_loss(logits, labels, tgt["teacher_token_logprobs"], covered)
    else:
        return _ce(logits, labels, mask), mask.sum()
    loss = soft + _ce(logits, labels, mask & ~covered)
    if ce_weight:
        loss = loss + ce_weight * _ce(logits, labels, covered)
    return loss, mask.sum()


def _all_reduce_int(value: int, device: torch.device) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.long, device=device)
        torch.distributed.all_reduce(t)
        return int(t.item())
    return value


def _student_tokenizer(init: Path | None, teacher: Path | None, tokenizer_dir: Path | None,
                       preset: str = "student") -> PreTrainedTokenizerBase:
    """--tokenizer, else --init's, else the preset's project tokenizer when it names one other than A, else the
    teacher's, else tokenizer A (the built-in world's, deterministic)."""
    from stillwatch.tokenizer import TOKENIZERS, load_tokenizer

    kind = get_preset(preset).tokenizer if init is None else "a"
    for path in (tokenizer_dir, init, teacher if kind == "a" else None):
        if path is not None:
            if not (Path(path) / "tokenizer.json").is_file() and not (Path(path) / "tokenizer_config.json").is_file():
                raise ModelDirError(f"{path} has no tokenizer")
            return load_tokenizer(path)
    if kind not in TOKENIZERS:
        raise ConfigError(f"preset {preset!r} names an unknown tokenizer {kind!r}; choose from {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind]()


def _store_fingerprint(meta: dict) -> str | None:
    """The harvest's teacher tokenizer fingerprint (`meta["tokenizer"]["fingerprint"]`, see harvest.store)."""
    info = meta.get("tokenizer")
    if isinstance(info, dict) and isinstance(info.get("fingerprint"), str):
        return info["fingerprint"]
    return None


def _spelled_only(data: str | Path | Sequence[Any]) -> bool:
    """Whether the first row carries token strings but not every token id (an endpoint that returns strings)."""
    if isinstance(data, (str, Path)):
        from stillwatch.harvest.store import HarvestStore

        with HarvestStore(data) as store:
            first = next(iter(store.iter_rows(batch_size=1)), None)
    else:
        first = data[0] if len(data) else None
    c = getattr(first, "completion", None)
    return bool(c is not None and getattr(c, "tokens", None) is not None
                and any(int(t) < 0 for t in list(c.token_ids) + [t for pos in (c.top_logprobs or []) for t, _ in pos]))


def _run_config(cfg: DistillConfig, preset: str, init: Path | None) -> dict:
    """What an unfinished run must be resumed with: everything that changes what the student learns."""
    stored = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}
    return {**stored, "student": str(init) if init else f"preset {preset}"}


def _check_resume(run_dir: Path, wanted: dict) -> None:
    """Refuse to resume a checkpointed run with another configuration, naming every difference."""
    path = run_dir / RUN_CONFIG
    if not (path.is_file() and (run_dir / CHECKPOINT).exists()):
        return  # nothing trained yet (or a run from before configurations were recorded)
    stored = json.loads(path.read_text())
    changed = [f"{k} {stored.get(k)!r} (now {wanted.get(k)!r})" for k in sorted(set(stored) | set(wanted))
               if stored.get(k) != wanted.get(k)]
    if changed:
        raise ConfigError(f"{run_dir.parent} holds an unfinished run with another configuration: "
                          f"{', '.join(changed)}; resume with the same settings or choose a new --out")


def _record_run_config(run_dir: Path, wanted: dict) -> None:
    """Write the configuration a resumed run is checked against (every rank may; each write is whole)."""
    path = run_dir / RUN_CONFIG
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _save_card(tokenizer: PreTrainedTokenizerBase, out: Path, card: dict) -> None:
    save_tokenizer(tokenizer, out)
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")


def distill(data: str | Path | Sequence[Any], out: str | Path, config: DistillConfig | None = None, *,
            preset: str = "student", init: str | Path | None = None, teacher: str | Path | None = None,
            endpoint: str | None = None, api_key: str | None = None, served_model: str = "stillwatch",
            tokenizer_dir: str | Path | None = None, progress: bool = True, command: str | None = None,
            accelerator: Accelerator | None = None) -> dict:
    """Distil a student from `data` (a harvest store path, or rows with `.prompt` and `.completion`) into `out`.

    Returns the model card written next to the weights.
    """
    cfg = config or DistillConfig()
    out = Path(out)
    init, teacher = (Path(init) if init else None), (Path(teacher) if teacher else None)
    if teacher is not None and endpoint is not None:
        raise ConfigError("give at most one of --teacher DIR or --endpoint URL")
    if cfg.loss == "on-policy" and teacher is None and endpoint is None:
        raise ConfigError("on-policy distillation needs a teacher to score the student's samples: "
                          "--teacher DIR or --endpoint URL --api-key KEY")
    if out.exists() and any(out.iterdir()) and not (out / RUN_DIR).is_dir():
        raise ModelDirError(f"{out} exists and is not an unfinished distillation run; choose a new directory")
    run_config = _run_config(cfg, preset, init)
    _check_resume(out / RUN_DIR, run_config)

    tokenizer = _student_tokenizer(init, teacher, Path(tokenizer_dir) if tokenizer_dir else None, preset)
    source = RowSource(data, tokenizer, seed=cfg.seed, buffer_rows=cfg.buffer_rows, with_top=cfg.loss != "sft")
    meta = source.meta()
    harvested = _store_fingerprint(meta)
    retokenize, aligner = False, None
    try:
        if harvested is None and _spelled_only(data):  # strings from an endpoint, no tokenizer named: align
            raise TokenizerMismatchError("the harvest names no tokenizer")
        check_tokenizers(tokenizer, harvested, "harvest's teacher")
    except TokenizerMismatchError:
        if cfg.loss == "on-policy" and teacher is None:
            raise TokenizerMismatchError(
                "on-policy distillation through an endpoint is not supported across tokenizers: the endpoint "
                "scores token ids of its own vocabulary; give the teacher as --teacher DIR, or use --loss kd") from None
        retokenize = True  # sft only needs the teacher's text: re-encode it for the student
        if cfg.loss == "kd" and teacher is None:  # kd aligns the harvest's top k (as bytes) onto the student
            info = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
            end = {info["eos_token_id"]} if isinstance(info.get("eos_token_id"), int) else set()
            aligner = Aligner(StudentVocab(tokenizer), recorded_vocabulary(meta), end)
        source = RowSource(data, tokenizer, seed=cfg.seed, retokenize=True, buffer_rows=cfg.buffer_rows,
                           with_top=aligner is not None, aligner=aligner)
        if aligner is not None:
            aligner.learn(row.completion for row in source.first_rows(CONTINUATION_ROWS))

    teacher_model, cross_teacher = None, False
    if teacher is not None and cfg.loss != "sft":
        teacher_model, teacher_tok = load_model(teacher)
        cross_teacher = tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(tokenizer)
        if cross_teacher and not retokenize:  # the harvest was made in the student's tokens, the teacher is not
            raise TokenizerMismatchError(f"the teacher at {teacher} does not use the tokenizer its harvest "
                                         "was made with; give the teacher that made the harvest")
    has_topk = source.row_at(0).topk_ids is not None
    if cfg.loss == "kd" and teacher_model is None and not has_topk:
        raise ConfigError("kd needs the teacher's top-k logprobs: harvest with --logprobs K, or give --teacher DIR "
                          "for white-box KD on full logits")

    if init is not None:
        student, _ = load_model(init)
    else:
        student = build_model(preset, tokenizer, seed=cfg.seed)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    scorer = None
    if teacher_model is not None and cross_teacher:  # white-box and on-policy across tokenizers: top k aligned
        scorer = CrossTokenizerScorer(teacher_model.to(device), teacher_tok, tokenizer,
                                      top_k=cfg.teacher_top_k or CROSS_TOP_K)
    elif teacher_model is not None:
        scorer = LocalScorer(teacher_model.to(device), top_k=cfg.teacher_top_k)
    elif endpoint is not None and cfg.loss == "on-policy":
        from stillwatch.teachers.openai_teacher import OpenAITeacher

        scorer = EndpointScorer(OpenAITeacher(endpoint, api_key or "none", model=served_model, tokenizer=tokenizer,
                                              api="completions"), top_k=cfg.endpoint_top_k)

    run_dir = out / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    _record_run_config(run_dir, run_config)
    counters_path = run_dir / COUNTERS
    scored: dict[str, int] = json.loads(counters_path.read_text()) if counters_path.is_file() else {}
    maker = BatchMaker(source, cfg.batch_size, tokenizer.pad_token_id, cfg.max_length,
                       with_topk=cfg.loss != "sft" and (not retokenize or aligner is not None))
    beta = cfg.jsd_beta

    def loss_fn(model: torch.nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.loss == "sft":
            return distill_loss(model, batch, beta, cfg.temperature)
        rank, world = accelerator.process_index, accelerator.num_processes
        rows = maker.shard(step, rank, world)
        on_policy = cfg.loss == "on-policy" and is_on_policy_step(step, cfg.lmbda, cfg.seed)
        if on_policy:
            batch, rows = on_policy_batch(unwrap(model), batch, rows, pad_id=tokenizer.pad_token_id,
                                          eos_id=tokenizer.eos_token_id, max_new_tokens=cfg.max_new_tokens,
                                          temperature=cfg.sample_temperature, seed=(cfg.seed * 1_000_003 + step * 101 + rank) % 2**31,
                                          max_length=cfg.max_length)
        # Score live only when the harvest lacks what the loss needs (the same decision on every rank).
        if scorer is not None and (on_policy or not has_topk or (teacher_model is not None and not cfg.teacher_top_k)):
            batch = scorer(batch, rows)
            n = _all_reduce_int(int((batch["labels"] != IGNORE).sum()), device)
            scored[str(step)] = n  # keyed by step: steps redone after a resume are not counted twice
        # Persist on the steps the loop checkpoints after, so a resumed run restarts from matching counts.
        last = step + 1 == cfg.steps or (step + 1) % cfg.checkpoint_every == 0
        if last and accelerator.is_main_process and scored:
            counters_path.write_text(json.dumps(scored))
        return distill_loss(model, batch, beta, cfg.temperature, cfg.ce_weight)

    train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(cfg.warmup, max(0, cfg.steps // 5)),
                            seed=cfg.seed, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
    result = train(student, maker, loss_fn, train_cfg, run_dir, progress=progress, accelerator=accelerator,
                   description=f"distill {cfg.loss}")
    if isinstance(scorer, EndpointScorer):
        scorer.close()

    # Teacher tokens: harvested completions behind the off-policy steps, plus tokens scored live.
    off_steps = [s for s in range(cfg.steps) if not (cfg.loss == "on-policy" and is_on_policy_step(s, cfg.lmbda, cfg.seed))]
    used = source.indices_used(p for s in off_steps for p in range(s * cfg.batch_size, (s + 1) * cfg.batch_size))
    if used is not None:
        harvested_tokens, rows_used = source.teacher_tokens(used), len(used)
    else:  # streaming: estimate from the rows covered
        rows_used = min(source.n, len(off_steps) * cfg.batch_size)
        harvested_tokens = int(meta.get("completion_tokens", 0) * rows_used / source.n) if meta else 0
    scored_tokens = sum(scored.values())
    source.close()

    model = unwrap(accelerator.unwrap_model(student))
    info = run_info(cfg.seed, command)
    info["machine"]["processes"] = accelerator.num_processes
    card = {
        "kind": "stillwatch-student",
        "loss": cfg.loss,
        "config": asdict(cfg),
        "student": {"init": str(init)} if init else {"preset": preset},
        "parameters": count_parameters(model),
        "data": {"source": str(data) if isinstance(data, (str, Path)) else f"{source.n} rows in memory",
                 "rows": source.n, "rows_used": rows_used, "retokenized": retokenize,
                 "aligned": (aligner.stats.summary() if aligner is not None
                             else scorer.stats.summary() if isinstance(scorer, CrossTokenizerScorer) else None),
                 "teacher": meta.get("teacher") if isinstance(meta.get("teacher"), (str, dict)) else None},
        "teacher": str(teacher) if teacher else endpoint,
        "teacher_tokens": {"harvested": harvested_tokens, "scored": scored_tokens,
                           "total": harvested_tokens + scored_tokens},
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "train": {k: v for k, v in result.to_dict().items() if k != "losses"},
        "loss_curve": result.losses,
        **info,
    }
    card = redact(card, [api_key])  # a card is published with the weights: no key, no URL credentials
    # Under FSDP or DeepSpeed ZeRO-3 the weights are sharded: gather a full state dict on every rank first.
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state = accelerator.get_state_dict(student) if sharded else None
    if accelerator.is_main_process:
        if state is None:
            save_model(model, tokenizer, out, card)
        else:
            model.save_pretrained(out, state_dict=state, safe_serialization=True)
            _save_card(tokenizer, out, card)
        shutil.rmtree(run_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return card
