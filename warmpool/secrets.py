"""Where does a secret come from right now? Secret stores that an operator can rotate at runtime.

Activities read a secret at call time (never at import, never as an argument), so a token written by
`starter.py tokens set SERVICE` reaches every worker on its next call without a restart. The file
store wins over the environment in `LayeredSecretStore`, so a rotation overrides a stale `.env`.
Nothing here logs or reprs a value: `version()` gives a short fingerprint to show that a rotation
happened, and `redacted()` is what status and reprs print.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from warmpool.settings import Settings

UNSET = "unset"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class SecretName(StrEnum):
    """Every secret the service knows; the value is also the file name in a `FileSecretStore`."""

    VAST = "vast"
    HF = "hf"
    CIVITAI = "civitai"
    INSTANCE = "instance"  # pool secret from which per-instance portal tokens are derived
    SSH_KEY = "ssh_key"  # private key, PEM
    ADMIN = "admin"


ENV_NAMES: dict[SecretName, tuple[str, ...]] = {
    SecretName.VAST: ("VASTAI_API_KEY",),
    SecretName.HF: ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN"),
    SecretName.CIVITAI: ("CIVITAI_TOKEN",),
    SecretName.INSTANCE: ("WARMPOOL_INSTANCE_SECRET",),
    SecretName.SSH_KEY: ("WARMPOOL_SSH_KEY",),
    SecretName.ADMIN: ("ADMIN_API_KEY",),
}


class SecretStore(Protocol):
    """A source of secrets that is read on every call, so rotations need no restart."""

    def get(self, name: SecretName) -> str | None:
        """The current value, or None when unset or empty."""
        ...

    def set(self, name: SecretName, value: str) -> None:
        """Store a new value; read-only stores raise NotImplementedError."""
        ...

    def version(self, name: SecretName) -> str:
        """A short non-secret fingerprint of the current value, or "unset"."""
        ...


def fingerprint(value: str | None) -> str:
    """First 8 hex digits of the value's SHA-256: shows a rotation without revealing the value."""
    if not value:
        return UNSET
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def redacted(value: str | None) -> str:
    """What a repr or a status shows instead of a secret."""
    return "***" if value else UNSET


def current_values(store: SecretStore) -> list[str]:
    """Every secret value set now: what log redaction must hide (see `warmpool.logging`)."""
    return [value for name in SecretName if (value := store.get(name))]


class EnvSecretStore:
    """Secrets from the process environment, read at each call; read-only.

    `environ` is injectable for tests; it defaults to `os.environ` itself (not a copy), so a value
    changed in the environment is seen at the next call.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return "EnvSecretStore()"

    def get(self, name: SecretName) -> str | None:
        for variable in ENV_NAMES[name]:
            value = self._environ.get(variable, "").strip()
            if value:
                return value
        return None

    def set(self, name: SecretName, value: str) -> None:
        raise NotImplementedError(
            f"the environment is read-only: cannot set {', '.join(ENV_NAMES[name])}"
        )

    def version(self, name: SecretName) -> str:
        return fingerprint(self.get(name))


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size): any rewrite or rename changes it
    value: str | None


class FileSecretStore:
    """One file per secret in a private directory; rotation-safe and cheap to poll.

    `get` costs one `stat` and re-reads the file only when its inode, mtime or size changed.
    `set` writes a temporary file in the same directory and renames it over the old one, so a
    reader never sees a half-written secret. Files are 0600 in a 0700 directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[SecretName, _Cached] = {}
        self._lock = threading.Lock()  # activities may read from several threads

    def __repr__(self) -> str:
        return f"FileSecretStore({str(self.directory)!r})"

    def path(self, name: SecretName) -> Path:
        return self.directory / name.value

    def get(self, name: SecretName) -> str | None:
        path = self.path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            with self._lock:
                self._cache.pop(name, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached.stamp == stamp:
                return cached.value
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:  # removed between stat and read
            return None
        value = text.rstrip("\r\n") or None
        with self._lock:
            self._cache[name] = _Cached(stamp, value)
        return value

    def set(self, name: SecretName, value: str) -> None:
        value = value.rstrip("\r\n")
        if not value.strip():
            raise ValueError(f"refusing to store an empty value for secret {name.value!r}")
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.directory, _DIR_MODE)
        # mkstemp creates the file with mode 0600 before any byte is written.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name.value}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(value + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, self.path(name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_directory(self.directory)

    def version(self, name: SecretName) -> str:
        return fingerprint(self.get(name))


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable, so a crash right after `set` does not bring the old value back."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LayeredSecretStore:
    """Several stores in priority order: put the file store first so a rotation wins."""

    def __init__(self, stores: Iterable[SecretStore]) -> None:
        self.stores: Sequence[SecretStore] = tuple(stores)
        if not self.stores:
            raise ValueError("LayeredSecretStore needs at least one store")

    def __repr__(self) -> str:
        return f"LayeredSecretStore({list(self.stores)!r})"

    def get(self, name: SecretName) -> str | None:
        for store in self.stores:
            value = store.get(name)
            if value:
                return value
        return None

    def set(self, name: SecretName, value: str) -> None:
        """Write to the first store that accepts writes."""
        for store in self.stores:
            try:
                store.set(name, value)
            except NotImplementedError:
                continue
            return
        raise NotImplementedError(f"no writable store for secret {name.value!r}")

    def version(self, name: SecretName) -> str:
        return fingerprint(self.get(name))


SIM_INSTANCE_SECRET = "simulator-only-instance-secret"
"""The instance secret of the embedded simulator, whose instances are not real (worker, gateway)."""


def secret_store(settings: Settings, *extra: SecretStore) -> LayeredSecretStore:
    """The secrets as every process on this machine reads them: the file store first (a rotation
    wins), then the environment, then any fallback."""
    return LayeredSecretStore([FileSecretStore(settings.secrets_dir), EnvSecretStore(), *extra])
