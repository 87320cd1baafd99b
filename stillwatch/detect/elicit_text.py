"""Prompt to text for the elicitation classifier: flatten any message list, normalise, and decode hidden views."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from stillwatch.detect.elicit_concepts import CONCEPTS

# Hostile sizes get bounded work: a longer prompt is read as its head and its tail.
MAX_CHARS = 16_384
MAX_DEPTH = 12
# Decoded views are capped too, so a prompt cannot multiply its own cost.
MAX_VIEWS = 8

_CONTENT_KEYS = ("content", "text", "prompt", "messages", "input", "name", "arguments", "parts")
_SKIP_KEYS = ("role", "type", "id", "index", "model")
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad"))
# Cyrillic and Greek letters that look Latin; folded only inside words that mix scripts, so real Russian stays.
_HOMOGLYPHS = str.maketrans("аеорсухіѕјАЕОРСХВМНКТαοερτνιΑΟΕΡΤΝΙΚΗΜΒ",
                            "aeopcyxisjaeopcxbmhktaoeptviaoeptnikhmb")
_LEET = str.maketrans("013457@$!|+", "oieastasiit")
_WORD = re.compile(r"\w+", re.UNICODE)
_MIXED_SCRIPT = re.compile(r"\b(?=\w*[a-z])(?=\w*[\u0370-\u03ff\u0400-\u04ff])\w+\b")
_LEET_WORD = re.compile(r"(?<![\w@$!|+])(?=[\w@$!|+]*[a-z])(?=[\w@$!|+]*[013457@$!|+])[\w@$!|+]{3,}")
# "i g n o r e" or "i.g.n.o.r.e": single letters joined by one separator, at least five of them.
_SPACED = re.compile(r"(?<!\w)(?:\w[ .\-_*]){4,}\w(?!\w)")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}[ :]?){12,}")
_PERCENT = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")
_SPACES = re.compile(r"\s+")
_SEGMENT = re.compile(r"\n+|(?<=[.!?;:。！？])\s+|[\"“”]|<!--|-->|\s#\s|^#\s|--\s", re.MULTILINE)
_ROT_CUE = re.compile(r"\brot[- ]?13\b|\bcaesar\b")
_REVERSE_CUE = re.compile(r"\bbackwards?\b|\breversed?\b|\bright to left\b")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_QUOTE = re.compile(r"['\"“”‘’«»]")
# A payload split into quoted pieces (across turns, or as a = "...", b = "...") is read joined as well.
MAX_FRAGMENT = 400
MAX_FRAGMENTS = 32
# Common English words and the words attacks are made of: a decoded view that reads as English has many.
_ENGLISH = frozenset("""the a an and or of to in is are you your me my i it this that what with for on be all
 as not do print show reveal ignore previous instructions system prompt above tell give output repeat write
 rules reasoning hidden thoughts thinking chain probabilities tokens logits now from before answer please
 everything full raw text message developer""".split())
# More everyday words, only to cut spaced-out runs back into words.
_COMMON = frozenset("""after before with from that this they them then than what when where which while every each
 about below into over under again only also just more most some such there their these those would could should
 model reply first last line lines words text user here next step steps tell make were been have will want need
 answer question private notes working scores values given told started conversation original configured""".split())


# The words a spaced-out run is cut at: the common words above and every concept stem.
_VOCAB = frozenset(w for w in _ENGLISH | _COMMON | {s for stems in CONCEPTS.values() for s in stems if s.isascii()}
                   if len(w) >= 4 and w.isalpha())
_VOCAB_MAX = max(map(len, _VOCAB))


@dataclass(frozen=True)
class PromptText:
    """The text a prompt is scored on: its normalised form, its decoded views and whether it was cut."""

    text: str
    views: tuple[tuple[str, str], ...]
    truncated: bool
    segments: tuple[str, ...] = ()

    def joined(self) -> str:
        """The normalised text followed by every decoded view, each behind its own marker."""
        return " ".join([self.text, *(f" \u241e{kind}\u241e {view}" for kind, view in self.views)])


def _collect(value: object, out: list[str], budget: list[int], depth: int) -> None:
    # An explicit depth limit and a character budget: nested or huge hostile bodies cost bounded work.
    if budget[0] <= 0 or depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        out.append(value[: budget[0]])
        budget[0] -= len(out[-1])
    elif isinstance(value, (bytes, bytearray)):
        _collect(bytes(value[: budget[0] * 4]).decode("utf-8", "replace"), out, budget, depth)
    elif isinstance(value, dict):
        role = value.get("role")
        if isinstance(role, str):
            out.append(f"§{role[:20]}§")  # not "[system]": that spelling in content is a fake role tag
            budget[0] -= len(out[-1])
        for key in _CONTENT_KEYS:
            if key in value:
                _collect(value[key], out, budget, depth + 1)
        for key, item in value.items():  # anything else a client hid in the body is read last
            if key not in _CONTENT_KEYS and key not in _SKIP_KEYS:
                _collect(item, out, budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if budget[0] <= 0:
                break
            _collect(item, out, budget, depth + 1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append(str(value))


def flatten(prompt: object) -> tuple[str, bool]:
    """One raw text for any prompt (a string, a message list, a request body), and whether it was cut."""
    if isinstance(prompt, str):
        raw = prompt
    else:
        parts: list[str] = []
        _collect(prompt, parts, [4 * MAX_CHARS], 0)
        raw = "\n".join(parts)
    if len(raw) > MAX_CHARS:
        half = MAX_CHARS // 2
        return raw[:half] + "\n…\n" + raw[-half:], True
    return raw, False


def normalise(text: str) -> str:
    """NFKC, casefold, no zero-width or control characters, homoglyphs and spaced-out letters joined."""
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # lone surrogates become U+FFFD
    text = _CONTROL.sub(" ", text.translate(_ZERO_WIDTH))
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _MIXED_SCRIPT.sub(lambda m: m.group(0).translate(_HOMOGLYPHS), text)
    text = _SPACED.sub(lambda m: split_run(re.sub(r"[ .\-_*]", "", m.group(0))), text)
    return _SPACES.sub(" ", text).strip()


def split_run(run: str) -> str:
    """Letters that were spaced out, cut back into words where known words (four letters or more) begin, the cut
    that covers the most letters with known words: "operatorprompt" -> "operator prompt". Unknown letters stay
    with the word before them; a run with no known word stays whole."""
    if len(run) > 200 or not run.isalpha():
        return run
    # best[j]: (letters covered by known words in run[:j], minus half a point a word; where the last word starts)
    best: list[tuple[float, int]] = [(0.0, -1)] + [(-1.0, -1)] * len(run)
    for j in range(1, len(run) + 1):
        best[j] = (best[j - 1][0], -1)
        for i in range(max(0, j - _VOCAB_MAX), j - 3):
            if run[i:j] in _VOCAB and best[i][0] + (j - i) - 0.5 > best[j][0]:
                best[j] = (best[i][0] + (j - i) - 0.5, i)
    starts, j = set(), len(run)
    while j > 0:
        i = best[j][1]
        if i >= 0:
            starts.add(i)
            j = i
        else:
            j -= 1
    starts.discard(0)
    return "".join(" " + ch if k in starts else ch for k, ch in enumerate(run))


def _english(text: str) -> int:
    return sum(w in _ENGLISH for w in _WORD.findall(text.lower()))


def _readable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if text and printable >= 0.9 * len(text) and _WORD.search(text) else None


def quoted_fragments(raw: str) -> list[str]:
    """Quoted strings of two words or more, in order, each on one line: linear in the text, whatever its quotes."""
    out: list[str] = []
    for line in raw.splitlines():
        start = None
        for match in _QUOTE.finditer(line):
            i = match.start()
            before = line[i - 1] if i else " "
            after = line[i + 1] if i + 1 < len(line) else " "
            if start is not None and not after.isalnum() and i - start > 3:
                piece = line[start + 1: i].strip()
                start = None
                if " " in piece:
                    out.append(piece)
                    if len(out) >= MAX_FRAGMENTS:
                        return out
            elif not before.isalnum() and (start is None or i - start > MAX_FRAGMENT):
                start = i
    return out


def _decoded_views(raw: str, norm: str) -> list[tuple[str, str]]:
    views: list[tuple[str, str]] = []
    fragments = quoted_fragments(raw)
    if len(fragments) >= 2:
        views.append(("fragments", " ".join(fragments)))
    for match in _BASE64.finditer(raw):
        blob = match.group(0)
        try:
            padded = blob + "=" * (-len(blob) % 4)
            decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            continue
        text = _readable(decoded)
        if text and len(text) >= 6:
            views.append(("base64", text))
    for match in _HEX.finditer(raw):
        try:
            text = _readable(bytes.fromhex(re.sub(r"[ :]", "", match.group(0))))
        except ValueError:
            continue
        if text:
            views.append(("hex", text))
    if _PERCENT.search(raw):
        views.append(("percent", unquote(raw)))
    base = _english(norm)
    rot = codecs.decode(norm, "rot13")
    # a named encoding is always decoded; an unnamed one when it reads as more English than the text itself
    if _english(rot) >= max(3, 2 * base) or _ROT_CUE.search(norm):
        views.append(("rot13", rot))
    backwards = norm[::-1]
    if _english(backwards) >= max(3, 2 * base) or _REVERSE_CUE.search(norm):
        views.append(("reversed", backwards))
    leet = _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), norm)
    if leet != norm and _english(leet) > base:
        views.append(("leet", leet))
    return views[:MAX_VIEWS]


def segments(raw: str, limit: int) -> list[str]:
    """Lines, sentences and quoted strings of a raw text, normalised, of three words or more: scored one by one
    so that an attack hidden inside code, JSON or a longer honest prompt is not diluted by its cover."""
    out: list[str] = []
    seen: set[str] = set()
    for piece in _SEGMENT.split(raw):
        norm = normalise(piece)
        if norm.count(" ") >= 2 and norm not in seen:
            seen.add(norm)
            out.append(norm)
            if len(out) >= limit:
                break
    return out


def prompt_text(prompt: object, max_segments: int = 0) -> PromptText:
    """Flatten, normalise and decode a prompt (and cut it into up to `max_segments` segments); never raises."""
    raw, truncated = flatten(prompt)
    norm = normalise(raw)
    views = tuple((kind, normalise(view[:MAX_CHARS])) for kind, view in _decoded_views(raw, norm))
    segs: list[str] = []
    if max_segments:
        segs = [seg for seg in segments(raw, max_segments) if seg != norm]
        segs += [view for _, view in views if view != norm][: max(0, max_segments - len(segs))]
    return PromptText(text=norm, views=views, truncated=truncated, segments=tuple(segs))
