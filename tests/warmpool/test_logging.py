"""Log redaction: known secrets (including rotated ones), secret-looking text, stdlib records."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from warmpool.logging import (
    RedactingFilter,
    Redactor,
    configure_logging,
    get_logger,
    redact,
)

VAST_KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
FAKE_HF = "hf_AbCdEfGhIjKlMnOp"


@pytest.fixture
def secrets() -> list[str]:
    return [VAST_KEY, FAKE_HF]


@pytest.fixture
def output(secrets: list[str]) -> Iterator[io.StringIO]:
    """configure_logging into a buffer (JSON); root logging restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_filters = {h: h.filters[:] for h in saved_handlers}
    stream = io.StringIO()
    configure_logging(json=True, level="DEBUG", secret_values=lambda: secrets, stream=stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for handler, filters in saved_filters.items():
        handler.filters[:] = filters
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer s3cr3t-opaque.value", "s3cr3t-opaque.value"),
        ("GET /api/v1/models?token=civ-123-abc&limit=1", "civ-123-abc"),
        ("url https://x.test/?api_key=k-999&x=1", "k-999"),
        ("OPEN_BUTTON_TOKEN=portal-secret-1 WEB_PASSWORD=pw-2", "portal-secret-1"),
        ('{"id": 1, "api_key": "vast-raw-key-1", "email": "a@b"}', "vast-raw-key-1"),
        ("{'hf_token': 'hf-ish-value'}", "hf-ish-value"),
        ("using hf_ZyXwVuTsRqPoNm for download", "hf_ZyXwVuTsRqPoNm"),
        ("Invalid key 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c", "9f86d081884c7d659a2f"),
        ("secret: c2VjcmV0LWJhc2U2NC12YWx1ZS1oZXJlLTEyMzQ1Njc4", "c2VjcmV0LWJhc2U2NC12"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        (
            "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\n"
            "-----END OPENSSH PRIVATE KEY-----",
            "b3BlbnNzaA",
        ),
    ],
)
def test_redact_patterns(text: str, leak: str) -> None:
    result = redact(text)
    assert leak not in result
    assert "***" in result


def test_redact_keeps_ordinary_text() -> None:
    text = "slot 3 READY at 10.0.0.1:41022, dph 0.42, machine 1234, tokens ok, key id k2"
    assert redact(text) == text
    assert redact("offer 12345678901234567890123456789012345 found") == (
        "offer 12345678901234567890123456789012345 found"
    )


def test_redact_known_values_anywhere_but_not_tiny_ones() -> None:
    assert redact(f"x{VAST_KEY}y", [VAST_KEY]) == "x***y"
    assert redact("a b c", ["a"]) == "a b c"


def test_redactor_covers_rotated_values_and_keeps_old_ones() -> None:
    current = ["first-secret-value"]
    redactor = Redactor(lambda: current)
    assert redactor.text("k=first-secret-value") == "k=***"
    current[:] = ["second-secret-value"]
    assert redactor.text("second-secret-value and first-secret-value") == "*** and ***"


def test_redactor_survives_a_failing_secret_source() -> None:
    calls = 0

    def flaky() -> list[str]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("store unreadable")
        return ["remembered-secret"]

    redactor = Redactor(flaky)
    assert redactor.text("remembered-secret") == "***"
    assert redactor.text("still remembered-secret") == "still ***"


def test_structlog_processor_redacts_event_and_nested_fields(secrets: list[str]) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque({VAST_KEY})"

    with capture_logs(processors=[Redactor(lambda: secrets)]) as logs:
        structlog.get_logger().info(
            f"calling with {VAST_KEY}",
            headers={"Authorization": f"Bearer {FAKE_HF}", "Accept": "json"},
            nested=[{"deep": [f"token={FAKE_HF}"]}, ("tuple", VAST_KEY)],
            api_key="short",
            instance_secret="whatever-it-is",
            token_version="1a2b3c4d",
            error=RuntimeError(f"bad key {VAST_KEY}"),
            obj=Opaque(),
            count=3,
        )
    [event] = logs
    dumped = json.dumps(event)
    assert VAST_KEY not in dumped and FAKE_HF not in dumped
    assert event["event"] == "calling with ***"
    assert event["headers"] == {"Authorization": "***", "Accept": "json"}
    assert event["api_key"] == "***" and event["instance_secret"] == "***"
    assert event["token_version"] == "1a2b3c4d"
    assert event["count"] == 3
    assert event["error"] == "RuntimeError: bad key ***"


