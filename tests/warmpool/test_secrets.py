"""Secret stores: rotation without restart, file permissions, atomic writes, layering."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from warmpool.secrets import (
    ENV_NAMES,
    EnvSecretStore,
    FileSecretStore,
    LayeredSecretStore,
    SecretName,
    current_values,
    fingerprint,
    redacted,
)


def test_every_secret_name_has_environment_variables() -> None:
    assert set(ENV_NAMES) == set(SecretName)
    assert ENV_NAMES[SecretName.HF] == ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN")


def test_env_store_reads_at_each_call_and_falls_back_to_alias() -> None:
    environ: dict[str, str] = {"HUGGINGFACE_HUB_TOKEN": "hf_alias_value"}
    store = EnvSecretStore(environ)
    assert store.get(SecretName.HF) == "hf_alias_value"
    environ["HF_TOKEN"] = "hf_primary_value"
    assert store.get(SecretName.HF) == "hf_primary_value"
    environ["HF_TOKEN"] = "   "
    assert store.get(SecretName.HF) == "hf_alias_value"
    assert store.get(SecretName.VAST) is None


def test_env_store_is_read_only_and_says_which_variable() -> None:
    with pytest.raises(NotImplementedError, match="VASTAI_API_KEY"):
        EnvSecretStore({}).set(SecretName.VAST, "new-key")


def test_file_store_rotation_is_visible_at_next_get(tmp_path: Path) -> None:
    writer = FileSecretStore(tmp_path / "secrets")
    reader = FileSecretStore(tmp_path / "secrets")  # another worker on the same directory
    assert reader.get(SecretName.VAST) is None
    writer.set(SecretName.VAST, "first-key-val1")
    assert reader.get(SecretName.VAST) == "first-key-val1"
    writer.set(SecretName.VAST, "second-key-val")  # same size: the inode changes anyway
    assert reader.get(SecretName.VAST) == "second-key-val"


def test_file_store_sees_an_edit_made_outside_set(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path)
    path = store.path(SecretName.CIVITAI)
    path.write_text("civitai-one\n")
    assert store.get(SecretName.CIVITAI) == "civitai-one"
    path.write_text("civitai-two-longer\r\n")
    assert store.get(SecretName.CIVITAI) == "civitai-two-longer"
    path.unlink()
    assert store.get(SecretName.CIVITAI) is None


def test_file_store_caches_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSecretStore(tmp_path)
    store.set(SecretName.HF, "hf_cachedvalue123")
    reads = 0
    real_read_text = Path.read_text

    def counting_read_text(self: Path, *args: object, **kwargs: object) -> str:
        nonlocal reads
        reads += 1
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    for _ in range(5):
        assert store.get(SecretName.HF) == "hf_cachedvalue123"
    assert reads == 1
    store.set(SecretName.HF, "hf_rotatedvalue456")
    assert store.get(SecretName.HF) == "hf_rotatedvalue456"
    assert reads == 2


def test_file_store_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o755)
    store = FileSecretStore(directory)
    store.set(SecretName.ADMIN, "admin-key-123")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path(SecretName.ADMIN).stat().st_mode) == 0o600


def test_file_store_keeps_multiline_pem_and_strips_only_the_trailing_newline(
    tmp_path: Path,
) -> None:
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\ndef\n-----END OPENSSH PRIVATE KEY-----\n"
    store = FileSecretStore(tmp_path)
    store.set(SecretName.SSH_KEY, pem)
    assert store.get(SecretName.SSH_KEY) == pem.rstrip("\n")
    assert store.path(SecretName.SSH_KEY).read_text() == pem


def test_file_store_write_is_atomic_and_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSecretStore(tmp_path)
    store.set(SecretName.VAST, "old-key-value")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.set(SecretName.VAST, "new-key-value")
    monkeypatch.undo()
    assert store.get(SecretName.VAST) == "old-key-value"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vast"]


def test_concurrent_readers_never_see_a_partial_value(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path)
    values = ["a" * 4000, "b" * 9000]
    store.set(SecretName.HF, values[0])
    seen: set[str | None] = set()
    stop = threading.Event()

    def read() -> None:
        reader = FileSecretStore(tmp_path)
        while not stop.is_set():
            seen.add(reader.get(SecretName.HF))

    thread = threading.Thread(target=read)
    thread.start()
    for i in range(60):
        store.set(SecretName.HF, values[i % 2])
    stop.set()
    thread.join()
    assert seen <= set(values)


def test_file_store_refuses_an_empty_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        FileSecretStore(tmp_path).set(SecretName.HF, "\n")


def test_version_is_a_short_fingerprint_that_changes_on_rotation(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path)
    assert store.version(SecretName.VAST) == "unset"
    store.set(SecretName.VAST, "key-one-value")
    first = store.version(SecretName.VAST)
    store.set(SecretName.VAST, "key-two-value")
    second = store.version(SecretName.VAST)
    assert len(first) == 8 and int(first, 16) >= 0
    assert first != second
    assert "key" not in first + second
    assert fingerprint("key-two-value") == second


def test_layered_store_prefers_the_file_so_a_rotation_wins(tmp_path: Path) -> None:
    env = EnvSecretStore({"VASTAI_API_KEY": "env-key-value", "CIVITAI_TOKEN": "env-civitai"})
    files = FileSecretStore(tmp_path)
    store = LayeredSecretStore([files, env])
    assert store.get(SecretName.VAST) == "env-key-value"
    store.set(SecretName.VAST, "rotated-key-value")  # env is read-only: the file store takes it
    assert store.get(SecretName.VAST) == "rotated-key-value"
    assert store.version(SecretName.VAST) == fingerprint("rotated-key-value")
    assert store.get(SecretName.CIVITAI) == "env-civitai"
    assert store.get(SecretName.HF) is None


def test_layered_store_without_a_writable_store_refuses_to_set() -> None:
    store = LayeredSecretStore([EnvSecretStore({})])
    with pytest.raises(NotImplementedError, match="no writable store"):
        store.set(SecretName.HF, "hf_anything123")


def test_reprs_and_redacted_never_show_values(tmp_path: Path) -> None:
    env = EnvSecretStore({"VASTAI_API_KEY": "super-secret-key"})
    store = LayeredSecretStore([FileSecretStore(tmp_path), env])
    assert "super-secret-key" not in repr(store)
    assert redacted("super-secret-key") == "***"
    assert redacted(None) == "unset"
    assert redacted("") == "unset"


def test_current_values_lists_every_set_secret() -> None:
    env = EnvSecretStore({"VASTAI_API_KEY": "vast-key-1", "ADMIN_API_KEY": "admin-key-1"})
    assert sorted(current_values(env)) == ["admin-key-1", "vast-key-1"]
