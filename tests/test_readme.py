"""Does the README work as written? Its links resolve, and its commands run against the run
command's stack.

- Every relative link of README.md and docs/*.md (files and `#anchors`) resolves, and every
  `*.md` file they name in code exists in the repository (no design note outside it).
- Every fenced shell block of README.md (```bash, ```sh, ```console) is run with `bash -e -o
  pipefail`, as a whole (a variable set in a block carries to its next lines), at the repository
  root, against `scripts/devstack.py` (what `./scripts/run.sh` execs) started with short
  settings on free ports. Its environment is what the run command prints: PATH with `.venv/bin`
  first, its `export` lines, and the README's default addresses (gateway :3000, Temporal :7233,
  Web UI :8233) and admin key replaced by the ones it printed. Each command must exit 0, or the
  status a trailing `# exits N` comment announces. The two set-up commands (`./scripts/run.sh`,
  `./scripts/test.sh`) are not run: the test starts the stack itself, and the suite cannot run
  itself. Any other line must start with a command a newcomer runs against the stack
  (`warmpool`, `python starter.py`, `curl`, `temporal`, `source .venv/bin/activate`, an
  assignment of one of those); anything else belongs in a ```text block.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_cli import environment

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
SET_UP = ("./scripts/run.sh", "./scripts/test.sh")
COMMANDS = {
    # how a line may start -> the kind of command it is
    "warmpool": "warmpool",
    ".venv/bin/warmpool": "warmpool",
    "python starter.py": "warmpool",
    ".venv/bin/python starter.py": "warmpool",
    "curl": "curl",
    "temporal": "temporal",
    ".venv/bin/temporal": "temporal",
    "source .venv/bin/activate": "activate",
    ". .venv/bin/activate": "activate",
}
EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\b.*$")
ASSIGNMENT = re.compile(r"^(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=")
WELL_KNOWN_PORTS = {3000, 7233, 8188, 8233}
README_DEFAULTS = {
    "gateway": "http://127.0.0.1:3000",
    "temporal": "127.0.0.1:7233",
    "web_ui": "http://127.0.0.1:8233",
    "admin_key": "devstack-admin-key",
}


# ---- parsing -------------------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    line: int
    """Where the block's first line is in the README (1-based)."""
    text: str


def fenced_blocks(markdown: str) -> list[Block]:
    blocks = []
    for found in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", markdown, re.M | re.S):
        line = markdown.count("\n", 0, found.start(2)) + 1
        blocks.append(Block(found.group(1).lower(), line, found.group(2)))
    return blocks


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(README line, command) with `\\` continuations joined; prompts of a console block
    stripped and its output lines dropped; blank and comment lines dropped."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = block.line
    for number, raw in enumerate(block.text.splitlines(), block.line):
        line = raw
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        text = " ".join(part.strip() for part in [*pending, line]).strip()
        pending = []
        if text and not text.startswith("#"):
            out.append((start, text))
    assert not pending, f"README.md:{start}: a line continues past the end of its block"
    return out


def kind_of(command: str) -> str | None:
    """Which newcomer command a line runs, or None when it is not one."""
    for prefix, kind in COMMANDS.items():
        if command == prefix or command.startswith(prefix + " "):
            return kind
    if ASSIGNMENT.match(command):
        name_value = command.split(None, 1)[1] if command.startswith("export ") else command
        value = name_value.split("=", 1)[1]
        if value.startswith("$("):
            return kind_of(value[2:].lstrip())
        rest = value.split(None, 1)  # NAME=word [command]
        if len(rest) == 1 or not rest:
            return "assignment"
        return kind_of(rest[1])
    return None


@dataclass
class Script:
    block: Block
    text: str
    kinds: set[str]
    set_up: list[str]


