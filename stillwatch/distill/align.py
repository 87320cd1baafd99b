"""Cross-tokenizer alignment: a teacher's top-k distributions, given as token bytes, onto a student's tokens.

A harvest made with tokenizer A holds, at every teacher token t_l of a completion x, the teacher's top-k
candidates (bytes s, log p_l(s)) and the sampled token's own log p_l(t_l). A student with tokenizer B sees the
same text cut at other places. This module turns the teacher's view into a sparse target over B's vocabulary
at every student position, so that the ordinary sparse KD loss (`losses.sparse_kd_loss`, with its tail
bucket) applies unchanged.

The maths: byte-level chain rule over the teacher's known tree of continuations.

Let o_l be the byte offset where teacher token t_l starts, and let student token u_j span bytes [b, e) of x.
What the teacher says about the student's next token is its distribution over continuations of x[:b]. The
harvest knows one branch of that tree per position: the realised path t_1 t_2 ..., and at every position l
its k listed alternatives (and the mass 1 - sum of them, the tail, whose tokens are unknown). Every path
that leaves the realised one at position l with candidate s is a *leaf* with a known first chunk of text,

    chunk = x[b:o_l] + s,   weight = prod_{i <= m < l} p_m(t_m) * p_l(s) / Z

where i is the teacher token holding byte b. Each leaf goes to one student token, `head(chunk + after)`: the
first token of the student's own encoding of the chunk followed by `after`, the text that followed the
sampled token t_l when the teacher's sampled text ever has that after the alternative (it takes t_l's place,
as "8" does "7" in "=07 " -> "=08 "); else the leaf is split over the texts the teacher does write after the
alternative, in the proportions its harvest shows (`Continuations`). An end-of-text candidate goes to the
student's end token. The weights of leaves with the same head add up. The realised path itself, once a
teacher token reaches e, goes to u_j: there the student's tokenization of the true text is known exactly.
Tail masses of positions l > i (and of l = i when b = o_i) stay unassigned, which is exactly what the loss's
"rest" bucket stands for. So the target is a proper distribution over (listed student ids, rest):

    target(v) = sum of weights of leaves with head v,      rest = 1 - sum_v target(v).

Z normalises the first level. When b = o_i (a shared boundary) Z = 1: the whole top k and its tail. When b
falls inside t_i, the prefix x[o_i:b] must be spelled by the teacher's choice at i: Z = p_i(t_i) plus every
listed alternative that starts with x[o_i:b] and goes past b. Alternatives that end exactly at b (a
non-canonical split, whose next distribution nobody asked for) and the tail's share at i are conditioned
away: the target assumes they continue as the known paths do.

Exactness and what is lost.
  * Where teacher and student cut at the same places and a listed teacher token is one student token, the
    target is the teacher's top k itself (same tokenizer: identical to plain sparse KD).
  * The realised token's probability is exact by the chain rule along the sampled path whenever its two ends
    are teacher boundaries (student "07" = teacher "0" then "7": p("0") * p("7" | "0")).
  * A leaf's text is known only up to the end of its candidate. Where the student's token runs on past it
    (teacher alternative " quickly" where the student writes "quickly▁"; teacher "1" where it writes digit
    pairs "1x"), the head is read with an assumed continuation: the sampled one, where the teacher is seen
    to write it after that alternative, else the teacher's own habits after it. One student token then gets
    mass that the teacher's next distribution would have spread over "10".."19". Without an assumed
    continuation the head would be the cut-off "quick" or "1", which is worse: a student taught to start
    words it cannot finish. `AlignStats.approximate_mass` measures the mass placed this way.
  * Teacher paths that leave the sampled one *before* b yet spell the same text (other segmentations of x[:b])
    are ignored: a canonical BPE teacher gives them almost no mass.
  * The teacher tail (mass outside its top k) stays one bucket on the student side, as in same-tokenizer KD.
    A candidate whose bytes are not valid UTF-8 for the student to encode, or that the student cannot spell,
    falls into that bucket too (`AlignStats.lost_mass`).
  * A teacher string that does not spell the completion (an endpoint whose token strings do not add up to its
    text) leaves that row without teacher targets: its student positions fall back to cross-entropy on the
    text (`AlignStats.rows_unaligned`).

Alternatives considered: ULD (Boizard et al. 2024) and TRL's GOLD compare *sorted* probability vectors, so
they need no mapping but throw away which token is which; on these tasks, where a teacher ranks "7" over "9",
that is most of the information. Chain-rule byte alignment keeps it wherever the bytes determine it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from stillwatch.errors import ConfigError
from stillwatch.tokenizer import token_bytes

END = None  # a candidate that ends the text (the teacher's end token): it maps to the student's end token
# Rows an aligner learns the teacher's usual continuations from: every piece's habit shows long before this,
# and a huge harvest is not read twice.
CONTINUATION_ROWS = 20_000
MIN_MASS = 1e-9  # leaves lighter than this are dropped (float16 logprobs carry no more precision)


@dataclass
class TeacherTokens:
    """A teacher completion as bytes: the sampled pieces, their logprobs, and the top-k candidates per piece.

    `top[l]` lists (bytes or END, logprob) pairs at piece l; `logprobs[l]` is log p_l(pieces[l]) (NaN when
    unknown: then the listed entry equal to the piece is used).
    """

    pieces: list[bytes]
    logprobs: list[float]
    top: list[list[tuple[bytes | None, float]]]


@dataclass
class AlignStats:
    """Mass bookkeeping over aligned student positions (sums; divide by `positions` for means)."""

    rows: int = 0
    rows_unaligned: int = 0
    positions: int = 0  # student completion positions with a teacher target
    shared_boundary: int = 0  # ... whose start is also a teacher token start
    same_token: int = 0  # ... whose span is exactly one teacher token
    tail_mass: float = 0.0  # target mass left in the rest bucket
    realised_mass: float = 0.0  # target mass on the student's own next token
    approximate_mass: float = 0.0  # leaf mass whose student token runs into the assumed continuation
    lost_mass: float = 0.0  # listed teacher mass the student could not spell (sent to the rest bucket)
    candidates: int = 0  # listed student ids, summed over positions

    def add(self, other: "AlignStats") -> None:
        """Accumulate another row's counts."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        """Counts, and the masses as means per aligned position."""
        n = max(1, self.positions)
        return {"rows": self.rows, "rows_unaligned": self.rows_unaligned, "positions": self.positions,
                "shared_boundary_fraction": self.shared_boundary / n, "same_token_fraction": self.same_token / n,
                "mean_tail_mass": self.tail_mass / n, "mean_realised_mass": self.realised_mass / n,
                "mean_approximate_mass": self.approximate_mass / n, "mean_lost_mass": self.lost_mass / n,
                "mean_candidates": self.candidates / n}


