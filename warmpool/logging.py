"""How is the service logged without ever printing a secret? structlog setup with redaction.

Both structlog events and stdlib records (the Temporal SDK, httpx, paramiko log with `logging`)
end in one root handler whose `structlog.stdlib.ProcessorFormatter` renders JSON (not a TTY) or
console output (a TTY). Redaction happens twice on purpose:
- a structlog processor redacts each event and its fields (recursively) before rendering, and
  again after exceptions are rendered to text (tracebacks quote messages);
- a `logging.Filter` on every root handler redacts `record.msg`/`args`, so a handler that does
  not use our formatter cannot leak either.

What is redacted: every current secret value (asked from a callable on each record, so a rotated
token is covered at once; values seen before stay covered, since an old token may still appear
in an in-flight error), and text that looks like a secret: `hf_...` tokens, `Bearer x`,
`Basic x`, `token=x`/`api_key=x`/`"password": "x"` pairs, PEM private keys, and long
hex/base64 strings next to a key/token/secret word. Fields whose name says secret (`api_key`,
`token`, `instance_secret`, ...) are hidden whole.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words; none of our secrets are

_WORDS = r"(?:api[_-]?key|apikey|access[_-]?token|token|secret|password|passwd|credentials?)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S
        ),
        MASK,
    ),
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}"), MASK),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), r"\1\2" + MASK),
    # key=value, as in query strings, env dumps and logfmt
    (re.compile(rf"(?i)([\w-]*{_WORDS})=[^\s&\"',;)}}\]]+"), r"\1=" + MASK),
    # "key": "value" and 'key': 'value', as in JSON bodies and dict reprs
    (
        re.compile(rf"(?i)([\"'][\w-]*{_WORDS}[\"']\s*:\s*)([\"'])[^\"']*\2"),
        r"\1\2" + MASK + r"\2",
    ),
    # a long opaque string right after a key/token/secret word: "invalid key 3f9a...", "token: ..."
    (
        re.compile(r"(?i)((?:key|token|secret|password)s?\W{1,3})[A-Za-z0-9+/_=-]{32,}"),
        r"\1" + MASK,
    ),
)
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|[_-])(?:api[_-]?key|apikey|token|secret|password|passwd|authorization"
    r"|private[_-]?key|credentials?)$"
)


def _mask_values(text: str, values: Iterable[str]) -> str:
    for value in sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secret values and anything that looks like a secret masked.

    Use it on exception messages before they leave an activity (Temporal stores them in
    history unless the failure converter encodes them).
    """
    text = _mask_values(text, secrets)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Redacts strings and nested log fields, asking `secret_values` for the current secrets."""

    def __init__(self, secret_values: Callable[[], Iterable[str]]) -> None:
        self._secret_values = secret_values
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _values(self) -> set[str]:
        # A store that logged while being read would recurse into us: use what we know.
        if getattr(self._local, "busy", False):
            return self._seen
        self._local.busy = True
        try:
            current = {v for v in self._secret_values() if v}
        except Exception:  # a failing store must not stop logging; known values still apply
            current = set()
        finally:
            self._local.busy = False
        with self._lock:
            self._seen |= current
            return set(self._seen)

    def text(self, text: str) -> str:
        return redact(text, self._values())

    def value(self, value: Any) -> Any:
        return self._value(value, self._values())

    def _value(self, value: Any, secrets: set[str]) -> Any:
        if isinstance(value, str):
            return redact(value, secrets)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {k: self._field(str(k), v, secrets) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(v, secrets) for v in value]
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, BaseException):
            return redact(f"{type(value).__name__}: {value}", secrets)
        # Renderers would call repr() later, after redaction: do it now instead.
        return redact(repr(value), secrets)

    def _field(self, key: str, value: Any, secrets: set[str]) -> Any:
        if _SECRET_FIELD.search(key) and isinstance(value, str | bytes) and value:
            return MASK
        return self._value(value, secrets)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """The structlog processor: every field except structlog's own plumbing."""
        secrets = self._values()
        for key, value in event_dict.items():
            if key == "exc_info" or key.startswith("_"):
                continue  # rendered to text (then redacted) by format_exc_info
            event_dict[key] = self._field(key, value, secrets)
        return event_dict


class RedactingFilter(logging.Filter):
    """Redacts stdlib records in place; attached to handlers, since logger filters miss
    records propagated from child loggers."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # a structlog event, already redacted by its chain
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: keep everything, as text
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.redactor.text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return True


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "INFO",
    secret_values: Callable[[], Iterable[str]],
    stream: TextIO | None = None,
) -> Redactor:
    """Configure structlog and the root logger once per process (calling again reconfigures).

    `json=None` picks console output on a TTY and JSON otherwise. `secret_values` is called on
    every record, e.g. `lambda: current_values(store)` from `warmpool.secrets`. Returns the
    redactor, for handlers added later (`handler.addFilter(RedactingFilter(redactor))`).
    """
    out = stream if stream is not None else sys.stderr
    use_json = not out.isatty() if json is None else json
    redactor = Redactor(secret_values)
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.filter_by_level,
            structlog.processors.StackInfoRenderer(),
            redactor,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # so structlog.testing.capture_logs works everywhere
    )
    handler = _OurHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # Plain-text tracebacks (no locals, unlike rich's) that can then be redacted.
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    log_filter = RedactingFilter(redactor)
    for h in root.handlers:
        for old_filter in [f for f in h.filters if isinstance(f, RedactingFilter)]:
            h.removeFilter(old_filter)
        h.addFilter(log_filter)
    return redactor


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