def script_of(block: Block) -> Script:
    """The block as the bash script the test runs: set-up commands left out, `# exits N`
    turned into a check of the exit status, every other line run as written."""
    lines = ["PS4='+ README.md: '", "set -x"]
    kinds: set[str] = set()
    set_up = []
    for number, command in logical_lines(block):
        if command.startswith(SET_UP):
            set_up.append(command.split()[0])
            continue
        expected = EXITS.search(command)
        bare = EXITS.sub("", command) if expected else command
        kind = kind_of(bare)
        assert kind is not None, (
            f"README.md:{number}: `{command}` is not a command the test runs against the stack; "
            "show it in a ```text block, or teach tests/test_readme.py about it"
        )
        kinds.add(kind)
        if expected is None:
            lines.append(command)
            continue
        code = int(expected.group(1))
        lines += [
            f"if {bare}; then status=0; else status=$?; fi",
            f'[ "$status" -eq {code} ] || {{ echo "README.md:{number}: expected exit {code}, '
            f'got $status" >&2; exit 1; }}',
        ]
    return Script(block, "\n".join(lines) + "\n", kinds, set_up)


def readme_scripts() -> list[Script]:
    return [script_of(b) for b in fenced_blocks(README.read_text()) if b.lang in SHELL]


# ---- links (no server) ---------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def prose(page: Path) -> str:
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: links that resolve to nothing: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_markdown_files_named_exist_in_the_repository(page: Path) -> None:
    """A page that names a Markdown file in code (`bench/README.md`) points inside the repo."""
    missing = []
    for name in re.findall(r"`([\w./-]+\.md)`", page.read_text()):
        if not ((page.parent / name).exists() or (ROOT / name).exists()):
            missing.append(name)
    assert missing == [], f"{page.relative_to(ROOT)} names files not in the repository: {missing}"


def test_every_shell_block_is_runnable_and_the_readme_shows_the_essentials() -> None:
    scripts = readme_scripts()  # script_of fails on a line the test could not run
    kinds = set().union(*(s.kinds for s in scripts))
    assert {"warmpool", "curl", "temporal", "activate"} <= kinds, kinds
    assert {"./scripts/run.sh", "./scripts/test.sh"} <= {c for s in scripts for c in s.set_up}
    text = README.read_text()
    assert "`default`" in text and "WARMPOOL_POOL" in text
    assert re.search(
        r"\*\*0\*\* success.*\*\*2\*\* a\s+bad argument.*\*\*1\*\* a runtime", text, re.S
    )
    assert len(text.splitlines()) <= 140, "the README is a first page: details go to docs/"


def test_script_of_checks_announced_exit_codes() -> None:
    block = Block("bash", 1, "./scripts/run.sh  # starts it\nwarmpool lease release x  # exits 2\n")
    script = script_of(block)
    assert script.set_up == ["./scripts/run.sh"]
    assert "if warmpool lease release x; then" in script.text
    assert '[ "$status" -eq 2 ]' in script.text
    assert kind_of('lease=$(curl -sf -X POST http://x/api/leases | python -c "...")') == "curl"
    assert kind_of("TEMPORAL_ADDRESS=127.0.0.1:1 warmpool pool status") == "warmpool"
    assert kind_of("docker compose up -d") is None
    console = Block("console", 1, "$ warmpool pool status\npool default: ...\n")
    assert [c for _, c in logical_lines(console)] == ["warmpool pool status"]


# ---- the commands, against the run command ------------------------------------------------------

FAST_RUN_ENV = {
    # Short timings (as tests/test_newcomer.py's run command), and no provider pacing: the
    # run command's simulator enforces no rate limits, and paced searches cost ~20 s here.
    "WARM_POOL_POLL_ACTIVE_INTERVAL_MS": "300",
    "WARM_POOL_POLL_IDLE_INTERVAL_MS": "1000",
    "WARMPOOL_READINESS_INITIAL_S": "0.2",
    "WARMPOOL_READINESS_MAX_S": "1",
    "WARMPOOL_RETRY_BACKOFF_INITIAL_S": "0.2",
    "WARMPOOL_RETRY_BACKOFF_MAX_S": "1",
    "WARMPOOL_VAST_PACING_SCALE": "0",
}
SECRETS = ("ADMIN_API_KEY", "HF_TOKEN", "HUGGINGFACE_HUB_TOKEN", "CIVITAI_TOKEN")