class StudentVocab:
    """The student tokenizer's side of alignment: byte spans of its tokens, and `head(chunk)`, cached."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.unk_id = tokenizer.unk_token_id
        self._heads: dict[bytes, tuple[int | None, int]] = {}
        self.pieces = token_bytes(tokenizer)
        self.max_piece = max((len(piece) for piece in self.pieces if piece), default=1)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` and each token's [start, end) byte span (contiguous, covering the text)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        # offsets are in characters: convert through the UTF-8 lengths, and close gaps so that spans tile the text
        char_to_byte = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in text])]).astype(int)
        spans, prev = [], 0
        for k, (_, end) in enumerate(offsets):
            stop = int(char_to_byte[end]) if k + 1 < len(offsets) else int(char_to_byte[-1])
            stop = max(stop, prev)
            spans.append((prev, stop))
            prev = stop
        return ids, spans

    def spans(self, ids: Sequence[int]) -> list[tuple[int, int]] | None:
        """Byte spans of given student tokens, from the bytes each spells (None when one spells nothing)."""
        out, at = [], 0
        for i in ids:
            piece = self.pieces[i] if 0 <= i < len(self.pieces) else None
            if piece is None:
                return None
            out.append((at, at + len(piece)))
            at += len(piece)
        return out

    def head(self, chunk: bytes, after: bytes = b"") -> tuple[int | None, int]:
        """(first student token of `chunk` followed by `after`, its length in bytes); (None, 0) when the student
        cannot spell it. `after` is cut back to whole UTF-8 characters."""
        key = (chunk, after)
        if key not in self._heads:
            text = None
            for cut in range(min(4, len(after) + 1)):
                try:
                    text = (chunk + after[:len(after) - cut]).decode("utf-8")
                    break
                except UnicodeDecodeError:
                    continue
            ids, spans = self.encode(text) if text is not None else ([], [])
            if not ids or ids[0] == self.unk_id or spans[0][1] <= spans[0][0]:
                self._heads[key] = (None, 0)
            else:
                self._heads[key] = (int(ids[0]), spans[0][1] - spans[0][0])
        return self._heads[key]


def _probabilities(teacher: TeacherTokens) -> tuple[list[float], list[list[tuple[bytes | None, float]]], list[float]]:
    """Per piece: p(sampled), the listed alternatives (sampled one removed) as probabilities, and the tail."""
    p_real, alts, tails = [], [], []
    for l, piece in enumerate(teacher.pieces):
        listed = teacher.top[l] if l < len(teacher.top) else []
        lp = teacher.logprobs[l] if l < len(teacher.logprobs) else float("nan")
        own = [v for s, v in listed if s == piece]
        p = math.exp(lp) if math.isfinite(lp) else (math.exp(own[0]) if own else float("nan"))
        others = [(s, math.exp(v)) for s, v in listed if s != piece and math.isfinite(v)]
        if not math.isfinite(p):  # unknown and unlisted: the sampled token takes what the list leaves
            p = max(0.0, 1.0 - sum(q for _, q in others))
        total = p + sum(q for _, q in others)
        if total > 1.0:  # stores and endpoints round: renormalise rather than go negative
            p, others = p / total, [(s, q / total) for s, q in others]
            total = 1.0
        p_real.append(p)
        alts.append(others)
        tails.append(max(0.0, 1.0 - total))
    return p_real, alts, tails


def align_row(teacher: TeacherTokens, text: str, student: StudentVocab, student_ids: Sequence[int] | None = None,
              continuations: "Continuations | None" = None
              ) -> tuple[list[int], list[list[tuple[int, float]]] | None, AlignStats]:
    """The student's token ids for `text` and, per student token, its target [(student id, logprob), ...].

    `student_ids` are the student's tokens of `text` when they are given (its own samples, which need not be
    the canonical encoding); else `text` is encoded. The rest bucket is 1 - the sum of the listed masses (see
    the module docstring). Returns None targets, and counts the row as unaligned, when the teacher pieces or
    the given student tokens do not spell `text`.
    """
    if student_ids is None:
        ids, spans = student.encode(text)
    else:
        ids, spans = list(student_ids), student.spans(student_ids)
        if spans is None or (spans and spans[-1][1] != len(text.encode())):
            return ids, None, AlignStats(rows=1, rows_unaligned=1)
    stats = AlignStats(rows=1)
    data = text.encode()
    if b"".join(teacher.pieces) != data or not ids:
        stats.rows_unaligned = int(bool(ids))
        return ids, None, stats
    starts = np.concatenate([[0], np.cumsum([len(p) for p in teacher.pieces])]).astype(int)
    p_real, alts, tails = _probabilities(teacher)
    holder = np.searchsorted(starts, np.arange(len(data)), side="right") - 1  # teacher piece holding each byte
    targets: list[list[tuple[int, float]]] = []
    for j, (b, e) in enumerate(spans):
        if e <= b:  # an empty span (a token the text does not show): nothing to align
            targets.append([])
            continue
        i = int(holder[b])
        off = b - int(starts[i])
        mass: dict[int, float] = {}
        approx = lost = 0.0
        first_alts = [(s, q) for s, q in alts[i]
                      if s is not END and len(s) > off and s[:off] == teacher.pieces[i][:off]] if off else alts[i]
        z = 1.0 if off == 0 else p_real[i] + sum(q for _, q in first_alts)
        if z <= 0.0:
            targets.append([])
            continue
        weight = 1.0 / z
        l = i
        while True:
            known = data[b:int(starts[l])]  # realised text between b and this piece
            for s, q in (first_alts if l == i else alts[l]):
                w = weight * q
                if w < MIN_MASS:
                    continue
                if s is END:
                    if known:
                        v, length = student.head(known)
                        chunk_len = len(known)
                    else:
                        v, length, chunk_len = student.eos_id, 0, 0
                else:
                    chunk = known + s[off:] if l == i else known + s
                    # the alternative is read with what followed the sampled token, unless the teacher was
                    # never seen to write that after it: then with what it writes after it, in proportion
                    sampled = data[int(starts[l + 1]):int(starts[l + 1]) + student.max_piece]
                    nxt = teacher.pieces[l + 1] if l + 1 < len(teacher.pieces) else b""
                    readings = [(sampled, 1.0)]
                    if continuations is not None and not continuations.seen(s, nxt):
                        readings = continuations.options(s, student.max_piece) or readings
                    for after, share in readings:
                        v, length = student.head(chunk, after)
                        if v is None:
                            lost += w * share
                            continue
                        if length > len(chunk):
                            approx += w * share  # the head runs into that assumed continuation
                        mass[v] = mass.get(v, 0.0) + w * share
                    continue
                if v is None:
                    lost += w
                    continue
                if length > chunk_len:
                    approx += w  # the head runs into that assumed continuation
                mass[v] = mass.get(v, 0.0) + w
            weight *= p_real[l]
            if int(starts[l + 1]) >= e or l + 1 >= len(teacher.pieces):
                mass[ids[j]] = mass.get(ids[j], 0.0) + weight  # the sampled path: the student's own token
                break
            l += 1
        listed = sorted(((v, m) for v, m in mass.items() if m > 0.0), key=lambda vm: -vm[1])
        total = sum(m for _, m in listed)
        if total > 1.0:
            listed = [(v, m / total) for v, m in listed]
            total = 1.0
        targets.append([(v, math.log(m)) for v, m in listed])
        stats.positions += 1
        stats.shared_boundary += int(off == 0)
        stats.same_token += int(off == 0 and int(starts[i + 1]) == e)
        stats.tail_mass += 1.0 - total
        stats.realised_mass += mass.get(ids[j], 0.0)
        stats.approximate_mass += approx
        stats.lost_mass += lost
        stats.candidates += len(listed)
    return ids, targets, stats


# -- where the teacher's bytes come from ---------------------------------------------------------------------

# How endpoints spell special tokens in top-k lists ("<|eos|>", "<|im_end|>", "</s>"): the text never shows them,
# so a candidate spelled so is the end of the text (the end of the turn, for a chat model).
SPECIAL_SPELLING = re.compile(r"^(<\|[^|<>]+\|>|</s>|<eos>)$")


def _as_bytes(token: Any) -> bytes | None:
    if token is None or (isinstance(token, str) and SPECIAL_SPELLING.match(token)):
        return END
    if isinstance(token, bytes):
        return token
    if isinstance(token, (list, tuple)):  # OpenAI's `bytes` field: a list of ints
        return bytes(token)
    return str(token).encode("utf-8", "surrogateescape")


def vocabulary_table(tokens: Sequence[str | None]) -> list[bytes | None]:
    """A harvest's recorded vocabulary (token strings by id, None for special tokens) as bytes."""
    return [None if t is None else str(t).encode("utf-8", "surrogateescape") for t in tokens]


