"""One redaction for everything a run records about itself: command lines, URLs, settings and cards.

Keys are never written into an artifact. Every command that records its command line or settings (model
cards, results JSON, reports, harvest stores, logs) passes it through here first.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Options whose value is a secret: --api-key, --upstream-api-key, --admin-key, --hf-token, --password...
# (--watermark-key-file names a file, which is not a secret.)
_SECRET_OPTION = re.compile(r"^--?(?:[\w-]*[-_])?(?:api[-_]?key|key|token|secret|password|passwd)$", re.I)
_SECRET_PARAM = re.compile(r"(?:api[-_]?key|key|token|secret|password|passwd|sig|signature|auth)", re.I)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")
# The same options inside an already joined command line.
_SECRET_OPTION_IN_TEXT = re.compile(
    r"(?i)(?<!\S)(--?(?:[\w-]*[-_])?(?:api[-_]?key|key|token|secret|password|passwd))(=|\s+)(?!-)(\S+)")


def redact_url(url: str) -> str:
    """The URL with its user information and any secret-looking query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # With a password keep the user name (it says which account); a lone user part may be a token.
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with known secret values, bearer tokens and URL credentials masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter "secrets" would mask ordinary words
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_OPTION_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_argv(argv: Iterable[str], secrets: Iterable[str | None] = ()) -> list[str]:
    """Command-line arguments with the values of secret options (`--api-key K`, `--api-key=K`) masked."""
    known = [s for s in secrets if s]
    out: list[str] = []
    args = [str(a) for a in argv]
    for i, arg in enumerate(args):
        name, eq, _ = arg.partition("=")
        if i and _SECRET_OPTION.match(args[i - 1]) and "=" not in args[i - 1]:
            out.append(MASK)
        elif eq and _SECRET_OPTION.match(name):
            out.append(f"{name}={MASK}")
        else:
            out.append(redact_text(arg, known))
    return out


def secret_values(argv: Iterable[str]) -> list[str]:
    """The values given to secret options on a command line (to mask them wherever they are echoed)."""
    args = [str(a) for a in argv]
    found = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and _SECRET_OPTION.match(name):
            found.append(value)
        elif i and _SECRET_OPTION.match(args[i - 1]) and "=" not in args[i - 1]:
            found.append(arg)
    return found


def command_line(argv: Iterable[str] | None = None, program: str | None = None,
                 secrets: Iterable[str | None] = ()) -> str:
    """The redacted command line of this process (or of `argv`), as results and cards record it."""
    args = list(sys.argv[1:] if argv is None else argv)
    program = program or Path(sys.argv[0]).name
    if program in ("__main__.py", "-m", "-c"):  # `python -m stillwatch` reads better as the command
        program = "stillwatch"
    return " ".join([program, *redact_argv(args, secrets)])


def redact(value: Any, secrets: Iterable[str | None] = ()) -> Any:
    """A copy of a JSON-like value (cards, settings, results) with every string redacted."""
    known = [s for s in secrets if s]
    if isinstance(value, str):
        return redact_text(value, known)
    if isinstance(value, dict):
        return {k: redact(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, known) for v in value]
    return value
