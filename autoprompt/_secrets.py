"""Secrets are redacted by value: every value a run knows to be secret is replaced before it is written.

Filtering settings by *name* (``api_key``, ``password``) misses the secrets that travel inside other
values: a key in an ``api_base`` query string, a password in a storage URL, a token echoed in an
exception text. So autoprompt keeps the secret *values* it learns of in one process-wide set and
every file it writes (:func:`autoprompt.store.atomic_write`), every log line (:class:`RedactingFilter`)
and every error line of the CLI goes through :func:`redact`:

- API keys given to an :class:`autoprompt.lms.LMSpec` (``api_key``, or read from ``api_key_env``);
- the values of the environment's credential variables (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET*``,
  ``*PASSWORD*``, ``*_CREDENTIALS``, ...: a name only says where to look, the value is what is redacted);
- the password of URLs (``api_base``, storage URLs), the user of an http(s) URL without one
  (``https://TOKEN@host``), and their query-string values.

Values shorter than 6 characters are not registered (``"none"``, ports, ``"1"`` would redact ordinary text).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlsplit

__all__ = ["MASK", "RedactingFilter", "register_secret", "register_url", "redact", "redact_obj", "secrets_from_env"]

MASK = "***"
MIN_LENGTH = 6
#: environment variable names whose values are credentials (their values are registered, not the names)
_ENV_NAME = re.compile(r"(API_?KEY|_KEY$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_PAT$)", re.IGNORECASE)

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: Any) -> None:
    """Remember ``value`` as a secret: from now on it never reaches a file or a log line."""
    global _pattern
    if not isinstance(value, str) or len(value.strip()) < MIN_LENGTH:
        return
    value = value.strip()
    with _lock:
        if value in _values:
            return
        _values.add(value)
        # longest first, so that a secret containing another is masked whole
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def register_url(url: Any) -> None:
    """Register the secrets a URL carries: its password (or a lone user, e.g. ``https://TOKEN@host``) and
    its query-string values."""
    if not isinstance(url, str) or not url:
        return
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return
    if password:
        register_secret(password)
    elif user and parts.scheme in ("http", "https"):  # https://TOKEN@host; a database user alone is no secret
        register_secret(user)
    for _, value in parse_qsl(parts.query, keep_blank_values=False):
        register_secret(value)


def secrets_from_env(environ: Any = None) -> None:
    """Register the values of the environment's credential variables (``OPENAI_API_KEY``, ``HF_TOKEN``, ...)."""
    for name, value in (environ if environ is not None else os.environ).items():
        if _ENV_NAME.search(name):
            register_secret(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str):
        return text
    return pattern.sub(MASK, text)


def redact_obj(value: Any) -> Any:
    """A JSON-like value with every string redacted (keys too)."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value


def clear() -> None:
    """Forget every registered secret (for tests; a process that wrote files with them keeps them masked)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None


def known_secrets() -> Iterable[str]:
    """The registered values (for tests)."""
    with _lock:
        return frozenset(_values)


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in the formatted message (and drops its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args = redact(message), None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True