def recorded_vocabulary(meta: dict) -> list[bytes | None] | None:
    """The teacher vocabulary a harvest recorded (`meta["tokenizer"]["tokens"]`), as bytes by id, or None."""
    info = meta.get("tokenizer") if isinstance(meta, dict) else None
    tokens = info.get("tokens") if isinstance(info, dict) else None
    return vocabulary_table(tokens) if isinstance(tokens, list) else None


def teacher_tokens(completion: Any, vocab: Sequence[bytes | None] | None, end_ids: set[int] = frozenset()
                   ) -> TeacherTokens | None:
    """A completion's pieces and top k as bytes: from the token strings it kept, else its ids through `vocab`.

    Strings come from `completion.tokens` / `completion.top_tokens` (parallel to `token_ids` / `top_logprobs`)
    when the harvest kept them (a string spelled like a special token, "<|eos|>", is END); ids go through
    `vocab`, where ids in `end_ids` (the teacher's end token) are END and other special tokens are dropped.
    Returns None when neither is there.
    """
    logprobs = [float(v) for v in (completion.logprobs or [])]
    top_ids = completion.top_logprobs or []
    pieces_s = getattr(completion, "tokens", None)
    top_s = getattr(completion, "top_tokens", None)
    if pieces_s is not None and top_s is not None:
        pieces = [_as_bytes(t) or b"" for t in pieces_s]
        top = [[(_as_bytes(t), float(lp)) for t, (_, lp) in zip(names, pos)] for names, pos in zip(top_s, top_ids)]
        return TeacherTokens(pieces, logprobs, top)
    if vocab is None:
        return None

    def spell(tid: int) -> bytes | None | bool:
        if tid in end_ids:
            return END
        piece = vocab[tid] if 0 <= tid < len(vocab) else None
        return False if piece is None else piece  # False: a special token that spells nothing

    pieces = []
    for tid in completion.token_ids:
        piece = spell(int(tid))
        pieces.append(piece if isinstance(piece, bytes) else b"")
    top = [[(spell(int(t)), float(lp)) for t, lp in pos if spell(int(t)) is not False] for pos in top_ids]
    return TeacherTokens(pieces, logprobs, top)


