"""Radioactivity of a green-list watermark (Sander et al. 2024): was a suspect model trained on watermarked text?

Open model ("reading mode"): teacher-force the watermarked texts through the suspect and take its top-1 prediction
at every completion position; closed model: sample the suspect on the evidence prompts through its API. Either way
the test scores (watermark window, token) tuples with the key:

- every tuple is scored once (the "tape" de-duplication of §4); repeated tuples are not independent draws;
- windows that occur in the text's own prompt are skipped (the suspect could copy them from its input);
- in reading mode, windows that already occurred earlier in the same text are skipped too: the model sees what
  followed them, and copying a watermarked continuation is not radioactivity (the reference code's rule);
- an optional filter keeps only windows frequent in the watermarked data (the filter φ of §4.2);
- optionally (`per_window_top=m`), each window contributes only the m tokens the suspect chose most often after
  it (ties broken by token id), instead of every distinct token it ever chose. Where the texts offer few
  windows (small vocabularies, one-token windows), sampling soon produces every plausible (window, token)
  pair, so the set of distinct tuples no longer depends on how often the suspect favours the green ones; its
  most frequent choices still do.

Which tuples get scored never depends on the key (votes are counted before any green list is looked at), so
under H0 (the suspect never saw the key's text) each tuple's green bit is an independent Bernoulli(γ) draw and
the number of green tuples is Binomial(N, γ): the p-value is its exact upper tail, computed in log space so that
it stays exact far below 1e-300.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy.special import gammaln, logsumexp

from stillwatch.errors import ConfigError
from stillwatch.forensics.watermark import WatermarkConfig, green_oracle, z_score

Window = tuple[int, ...]
ScoredTuple = tuple[Window, int]


@dataclass(frozen=True)
class EvidenceText:
    """One served (watermarked) text: its prompt and completion token ids in the teacher's vocabulary."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    task: str | None = None


def log_binomial_tail(k: int, n: int, p: float) -> float:
    """ln P[Binomial(n, p) ≥ k], exact: logsumexp of the log pmf over j = k..n."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    j = np.arange(k, n + 1, dtype=np.float64)
    log_pmf = gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)
    return float(min(0.0, logsumexp(log_pmf)))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) ≥ k] (underflows to 0 only below ~1e-308; use `log_binomial_tail` for the exponent)."""
    return math.exp(log_binomial_tail(k, n, p))


def windows_of(ids: Sequence[int], width: int) -> set[Window]:
    """Every `width`-token window that occurs in `ids`."""
    return {tuple(ids[i:i + width]) for i in range(len(ids) - width + 1)} if width else set()


@dataclass
class TupleTape:
    """The de-duplicated (window, token) tuples that the test scores, in the order met, and why others were not."""

    window: int
    kgram_filter: frozenset[Window] | None = None
    per_window_top: int | None = None
    tuples: list[ScoredTuple] = field(default_factory=list)
    positions: int = 0
    excluded: Counter = field(default_factory=Counter)
    _seen: set[ScoredTuple] = field(default_factory=set, repr=False)
    _votes: dict[Window, Counter] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError("radioactivity needs a watermark window of at least one token "
                              "(selfhash with context width 1 seeds from the token alone)")
        if self.per_window_top is not None and self.per_window_top < 1:
            raise ConfigError(f"per-window top must be at least 1, got {self.per_window_top}")

    def scored(self) -> list[ScoredTuple]:
        """The tuples the test scores: every distinct one, or each window's `per_window_top` most voted tokens."""
        if self.per_window_top is None:
            return self.tuples
        return [(window, token) for window, votes in self._votes.items()
                for token, _ in sorted(votes.items(), key=lambda item: (-item[1], item[0]))[:self.per_window_top]]

    def add_text(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], predictions: Sequence[int],
                 skip_repeated_windows: bool) -> None:
        """Offer the tuple (window before completion position t, predictions[t]) for every position t."""
        w, prompt = self.window, list(prompt_ids)
        seq = prompt + list(completion_ids)
        prompt_windows = windows_of(prompt, w)
        earlier: set[Window] = set(prompt_windows)
        for t, token in enumerate(predictions, start=len(prompt)):
            if t < w or t > len(seq):
                continue
            window = tuple(seq[t - w:t])
            self.positions += 1
            reason = None
            if self.kgram_filter is not None and window not in self.kgram_filter:
                reason = "filtered"
            elif window in prompt_windows:
                reason = "window_in_prompt"
            elif skip_repeated_windows and window in earlier:
                reason = "window_seen_earlier_in_text"
            earlier.add(window)
            pair = (window, int(token))
            if reason:
                self.excluded[reason] += 1
            elif self.per_window_top is not None:
                self._votes.setdefault(window, Counter())[pair[1]] += 1  # which tokens count is decided in scored()
            elif pair in self._seen:
                self.excluded["duplicate"] += 1
            else:
                self._seen.add(pair)
                self.tuples.append(pair)


