"""Does LogFollower deliver every log line exactly once, through drops, restarts and truncation?

Tests marked `ssh` run against a real OpenSSH sshd on loopback (tests/sshd.py); `match_fatal`,
key parsing and line splitting need none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from tests.sshd import Sshd, ed25519_key, free_port, rsa_key, running_sshd
from warmpool.models import SSH_FATAL_PATTERNS
from warmpool.ssh import (
    LogCursor,
    LogFollower,
    LogLine,
    SshAuthError,
    SshConnectError,
    load_private_key,
    match_fatal,
    split_lines,
)

MakeFollower = Callable[..., LogFollower]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    home = tmp_path / "sshd"
    home.mkdir()
    with running_sshd(home) as server:
        yield server


@pytest.fixture
async def make_follower(sshd: Sshd) -> AsyncIterator[MakeFollower]:
    """Builds followers for the test's sshd and closes them all afterwards."""
    made: list[LogFollower] = []

    def make(*paths: Path, key_pem: str | None = None, **options: Any) -> LogFollower:
        follower = LogFollower(
            sshd.host,
            sshd.port,
            key_pem or sshd.client_key_pem,
            [str(path) for path in paths],
            username=sshd.username,
            **options,
        )
        made.append(follower)
        return follower

    yield make
    for follower in made:
        await follower.close()


def append(path: Path, data: str | bytes) -> None:
    with path.open("ab") as out:
        out.write(data.encode() if isinstance(data, str) else data)


async def collect(
    follower: LogFollower, cursor: LogCursor, count: int, timeout_s: float = 5.0
) -> tuple[list[LogLine], LogCursor]:
    """Poll until `count` lines have arrived; fails on more, or on timeout."""
    got: list[LogLine] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)}/{count} lines: {got}"
        lines, cursor = await follower.poll(cursor)
        got.extend(lines)
        if not lines:
            await asyncio.sleep(0.02)
    assert len(got) == count, [line.text for line in got]
    return got, cursor


def assert_contiguous(lines: list[LogLine], start: int = 0) -> None:
    """Each line starts where the previous one ended: no byte skipped, none read twice."""
    for line in lines:
        assert line.offset == start, line
        assert line.end > line.offset
        start = line.end