def test_configured_logger_writes_redacted_json(output: io.StringIO) -> None:
    log = get_logger("warmpool.test")
    log.info("rent", key=VAST_KEY, url=f"http://x/?token={FAKE_HF}")
    [line] = lines(output)
    assert line["event"] == "rent"
    assert line["logger"] == "warmpool.test"
    assert line["level"] == "info"
    assert VAST_KEY not in output.getvalue() and FAKE_HF not in output.getvalue()


def test_exception_tracebacks_are_redacted(output: io.StringIO) -> None:
    log = get_logger("warmpool.test")
    try:
        raise ValueError(f"provider said: invalid key {VAST_KEY}")
    except ValueError:
        log.exception("rent failed")
        logging.getLogger("temporalio.activity").exception("activity failed")
    text = output.getvalue()
    assert "ValueError" in text and "provider said" in text
    assert VAST_KEY not in text
    assert len(lines(output)) == 2


def test_stdlib_records_are_redacted_through_the_formatter(output: io.StringIO) -> None:
    logging.getLogger("temporalio.worker").warning(
        "activity %s failed with %s", "vast.rent", f"Bearer {FAKE_HF}"
    )
    [line] = lines(output)
    assert line["event"] == "activity vast.rent failed with Bearer ***"
    assert line["logger"] == "temporalio.worker"


def test_filter_protects_other_root_handlers(secrets: list[str]) -> None:
    root = logging.getLogger()
    plain = io.StringIO()
    handler = logging.StreamHandler(plain)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)
    saved_level = root.level
    try:
        configure_logging(json=True, secret_values=lambda: secrets, stream=io.StringIO())
        logging.getLogger("httpx").info("HTTP Request: GET http://x/?api_key=%s", VAST_KEY)
        try:
            raise RuntimeError(FAKE_HF)
        except RuntimeError:
            logging.getLogger("paramiko").error("boom", exc_info=True)
    finally:
        root.removeHandler(handler)
        for h in root.handlers[:]:
            if type(h).__name__ == "_OurHandler":
                root.removeHandler(h)
        root.setLevel(saved_level)
        structlog.reset_defaults()
    text = plain.getvalue()
    assert "api_key=***" in text and "RuntimeError" in text
    assert VAST_KEY not in text and FAKE_HF not in text
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)


def test_configure_twice_keeps_one_handler(output: io.StringIO, secrets: list[str]) -> None:
    second = io.StringIO()
    configure_logging(json=True, secret_values=lambda: secrets, stream=second)
    logging.getLogger("x").warning("once")
    assert output.getvalue() == ""
    assert len(lines(second)) == 1
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_OurHandler"]
    assert len(ours) == 1
    assert all(
        sum(isinstance(f, RedactingFilter) for f in h.filters) == 1
        for h in logging.getLogger().handlers
    )


def test_console_renderer_when_not_json(secrets: list[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        configure_logging(json=None, secret_values=lambda: secrets, stream=stream)  # not a TTY
        get_logger("a").info("hello", token=FAKE_HF)
        configure_logging(json=False, secret_values=lambda: secrets, stream=stream)
        get_logger("b").info("console line", token=FAKE_HF)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()
    first, second = stream.getvalue().splitlines()
    assert json.loads(first)["event"] == "hello"
    assert "console line" in second and not second.startswith("{")
    assert FAKE_HF not in stream.getvalue()