def free_ports(n: int) -> list[int]:
    """n free loopback ports, none of the well-known ones the README shows."""
    while True:
        socks = [socket.socket() for _ in range(n)]
        try:
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
            ports = [int(sock.getsockname()[1]) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        if not WELL_KNOWN_PORTS & set(ports):
            return ports


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """`scripts/devstack.py` on free ports, its own state directory and secret store, and the
    README's default pool."""

    def __init__(self, tmp: Path) -> None:
        self.ports = free_ports(3)
        self.state = tmp / "state"
        env = environment("127.0.0.1:1", **FAST_RUN_ENV)  # none of our settings, but these
        del env["TEMPORAL_ADDRESS"]  # the run command sets it from --temporal-port
        for name in SECRETS:
            env.pop(name, None)
        env["WARMPOOL_SECRETS_DIR"] = str(tmp / "secrets")  # not the checkout's .warmpool
        self.env = env
        self.output = tmp / "run.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        temporal, ui, gateway = self.ports
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "devstack.py"),
                    f"--temporal-port={temporal}",
                    f"--ui-port={ui}",
                    f"--gateway-port={gateway}",
                    f"--state-dir={self.state}",
                    "--min-ready=2",
                    "--max-slots=4",
                    "--sim-speed=5",
                    "--ready-timeout=120",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, phrase: str, timeout: float) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if phrase in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"the run command exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"no {phrase!r} within {timeout:.0f}s:\n{self.text()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def printed(output: str, pattern: str) -> str:
    found = re.search(pattern, output, re.M)
    assert found is not None, f"the run command did not print {pattern!r}:\n{output}"
    return found.group(1)


def shell_environment(stack: Stack, output: str) -> tuple[dict[str, str], dict[str, str]]:
    """The newcomer's shell after reading the run command's output: its environment, and the
    README's default addresses and key mapped to the ones printed."""
    env = {k: v for k, v in stack.env.items() if k not in FAST_RUN_ENV}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    for name, value in re.findall(r"^\s*export (\w+)=(\S+)$", output, re.M):
        env[name] = value
    shown = {
        "temporal": printed(output, r"^Temporal\s*: (\S+) "),
        "web_ui": printed(output, r"^Temporal\s*: .*\(Web UI (\S+)\)"),
        "gateway": printed(output, r"^Gateway\s*: (\S+) "),
        "admin_key": printed(output, r"^\s*admin key\s*: (\S+) "),
    }
    assert env.get("TEMPORAL_ADDRESS", README_DEFAULTS["temporal"]) == shown["temporal"], (
        "the run command's exports do not lead to its Temporal server"
    )
    return env, {README_DEFAULTS[k]: v for k, v in shown.items()}


def run_block(script: Script, env: dict[str, str], addresses: dict[str, str]) -> None:
    text = script.text
    for default, actual in addresses.items():
        text = text.replace(default, actual)
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", text],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, (
        f"README.md block at line {script.block.line} failed ({done.returncode}); the run "
        f"command's addresses: {addresses}\n--- stdout\n{done.stdout}\n--- stderr (trace)\n"
        f"{done.stderr}"
    )


@pytest.mark.integration
@pytest.mark.dev_server
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_readme_command_block_runs_against_the_run_command(stack: Stack) -> None:
    scripts = [s for s in readme_scripts() if s.kinds]
    assert scripts, "README.md has no command block to run"
    if not (ROOT / ".venv" / "bin" / "warmpool").exists():
        pytest.fail("the README's commands need the project's .venv: run ./scripts/bootstrap.sh")
    stack.start()
    output = stack.wait_for("running; Ctrl-C to stop", 180)
    env, addresses = shell_environment(stack, output)
    for script in scripts:
        run_block(script, env, addresses)
    assert stack.stop() == 128 + signal.SIGTERM
    left = [port for port in stack.ports if listening(port)]
    assert left == [], f"still listening after the run command stopped: {left}"


def test_every_shell_block_is_valid_bash() -> None:
    for script in readme_scripts():
        done = subprocess.run(["bash", "-n", "-c", script.text], capture_output=True, text=True)
        assert done.returncode == 0, (script.block.line, done.stderr)