@pytest.mark.ssh
async def test_appended_lines_arrive_in_order_at_exact_byte_offsets(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    log = tmp_path / "provisioning.log"
    append(log, "starting\nhéllo wörld\n")
    follower = make_follower(log)

    first, cursor = await collect(follower, LogCursor(), 2)
    append(log, "downloading model\n")
    append(log, "done\n")
    second, cursor = await collect(follower, cursor, 2)

    lines = first + second
    assert [line.text for line in lines] == ["starting", "héllo wörld", "downloading model", "done"]
    assert_contiguous(lines)
    assert cursor.position(str(log)) == (0, log.stat().st_size)
    assert await follower.poll(cursor) == ([], cursor)


@pytest.mark.ssh
async def test_a_partial_line_is_emitted_only_once_complete(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    log = tmp_path / "comfyui.log"
    append(log, "complete\npart")
    follower = make_follower(log)

    lines, cursor = await collect(follower, LogCursor(), 1)
    assert [line.text for line in lines] == ["complete"]
    assert cursor.position(str(log)) == (0, len("complete\n"))
    assert (await follower.poll(cursor))[0] == []

    append(log, "ial line\n")
    lines, cursor = await collect(follower, cursor, 1)
    assert [(line.offset, line.text) for line in lines] == [(9, "partial line")]


@pytest.mark.ssh
async def test_sshd_killed_and_restarted_mid_follow_loses_and_repeats_nothing(
    tmp_path: Path, sshd: Sshd, make_follower: MakeFollower
) -> None:
    log = tmp_path / "provisioning.log"
    expected = [f"line {i}" for i in range(12)]
    append(log, "".join(f"{text}\n" for text in expected[:4]))
    follower = make_follower(log)
    seen, cursor = await collect(follower, LogCursor(), 4)

    append(log, "line 4\nline 5\nli")
    sshd.kill()
    with pytest.raises(SshConnectError):
        await follower.poll(cursor)
    assert not follower.connected
    append(log, "ne 6\nline 7\n")
    sshd.start()

    more, cursor = await collect(follower, cursor, 4)  # the same follower reconnects
    seen += more
    append(log, "".join(f"{text}\n" for text in expected[8:]))
    rest, cursor = await collect(make_follower(log), cursor, 4)  # a new worker resumes too
    seen += rest

    assert [line.text for line in seen] == expected
    assert_contiguous(seen)


@pytest.mark.ssh
async def test_a_silent_peer_is_declared_dead_after_the_missed_keepalives(
    tmp_path: Path, sshd: Sshd, make_follower: MakeFollower
) -> None:
    log = tmp_path / "provisioning.log"
    append(log, "one\n")
    follower = make_follower(log, keepalive_interval_s=0.25, keepalive_max_missed=2)
    _, cursor = await collect(follower, LogCursor(), 1)

    sshd.freeze()
    started = time.monotonic()
    with pytest.raises(SshConnectError, match="sent nothing for 0.5s"):
        await follower.poll(cursor)
    assert 0.4 < time.monotonic() - started < 3
    sshd.thaw()

    append(log, "two\n")
    lines, _ = await collect(follower, cursor, 1)
    assert [line.text for line in lines] == ["two"]


@pytest.mark.ssh
async def test_a_missing_file_is_not_yet_and_is_followed_once_created(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    present, missing = tmp_path / "present.log", tmp_path / "later.log"
    append(present, "a\n")
    follower = make_follower(missing, present)

    lines, cursor = await collect(follower, LogCursor(), 1)
    assert [(line.path, line.text) for line in lines] == [(str(present), "a")]
    assert cursor.position(str(missing)) == (0, 0)

    append(missing, "created\n")
    lines, _ = await collect(follower, cursor, 1)
    assert [(line.path, line.text) for line in lines] == [(str(missing), "created")]


@pytest.mark.ssh
async def test_a_truncated_file_is_read_again_under_a_new_epoch(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    log = tmp_path / "comfyui.log"
    append(log, "old run 1\nold run 2\n")
    follower = make_follower(log)
    _, cursor = await collect(follower, LogCursor(), 2)

    log.write_text("new run\n")  # what `: > comfyui.log` on a ComfyUI restart does
    lines, cursor = await collect(follower, cursor, 1)
    assert [(line.epoch, line.offset, line.text) for line in lines] == [(1, 0, "new run")]
    assert cursor.position(str(log)) == (1, len("new run\n"))


@pytest.mark.ssh
async def test_terminal_noise_is_cleaned_and_an_overlong_line_does_not_stall(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    log = tmp_path / "provisioning.log"
    append(log, "\x1b[32mgreen\x1b[0m\r\n10%\r55%\r100%\n" + "x" * 150 + "\nend\n")
    follower = make_follower(log, read_chunk_bytes=64)

    lines, _ = await collect(follower, LogCursor(), 6)
    texts = [line.text for line in lines]
    assert texts[:2] == ["green", "100%"]
    assert "".join(texts[2:5]) == "x" * 150
    assert texts[5] == "end"
    assert_contiguous(lines)


@pytest.mark.ssh
async def test_a_key_the_server_does_not_accept_is_an_auth_error(
    tmp_path: Path, make_follower: MakeFollower
) -> None:
    stranger_pem, _ = ed25519_key()
    follower = make_follower(tmp_path / "x.log", key_pem=stranger_pem)
    with pytest.raises(SshAuthError, match="rejected the SSH key") as raised:
        await follower.poll(LogCursor())
    assert "PRIVATE KEY" not in str(raised.value)
    assert not follower.connected


@pytest.mark.ssh
async def test_an_rsa_key_in_openssh_format_logs_in(
    tmp_path: Path, sshd: Sshd, make_follower: MakeFollower
) -> None:
    pem, public_line = rsa_key(serialization.PrivateFormat.OpenSSH)
    sshd.authorize(public_line)
    log = tmp_path / "x.log"
    append(log, "rsa works\n")
    lines, _ = await collect(make_follower(log, key_pem=pem), LogCursor(), 1)
    assert lines[0].text == "rsa works"


@pytest.mark.ssh
async def test_a_refused_connection_is_a_connect_error() -> None:
    follower = LogFollower("127.0.0.1", free_port(), ed25519_key()[0], ["/x.log"])
    with pytest.raises(SshConnectError, match="cannot connect"):
        await follower.poll(LogCursor())


def test_keys_load_in_pem_and_openssh_formats() -> None:
    assert load_private_key(ed25519_key()[0]).get_name() == "ssh-ed25519"
    assert load_private_key(rsa_key()[0]).get_name() == "ssh-rsa"


def test_an_unparsable_key_fails_without_showing_it() -> None:
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END"
    with pytest.raises(SshAuthError) as raised:
        LogFollower("127.0.0.1", 22, secret, ["/x.log"])
    assert "c2VjcmV0" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_the_repr_shows_the_target_and_never_the_key() -> None:
    pem, _ = ed25519_key()
    follower = LogFollower("10.0.0.1", 2222, pem, ["/var/log/a.log"])
    assert "root@10.0.0.1:2222" in repr(follower)
    assert pem.splitlines()[1] not in repr(follower) + str(vars(follower))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("OSError: [Errno 28] No space left on device", "no space left on device"),
        ("RuntimeError: CUDA error: an illegal memory access", "CUDA error"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB", "out of memory"),
        ("ERROR: Failed to download model.safetensors", "failed to download"),
        ("urllib.error.HTTPError: HTTP Error 401: Unauthorized", "HTTP Error 401"),
        ("aria2c: download failed (HTTP Error 403)", "download failed"),
        ("Downloading model.safetensors: 45%", None),
        ("To see the GUI go to: http://127.0.0.1:18188", None),
    ],
)
def test_default_fatal_patterns(line: str, expected: str | None) -> None:
    assert match_fatal(line, SSH_FATAL_PATTERNS) == expected


def test_fatal_patterns_are_case_insensitive_substrings_or_regexes() -> None:
    assert match_fatal("SEGMENTATION FAULT", ["segmentation fault"]) == "segmentation fault"
    assert match_fatal("process exited with code 137", [r"exit(ed)? with code [1-9]"]) is not None
    assert match_fatal("exited with code 0", [r"exit(ed)? with code [1-9]"]) is None
    assert match_fatal("got HTTP Error 401 (auth) here", ["HTTP Error 401 (auth)"]) is not None
    assert match_fatal("unbalanced [ bracket", ["[ bracket"]) == "[ bracket"
    assert match_fatal("anything", []) is None


@given(
    lines=st.lists(st.text(alphabet="ab é\t", max_size=12), max_size=12),
    tail=st.text(alphabet="ab", max_size=5),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_reading_from_the_cursor_in_any_chunk_size_tiles_the_complete_lines(
    lines: list[str], tail: str, chunk: int
) -> None:
    """The follower's loop without a network: read `chunk` bytes at the cursor, move past lines."""
    data = ("".join(f"{line}\n" for line in lines) + tail).encode()
    got: list[LogLine] = []
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + chunk]
        new = split_lines(piece, path="p", epoch=0, start=offset, force=len(piece) >= chunk)
        if not new:
            break  # only an incomplete last line is left
        got += new
        offset = new[-1].end
    assert_contiguous(got)
    whole = split_lines(data, path="p", epoch=0, start=0, force=False)
    if len(tail) < chunk and all(len(line.encode()) + 1 <= chunk for line in lines):
        # no run of bytes without a newline fills a read: nothing had to be cut
        assert [line.text for line in got] == lines == [line.text for line in whole]
    assert b"".join(data[line.offset : line.end] for line in got) == data[:offset]
