"""The generated bootstrap and provisioning script, run for real under bash: a temp dir stands for
the instance's root, a loopback HTTP server for the model hosts, local bare git repos for the
node packs. Checks files land where ComfyUI reads them, sha256 and 404 failures are named, no
token reaches another host, a second run downloads nothing, and the log lines are parseable."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from warmpool.environment import (
    Environment,
    decode_script,
    instance_setup,
    manifest_lines,
    parse_environment,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("git") and shutil.which("bash")),
    reason="needs curl, git and bash",
)

FAKE_HF = "fake.hf.token"
FAKE_CIVITAI = "fake.civitai.token"
FINAL_RE = re.compile(r"^warmpool: environment (\S+) (complete|incomplete: .*)$", re.M)


# --- a loopback model host -----------------------------------------------------------------------


@dataclass
class Host:
    """What the file server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    ranges: bool = True
    url: str = ""

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def _handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            host.requests.append((self.path, dict(self.headers.items())))
            if self.path in host.redirects:
                self.send_response(302)
                self.send_header("Location", host.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = host.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            wanted = self.headers.get("Range", "")
            match = re.fullmatch(r"bytes=(\d+)-", wanted)
            if host.ranges and match:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def host() -> Iterator[Host]:
    served = Host()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


# --- an instance in a temp dir -------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def node_repo(tmp: Path, name: str, *, requirements: bool) -> tuple[str, str]:
    """A bare repo with two commits; returns (file:// URL, the first commit: the pinned one)."""
    bare = tmp / "repos" / f"{name}.git"
    work = tmp / "work" / name
    _git("init", "--quiet", "--bare", str(bare))
    _git("init", "--quiet", str(work))
    (work / "__init__.py").write_text(f"NODE_CLASS_MAPPINGS = {{'{name}': object}}\n")
    if requirements:
        (work / "requirements.txt").write_text("numpy\n")
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "pinned", cwd=work)
    pinned = _git("rev-parse", "HEAD", cwd=work)
    (work / "later.py").write_text("# a later commit the pin must not get\n")
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "later", cwd=work)
    _git("push", "--quiet", str(bare), "HEAD:main", cwd=work)
    return f"file://{bare}", pinned


@dataclass
class Instance:
    root: Path
    comfy: Path
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.root / "var/log/portal/provisioning.log"

    @property
    def marker(self) -> Path:
        return self.root / ".provisioning"

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def pip_calls(self) -> list[str]:
        calls = self.root / "pip.calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def supervisor_calls(self) -> list[str]:
        calls = self.root / "supervisorctl.calls"
        return calls.read_text().splitlines() if calls.exists() else []


def make_instance(tmp: Path) -> Instance:
    root = tmp / "instance"
    root.mkdir()
    comfy = root / "workspace/ComfyUI"
    (comfy / "models/checkpoints").mkdir(parents=True)
    fake_pip = root / "fake-pip"
    fake_pip.write_text(f'#!/bin/sh\necho "$*" >> "{root}/pip.calls"\n')
    fake_pip.chmod(0o755)
    fake_sv = root / "fake-supervisorctl"
    fake_sv.write_text(
        f'#!/bin/sh\necho "$*" >> "{root}/supervisorctl.calls"\n'
        '[ "$1" = status ] && echo "comfyui RUNNING pid 7, uptime 0:00:05"\nexit 0\n'
    )
    fake_sv.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "WARMPOOL_ROOT": str(root),
        "COMFYUI_DIR": str(comfy),
        "WARMPOOL_PIP": str(fake_pip),
        "WARMPOOL_SUPERVISORCTL": str(fake_sv),
        "WARMPOOL_PROGRESS_SECONDS": "0",
        "HF_TOKEN": FAKE_HF,
        "CIVITAI_TOKEN": FAKE_CIVITAI,
    }
    return Instance(root=root, comfy=comfy, env=env)