class Continuations:
    """Which piece the teacher's sampled text puts after each piece: how an alternative is read.

    Reading an alternative with the continuation of the token it replaces is right where the two play the same
    part (" cat" for " dog" before " sees"), and wrong where they do not: a verb offered in place of a
    sentence's last verb would be read as "likes. every", which the student spells "lik" "es.", a word start
    it never learns to finish. So a pair the harvest never shows ("likes" then ".") is split over what the
    teacher does write after the alternative, in proportion: "likes▁a▁", "likes▁every▁", ...
    """

    def __init__(self) -> None:
        self._counts: dict[bytes, dict[bytes, int]] = {}
        self._best: dict[bytes, bytes] | None = None

    def learn(self, teacher: TeacherTokens) -> None:
        """Count the piece that follows each piece of one sampled completion (b"" after the last)."""
        for piece, nxt in zip(teacher.pieces, teacher.pieces[1:] + [b""]):
            if piece:
                counts = self._counts.setdefault(piece, {})
                counts[nxt] = counts.get(nxt, 0) + 1
        self._best = None

    def seen(self, piece: bytes, nxt: bytes) -> bool:
        """Whether the sampled text ever has `nxt` right after `piece` (the end of a text counts as b"")."""
        return self._counts.get(piece, {}).get(nxt, 0) > 0

    def options(self, piece: bytes, limit: int, most: int = 8) -> list[tuple[bytes, float]]:
        """The texts the teacher writes after `piece` (its `most` likeliest next pieces, each carried on by the
        usual piece after it up to `limit` bytes) with their shares; [] if `piece` was never followed."""
        counts = self._counts.get(piece, {})
        top = sorted(((n, c) for n, c in counts.items() if n), key=lambda nc: (-nc[1], nc[0]))[:most]
        total = sum(c for _, c in top)
        return [(self._carry(n, limit), c / total) for n, c in top] if total else []

    def _carry(self, text: bytes, limit: int) -> bytes:
        if self._best is None:  # the most frequent next piece, ties to the smallest bytes; the end is no piece
            self._best = {p: min(((n, k) for n, k in c.items() if n), key=lambda nk: (-nk[1], nk[0]))[0]
                          for p, c in self._counts.items() if any(c)}
        at, seen = text, set()
        while len(text) < limit and at in self._best and at not in seen:
            seen.add(at)
            at = self._best[at]
            text += at
        return text[:limit]