@dataclass
class RadioactivityResult:
    """The binomial test over de-duplicated tuples."""

    mode: str
    num_tuples_scored: int
    num_green: int
    gamma: float
    green_fraction: float
    z_score: float
    p_value: float
    log10_p_value: float
    positions: int
    excluded: dict[str, int]
    sample_tuples: list[dict]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def radioactivity_test(tape: TupleTape, config: WatermarkConfig, vocab_size: int, mode: str,
                       sample: int = 20) -> RadioactivityResult:
    """Count green tuples under `config`'s key and return the exact binomial p-value (Sander et al., §4)."""
    oracle = green_oracle(config, vocab_size)
    tuples = tape.scored()
    bits = [oracle.is_green(w, t) for w, t in tuples]
    n, k = len(bits), int(sum(bits))
    log_p = log_binomial_tail(k, n, config.gamma)
    return RadioactivityResult(
        mode=mode, num_tuples_scored=n, num_green=k, gamma=config.gamma, green_fraction=k / n if n else 0.0,
        z_score=z_score(k, n, config.gamma), p_value=math.exp(log_p), log10_p_value=log_p / math.log(10),
        positions=tape.positions, excluded=dict(tape.excluded),
        sample_tuples=[{"window": list(w), "token": t, "green": g} for (w, t), g in list(zip(tuples, bits))[:sample]],
    )


@torch.inference_mode()
def reading_tape(model: torch.nn.Module, texts: Sequence[EvidenceText], window: int,
                 kgram_filter: Iterable[Window] | None = None, batch_size: int = 32,
                 pad_token_id: int = 0, per_window_top: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> TupleTape:
    """Open model: teacher-force each text and put the suspect's top-1 prediction at every completion position."""
    tape = TupleTape(window, frozenset(kgram_filter) if kgram_filter is not None else None, per_window_top)
    device = next(model.parameters()).device
    limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 1 << 30))
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        rows = [(list(x.prompt_ids) + list(x.completion_ids))[:limit] for x in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        top1 = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for x, r, pred in zip(chunk, rows, top1):
            p = len(x.prompt_ids)
            if p < 1 or len(r) <= p:
                continue
            # logits at position t-1 predict token t: completion positions t = p .. len(r)-1
            tape.add_text(x.prompt_ids, r[p:], pred[p - 1:len(r) - 1].tolist(), skip_repeated_windows=True)
        if on_batch is not None:
            on_batch(len(chunk))
    return tape


def generation_tape(generations: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int] | None]], window: int,
                    kgram_filter: Iterable[Window] | None = None, per_window_top: int | None = None) -> TupleTape:
    """Closed model: (prompt ids, generated ids, top-1 ids or None) per sample.

    The tuple at each position pairs the window of generated text with the token the suspect wrote there, or,
    when its API returned log-probabilities, with its most likely token there (free of sampling noise).
    """
    tape = TupleTape(window, frozenset(kgram_filter) if kgram_filter is not None else None, per_window_top)
    for prompt_ids, generated, top1 in generations:
        tape.add_text(prompt_ids, generated, list(top1 if top1 is not None else generated),
                      skip_repeated_windows=False)
    return tape


def frequent_windows(texts: Sequence[EvidenceText], window: int, top: int) -> set[Window]:
    """The `top` windows that occur most often in the watermarked completions (Sander et al.'s filter φ)."""
    counts: Counter = Counter()
    for x in texts:
        seq = list(x.prompt_ids) + list(x.completion_ids)
        counts.update(tuple(seq[t - window:t]) for t in range(max(window, len(x.prompt_ids)), len(seq)))
    return {w for w, _ in counts.most_common(top)}