def wait_for_final(instance: Instance, runs: int, timeout: float = 15.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = FINAL_RE.findall(instance.log_text())
        if len(finals) >= runs and not instance.marker.exists():
            return finals
        time.sleep(0.05)
    raise AssertionError(f"provisioning did not finish:\n{instance.log_text()}")


def boot(instance: Instance, env: Environment) -> None:
    """What Vast.ai does at start: the rent's env, then onstart (bootstrap + image start)."""
    started = instance.root / "entrypoint.ran"
    setup = instance_setup(env, onstart=f'echo started >> "{started}"')
    subprocess.run(
        ["bash", "-c", setup.onstart],
        env={**instance.env, **setup.env_vars},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=10,
    )
    assert started.exists(), "the image's own start command must run"


def run_script(instance: Instance, env: Environment) -> subprocess.CompletedProcess[str]:
    """The shipped script run directly (to see its exit code)."""
    script = instance.root / "provision.sh"
    script.write_text(shipped(env))
    manifest = instance.root / "manifest.tsv"
    manifest.write_text("\n".join(manifest_lines(env)))
    return subprocess.run(
        ["bash", str(script), str(manifest)],
        env={**instance.env, "WARMPOOL_ENV_VERSION": env.version},
        capture_output=True,
        text=True,
        timeout=15,
    )


def shipped(env: Environment) -> str:
    """The provisioning script as the rent request carries it (decoded from its env vars)."""
    return decode_script(instance_setup(env, onstart="entrypoint.sh").env_vars)


ONE_MODEL = parse_environment({"models": [{"url": "https://h/x", "folder": "vae", "file": "v.pt"}]})


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- the tests -----------------------------------------------------------------------------------


def test_bootstrap_installs_everything_then_a_second_boot_downloads_nothing(
    tmp_path: Path, host: Host
) -> None:
    instance = make_instance(tmp_path)
    foo_url, foo_commit = node_repo(tmp_path, "comfyui-foo", requirements=True)
    bar_url, bar_commit = node_repo(tmp_path, "comfyui-bar", requirements=False)
    ckpt, vae, lora = blob(300_000, 1), blob(50_000, 2), blob(20_000, 3)
    host.files = {"/m/ckpt.safetensors": ckpt, "/m/vae.pt": vae, "/m/lora.safetensors": lora}
    env = parse_environment(
        {
            "nodes": [
                {"name": "comfyui-foo", "git": foo_url, "commit": foo_commit, "classes": ["Foo"]},
                {"name": "comfyui-bar", "git": bar_url, "commit": bar_commit[:10]},
            ],
            "pip": ["rich>=13"],
            "models": [
                {
                    "url": f"{host.url}/m/ckpt.safetensors",
                    "folder": "checkpoints",
                    "file": "sdxl.safetensors",
                    "sha256": hashlib.sha256(ckpt).hexdigest(),
                    "size": len(ckpt),
                },
                {"url": f"{host.url}/m/vae.pt", "folder": "vae", "file": "vae.pt"},
                {
                    "url": f"{host.url}/m/lora.safetensors",
                    "folder": "loras",
                    "file": "style.safetensors",
                    "required": False,
                },
            ],
            "secrets": ["hf", "civitai"],
        }
    )

    boot(instance, env)
    assert wait_for_final(instance, 1) == [(env.version, "complete")]

    models = instance.comfy / "models"
    assert (models / "checkpoints/sdxl.safetensors").read_bytes() == ckpt
    assert (models / "vae/vae.pt").read_bytes() == vae
    assert (models / "loras/style.safetensors").read_bytes() == lora
    assert not list(models.rglob("*.part"))
    for name, commit in (("comfyui-foo", foo_commit), ("comfyui-bar", bar_commit)):
        node = instance.comfy / "custom_nodes" / name
        assert _git("-C", str(node), "rev-parse", "HEAD") == commit
        assert (node / "__init__.py").exists() and not (node / "later.py").exists()
    assert instance.pip_calls() == [
        f"install -r {instance.comfy}/custom_nodes/comfyui-foo/requirements.txt",
        "install rich>=13",
    ]
    assert instance.supervisor_calls() == ["status comfyui", "restart comfyui"]
    assert not instance.marker.exists()
    assert (instance.root / "opt/warmpool/manifest.tsv").read_text().split("\n") == (
        manifest_lines(env)
    )

    log = instance.log_text()
    lines = [line for line in log.splitlines() if line.startswith("warmpool: ")]
    assert f"warmpool: node comfyui-foo at {foo_commit} done" in lines
    assert f"warmpool: node comfyui-bar at {bar_commit[:10]} done" in lines
    assert "warmpool: pip rich>=13 done" in lines
    assert f"warmpool: model checkpoints/sdxl.safetensors 100% ({len(ckpt)}/{len(ckpt)} bytes)" in (
        lines
    )
    assert f"warmpool: model vae/vae.pt {len(vae)} bytes" in lines
    # Required models before the marker goes, optional ones after.
    order = [
        "warmpool: model checkpoints/sdxl.safetensors done",
        "warmpool: model vae/vae.pt done",
        f"warmpool: environment {env.version} required complete",
        "warmpool: model loras/style.safetensors done",
        f"warmpool: environment {env.version} complete",
    ]
    assert [line for line in lines if line in order] == order

    # No request to another host ever carries a token (set in the instance's env above).
    assert sorted(host.paths()) == ["/m/ckpt.safetensors", "/m/lora.safetensors", "/m/vae.pt"]
    for _, headers in host.requests:
        assert "Authorization" not in headers
        assert not any(t in v for v in headers.values() for t in (FAKE_HF, FAKE_CIVITAI))

    # A second boot (an instance restart): nothing downloaded, installed or restarted again.
    boot(instance, env)
    assert wait_for_final(instance, 2) == [(env.version, "complete")] * 2
    assert len(host.requests) == 3
    assert len(instance.pip_calls()) == 2
    assert instance.supervisor_calls() == ["status comfyui", "restart comfyui"]
    second = instance.log_text()[len(log) :]
    assert "warmpool: model checkpoints/sdxl.safetensors done (already present)" in second
    assert "warmpool: model loras/style.safetensors done (already present)" in second


def test_wrong_hashes_and_404s_are_named_and_fail_the_run(tmp_path: Path, host: Host) -> None:
    instance = make_instance(tmp_path)
    good, bad = blob(10_000, 4), blob(10_000, 5)
    host.files = {"/good.safetensors": good, "/bad.safetensors": bad}
    env = parse_environment(
        {
            "models": [
                {
                    "url": f"{host.url}/bad.safetensors",
                    "folder": "checkpoints",
                    "file": "bad.safetensors",
                    "sha256": hashlib.sha256(good).hexdigest(),
                },
                {"url": f"{host.url}/gone.safetensors", "folder": "loras", "file": "gone.pt"},
                {"url": f"{host.url}/good.safetensors", "folder": "vae", "file": "ok.pt"},
                {
                    "url": f"{host.url}/short.safetensors",
                    "folder": "loras",
                    "file": "extra.pt",
                    "required": False,
                },
                {
                    "url": f"{host.url}/good.safetensors",
                    "folder": "vae",
                    "file": "sized.pt",
                    "size": len(good) + 1,
                },
            ],
            "nodes": [
                {
                    "name": "missing-node",
                    "git": f"file://{tmp_path}/nowhere.git",
                    "commit": "abcdef0",
                    "required": False,
                }
            ],
        }
    )
    done = run_script(instance, env)
    assert done.returncode == 1
    out = done.stdout
    assert re.search(
        r"^warmpool: model checkpoints/bad.safetensors FAILED: sha256 mismatch: got "
        + hashlib.sha256(bad).hexdigest()
        + "$",
        out,
        re.M,
    )
    assert "warmpool: model loras/gone.pt FAILED: http 404" in out
    assert (
        f"warmpool: model vae/sized.pt FAILED: size mismatch: got {len(good)} bytes, "
        f"expected {len(good) + 1}" in out
    )
    assert "warmpool: model vae/ok.pt done" in out
    assert "warmpool: node missing-node FAILED: git clone failed" in out
    final = out.strip().splitlines()[-1]
    assert final == (
        f"warmpool: environment {env.version} incomplete: node missing-node (optional), "
        "model checkpoints/bad.safetensors, model loras/gone.pt, model vae/sized.pt, "
        "model loras/extra.pt (optional)"
    )
    models = instance.comfy / "models"
    assert not (models / "checkpoints/bad.safetensors").exists()
    assert not list(models.rglob("*.part")), "a rejected download leaves nothing behind"
    assert (models / "vae/ok.pt").read_bytes() == good


def test_a_partial_download_resumes_or_restarts(tmp_path: Path, host: Host) -> None:
    instance = make_instance(tmp_path)
    data = blob(100_000, 6)
    host.files = {"/big.safetensors": data}
    env = parse_environment(
        {
            "models": [
                {
                    "url": f"{host.url}/big.safetensors",
                    "folder": "checkpoints",
                    "file": "big.safetensors",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ]
        }
    )
    part = instance.comfy / "models/checkpoints/big.safetensors.part"
    final = instance.comfy / "models/checkpoints/big.safetensors"

    part.write_bytes(data[:40_000])
    assert run_script(instance, env).returncode == 0
    assert final.read_bytes() == data
    assert [h.get("Range") for _, h in host.requests] == ["bytes=40000-"]

    # A host without ranges: the partial file is dropped and the download starts over.
    final.unlink()
    host.requests.clear()
    host.ranges = False
    part.write_bytes(data[:40_000])
    assert run_script(instance, env).returncode == 0
    assert final.read_bytes() == data
    assert [h.get("Range") for _, h in host.requests] == ["bytes=40000-", None]

    # A file already in place but corrupt is replaced.
    final.write_bytes(b"corrupt")
    host.requests.clear()
    assert run_script(instance, env).returncode == 0
    assert final.read_bytes() == data and len(host.requests) == 1


def test_tokens_go_only_to_their_own_hosts_over_https(tmp_path: Path) -> None:
    cases = {
        "https://huggingface.co/org/m/resolve/main/x.safetensors": FAKE_HF,
        "https://HuggingFace.co/x": FAKE_HF,
        "https://cdn-lfs.huggingface.co/x": FAKE_HF,
        "https://huggingface.co:443/x": FAKE_HF,
        "https://civitai.com/api/download/models/1": FAKE_CIVITAI,
        "https://www.civitai.com/api/download/models/1?type=Model": FAKE_CIVITAI,
        "http://huggingface.co/x": "",
        "https://huggingface.co.evil.example/x": "",
        "https://evilhuggingface.co/x": "",
        "https://huggingface.co@evil.example/x": "",
        "https://evil.example/?u=https://huggingface.co/x": "",
        "https://evil.example/huggingface.co": "",
        "https://civitai.com.evil.example/x": "",
        "https://127.0.0.1:8080/x": "",
    }
    script = tmp_path / "provision.sh"
    script.write_text(shipped(ONE_MODEL))
    program = f'source "{script}"\n' + "".join(
        f"printf '%s\\n' \"$(token_for '{url}')\"\n" for url in cases
    )
    done = subprocess.run(
        ["bash", "-c", program],
        env={"PATH": os.environ["PATH"], "HF_TOKEN": FAKE_HF, "CIVITAI_TOKEN": FAKE_CIVITAI},
        capture_output=True,
        text=True,
        check=True,
    )
    assert dict(zip(cases, done.stdout.split("\n")[:-1], strict=True)) == cases


def test_a_token_reaches_its_host_but_not_the_host_a_redirect_leads_to(
    tmp_path: Path, host: Host
) -> None:
    """The token plumbing itself (curl's config on stdin), with `token_for` forced to answer for
    the loopback host: the first host gets the header, the one it redirects to does not (as the
    Hugging Face CDN must not)."""
    data = blob(5_000, 7)
    port = host.url.rsplit(":", 1)[1]
    host.files = {"/cdn/x.safetensors": data}
    host.redirects = {"/resolve/x.safetensors": f"http://localhost:{port}/cdn/x.safetensors"}
    instance = make_instance(tmp_path)
    script = tmp_path / "provision.sh"
    script.write_text(shipped(ONE_MODEL))
    program = (
        f'source "{script}"\n'
        f'token_for() {{ printf %s "$HF_TOKEN"; }}\n'
        f'comfy="{instance.comfy}"; state="{tmp_path}/state"; tmp=$(mktemp -d); every=5\n'
        f'mkdir -p "$state"\n'
        f'model_step vae x.safetensors "{host.url}/resolve/x.safetensors" - {len(data)}\n'
    )
    subprocess.run(["bash", "-c", program], env=instance.env, check=True, capture_output=True)
    assert (instance.comfy / "models/vae/x.safetensors").read_bytes() == data
    assert [(path, h.get("Authorization")) for path, h in host.requests] == [
        ("/resolve/x.safetensors", f"Bearer {FAKE_HF}"),
        ("/cdn/x.safetensors", None),
    ]