@dataclass
class Aligner:
    """Aligns harvested rows onto a student tokenizer, with the harvest's vocabulary when rows carry only ids."""

    student: StudentVocab
    vocab: list[bytes | None] | None = None
    end_ids: set[int] = field(default_factory=set)
    stats: AlignStats = field(default_factory=AlignStats)
    continuations: Continuations = field(default_factory=Continuations)

    def learn(self, completions: Iterable[Any]) -> None:
        """Learn the teacher's usual continuations from sampled completions (before aligning any row)."""
        for completion in completions:
            teacher = teacher_tokens(completion, self.vocab, self.end_ids)
            if teacher is not None:
                self.continuations.learn(teacher)

    def __call__(self, completion: Any) -> tuple[list[int], list[list[tuple[int, float]]] | None]:
        """Student ids of the completion's text and the aligned targets (None when nothing can be aligned)."""
        teacher = teacher_tokens(completion, self.vocab, self.end_ids)
        if teacher is None:
            raise ConfigError("this harvest kept the teacher's token ids but neither their strings nor the "
                              "teacher's vocabulary, so kd across tokenizers cannot spell them; harvest again "
                              "with this version, or use --loss sft")
        ids, targets, stats = align_row(teacher, completion.text, self.student, continuations=self.continuations)
        self.stats.add(stats)
        return ids, targets
