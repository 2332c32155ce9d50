"""How do tests get a real SSH server? A private OpenSSH sshd on 127.0.0.1, owned by the test.

`Sshd` writes its own host key, client key, authorized_keys and sshd_config in a temp dir, runs
`/usr/sbin/sshd -D -e -f <config>` as the current user (root logs in as root), and can be killed
(listener *and* every session process: killing only the listener leaves sessions alive), frozen
(SIGSTOP: a peer that stops answering without closing) and restarted on the same port.
`scripts/ensure-sshd.sh` installs sshd; `require_sshd()` runs it once and skips only when sshd is
still absent afterwards.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SSHD = Path("/usr/sbin/sshd")
ENSURE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-sshd.sh"
_ensure_tried = False


def require_sshd() -> Path:
    """The sshd binary, installing it once per session if needed; pytest.skip if impossible."""
    global _ensure_tried
    if not SSHD.exists() and not _ensure_tried:
        _ensure_tried = True
        subprocess.run(["bash", str(ENSURE_SCRIPT)], check=False, timeout=300)
    if not SSHD.exists():
        pytest.skip(f"{SSHD} is missing and {ENSURE_SCRIPT.name} could not install openssh-server")
    return SSHD


def ed25519_key() -> tuple[str, str]:
    """A fresh Ed25519 key pair: (private key in OpenSSH PEM, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return _pem(key, serialization.PrivateFormat.OpenSSH), _public_line(key)


def rsa_key(
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.TraditionalOpenSSL,
) -> tuple[str, str]:
    """A fresh 2048-bit RSA key pair; `fmt` picks "BEGIN RSA PRIVATE KEY" or OpenSSH format."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key, fmt), _public_line(key)


def _pem(
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey, fmt: serialization.PrivateFormat
) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def _public_line(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode() + " warmpool-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Sshd:
    """One sshd under test control. Use `running_sshd()` to get a started one that is cleaned up."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_sshd()
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.username = getpass.getuser()
        self.client_key_pem, public_line = ed25519_key()
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text(public_line + "\n")
        self._write_config()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = workdir / "sshd.stderr"

    def authorize(self, public_line: str) -> None:
        """Accept one more client key (read by sshd at each login)."""
        with self.authorized_keys.open("a") as out:
            out.write(public_line + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start sshd and wait until it accepts TCP connections."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        with self._stderr.open("ab") as err:
            self._proc = subprocess.Popen(
                [str(self.binary), "-D", "-e", "-f", str(self.workdir / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self._stderr.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd did not listen on {self.port} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL the listener and every session process: all connections drop at once."""
        if self._proc is None:
            return
        for pid in [*self.session_pids(), self._proc.pid]:
            _signal(pid, signal.SIGKILL)
        self._proc.wait(timeout=5)
        self._proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the session processes: connections stay open but nothing answers."""
        for pid in self.session_pids():
            _signal(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.session_pids():
            _signal(pid, signal.SIGCONT)

    def session_pids(self) -> list[int]:
        """Pids of every process descended from our sshd (the per-connection sshd processes)."""
        if self._proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = list(children.get(self._proc.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _write_config(self) -> None:
        host_key = self.workdir / "ssh_host_ed25519_key"
        host_key.write_text(ed25519_key()[0])
        host_key.chmod(0o600)
        config = f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {self.workdir / "sshd.pid"}
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {self.username}
Subsystem sftp internal-sftp
MaxStartups 50
LogLevel ERROR
"""
        (self.workdir / "sshd_config").write_text(config)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def running_sshd(workdir: Path) -> Iterator[Sshd]:
    """A started `Sshd` in `workdir`, killed (with its sessions) on exit."""
    sshd = Sshd(workdir)
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.thaw()
        sshd.kill()
