"""Does an instance honour the studio's environment, and when is each part of it there?

The rent's `env` carries the environment (the wire format of `warmpool/environment.py`, decoded
here on its own: the simulator never imports `warmpool`):

- `WARMPOOL_ENV_VERSION`: the version string;
- `WARMPOOL_MANIFEST_00`, `_01`, ...: concatenated in order, standard base64 of the gzip of the
  UTF-8 manifest: one record per line, tab-separated fields:
  `node <name> <git> <commit> <classes,comma,separated> <1|0>`, `pip <requirement>`,
  `model <folder> <file> <url> <sha256|-> <size|-> <1|0>` (the last field: required);
- `WARMPOOL_SCRIPT_NN`: the provisioning script (`warmpool/provision.sh`): its effect is
  simulated, not run;
- `PROVISIONING_SCRIPT`: a URL of a script the simulator cannot run: provisioning then takes
  `SimConfig.provisioning_script_s` and declares nothing;
- `HF_TOKEN` / `CIVITAI_TOKEN`: present only when the pool gives them.

Once the container runs, provisioning installs the nodes (`node_install_s` each), the pip
packages (`pip_install_s` each), then downloads the required models one after the other
(`size / download_bytes_per_s`, or `model_unsized_s` without a size); ComfyUI starts only then
(after its own `comfy_boot_s`), and the optional models keep downloading in the background. A
model that fails (its URL 404s, its host refuses the token, or no token is sent to it) never
appears; ComfyUI starts all the same, as after a provisioning script that failed.

Everything is planned at create time (the faults are fixed then, like the host) as offsets from
the moment the container first runs, and read against the clock on each request: no polling
loop. The log lines are provision.sh's own (`warmpool: ...`, what the product parses); the
control API serves them (`GET /_sim/instances/<id>/provisioning-log`), and they are appended to
`SimConfig.provisioning_log_path` as they happen if it is set (the bootstrap writes them to
/var/log/portal/provisioning.log, not to the container log).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import logging
import re
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vastsim.config import Fault, SimConfig

log = logging.getLogger(__name__)

MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
"""The folder kinds ComfyUI 0.3.64 answers at `GET /models`."""
_LEGACY_FOLDERS = {"clip": "text_encoders", "unet": "diffusion_models"}
_CHUNK = re.compile(r"WARMPOOL_MANIFEST_(\d{2})")
_PROGRESS_STEPS = 10  # a progress line every 10 %
_TOKEN_SITES = {"huggingface": ("huggingface.co", "hf.co"), "civitai": ("civitai.com",)}
"""Hosts whose files want a token (the first domain: where provision.sh sends it)."""
_TOKEN_NAMES = {"huggingface": "HF_TOKEN", "civitai": "CIVITAI_TOKEN"}


class ManifestError(ValueError):
    """The manifest in the env cannot be read (its provisioning script would fail at once)."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    git: str
    commit: str
    classes: tuple[str, ...]
    required: bool


@dataclass(frozen=True, slots=True)
class ModelSpec:
    folder: str
    file: str
    url: str
    sha256: str | None
    size: int | None
    required: bool

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.file}"


@dataclass(frozen=True, slots=True)
class Manifest:
    nodes: tuple[NodeSpec, ...] = ()
    pip: tuple[str, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    ignored: tuple[str, ...] = ()
    """The first field of each line that is no record (provision.sh logs and skips them)."""


def decode_manifest(env: Mapping[str, str]) -> Manifest | None:
    """The manifest carried by `env`, None if it carries none; ManifestError if unreadable."""
    chunks = sorted(
        (int(m.group(1)), value) for key, value in env.items() if (m := _CHUNK.fullmatch(key))
    )
    if not chunks:
        return None
    if [number for number, _ in chunks] != list(range(len(chunks))):
        raise ManifestError(
            "WARMPOOL_MANIFEST_NN chunks are not numbered 00, 01, ... without a gap"
        )
    try:
        packed = base64.b64decode("".join(value for _, value in chunks), validate=True)
        text = gzip.decompress(packed).decode("utf-8")
    except (binascii.Error, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ManifestError(f"not base64 of gzip of UTF-8 text: {exc}") from None
    return parse_manifest(text)


def parse_manifest(text: str) -> Manifest:
    """The records of a manifest's text; other lines are ignored, as the script does."""
    nodes: list[NodeSpec] = []
    pip: list[str] = []
    models: list[ModelSpec] = []
    ignored: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        fields = line.split("\t")
        kind = fields[0]
        if kind == "node" and len(fields) > 1:
            _expect(fields, 6, number)
            _, name, git, commit, classes, required = fields
            split = tuple(c for c in classes.split(",") if c)
            nodes.append(NodeSpec(name, git, commit, split, _flag(required, number)))
        elif kind == "pip" and len(fields) > 1:
            _expect(fields, 2, number)
            pip.append(fields[1])
        elif kind == "model" and len(fields) > 1:
            _expect(fields, 7, number)
            _, folder, file, url, sha256, size, required = fields
            if not folder or not file:
                raise ManifestError(f"line {number}: a model needs a folder and a file name")
            models.append(
                ModelSpec(
                    folder=folder,
                    file=file,
                    url=url,
                    sha256=None if sha256 == "-" else sha256,
                    size=_size(size, number),
                    required=_flag(required, number),
                )
            )
        else:
            ignored.append(kind)
    return Manifest(tuple(nodes), tuple(pip), tuple(models), tuple(ignored))


def _expect(fields: list[str], count: int, number: int) -> None:
    if len(fields) != count:
        raise ManifestError(
            f"line {number}: a {fields[0]} record has {count} fields, not {len(fields)}"
        )


def _flag(value: str, number: int) -> bool:
    if value not in ("0", "1"):
        raise ManifestError(f"line {number}: required must be 1 or 0, not {value!r}")
    return value == "1"


def _size(value: str, number: int) -> int | None:
    if value == "-":
        return None
    if not value.isdigit():
        raise ManifestError(f"line {number}: size must be a number of bytes or -, not {value!r}")
    return int(value)


def folder_kind(folder: str) -> str:
    """The folder kind ComfyUI lists a file of `models/<folder>` under (`unet` and `clip` are
    legacy names: their files are listed under `diffusion_models` and `text_encoders`)."""
    return _LEGACY_FOLDERS.get(folder, folder)


def token_site(url: str) -> str | None:
    """ "huggingface" or "civitai" when `url` is on a host that wants that site's token."""
    host = (urlsplit(url).hostname or "").lower()
    for site, domains in _TOKEN_SITES.items():
        if any(host == domain or host.endswith(f".{domain}") for domain in domains):
            return site
    return None


def _token_sent(url: str, site: str, env: Mapping[str, str]) -> bool:
    """Whether provision.sh sends a token with `url`: the site's own, present, over https, and
    only to the site's own domain (an `hf.co` short link gets none)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    domain = _TOKEN_SITES[site][0]
    own = host == domain or host.endswith(f".{domain}")
    return own and parts.scheme == "https" and bool(env.get(_TOKEN_NAMES[site]))


@dataclass(frozen=True, slots=True)
class EnvironmentFaults:
    """The environment faults one rental was born with (fixed at create, like its host)."""

    kinds: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    """model_404 matchers: a file name or a substring of a model's file name or URL."""
    refused: frozenset[str] = frozenset()
    """token_refused: the sites ("huggingface", "civitai") whose downloads answer 401."""
    slow_factor: float = 1.0
    broken_nodes: frozenset[str] = frozenset()
    """node_import_fails: nodes that install but whose classes never load."""

    @classmethod
    def from_faults(cls, faults: Iterable[Fault]) -> EnvironmentFaults:
        kinds: list[str] = []
        missing: list[str] = []
        refused: set[str] = set()
        broken: set[str] = set()
        slow = 1.0
        for fault in faults:
            if fault.kind not in kinds:
                kinds.append(fault.kind)
            if fault.kind == "model_404" and fault.value:
                missing.append(fault.value)
            elif fault.kind == "token_refused":
                refused |= {fault.value} if fault.value else set(_TOKEN_SITES)
            elif fault.kind == "slow_host":
                slow *= fault.factor or 1.0
            elif fault.kind == "node_import_fails" and fault.value:
                broken.add(fault.value)
        return cls(tuple(kinds), tuple(missing), frozenset(refused), slow, frozenset(broken))

    def model_fault(self, model: ModelSpec, env: Mapping[str, str]) -> str | None:
        """Why downloading `model` fails on this instance (provision.sh's words), or None."""
        if any(m in model.file or m in model.url for m in self.missing):
            return "http 404"
        site = token_site(model.url)
        if site is not None and (site in self.refused or not _token_sent(model.url, site, env)):
            return "http 401"  # a refused token, or none sent (gated or private files)
        return None


@dataclass(frozen=True, slots=True)
class _Event:
    at: float  # simulated seconds after the container runs
    line: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What provisioning does and when, in simulated seconds after the container runs."""

    version: str | None = None
    comfy_after: float = 0.0
    """ComfyUI starts booting this long after the container runs (provisioning's required part:
    provision.sh removes the /.provisioning marker then)."""
    events: tuple[_Event, ...] = ()
    arrivals: tuple[tuple[float, str, str], ...] = ()
    """(when, folder kind, file) of every model that arrives; failed ones are absent."""
    nodes: tuple[NodeSpec, ...] = ()
    """The nodes whose classes load when ComfyUI starts (import failures left out)."""
    folders: tuple[str, ...] = MODEL_FOLDERS
    """The folder kinds `/models` lists (ComfyUI's own, and any other folder the manifest
    downloads into, as if the node that uses it had registered it)."""
    fault_kinds: tuple[str, ...] = ()


def carries_environment(env: Mapping[str, str]) -> bool:
    """Whether a rent's env asks for provisioning (its environment faults then apply)."""
    return bool(env.get("PROVISIONING_SCRIPT")) or any(_CHUNK.fullmatch(key) for key in env)


def plan(env: Mapping[str, str], faults: EnvironmentFaults, config: SimConfig) -> Plan:
    """The provisioning of a rental with `env` on a host with `faults`."""
    version = env.get("WARMPOOL_ENV_VERSION") or None
    kinds = faults.kinds
    try:
        manifest = decode_manifest(env)
    except ManifestError:
        # the onstart bootstrap cannot unpack it: it says so, and ComfyUI starts at once
        line = f"warmpool: environment {version or '?'} incomplete: unpack failed"
        return Plan(version, events=(_Event(0.0, line),), fault_kinds=kinds)
    if manifest is None:
        script = bool(env.get("PROVISIONING_SCRIPT"))  # the image runs it; it says nothing
        took = config.provisioning_script_s if script else 0.0
        return Plan(version, comfy_after=took, fault_kinds=kinds)
    return _Planner(manifest, env, version, faults, config).plan()


class _Planner:
    """provision.sh's run, event by event: nodes, pip packages, required models, (ComfyUI may
    start), optional models; its log lines are provision.sh's own."""

    def __init__(
        self,
        manifest: Manifest,
        env: Mapping[str, str],
        version: str | None,
        faults: EnvironmentFaults,
        config: SimConfig,
    ) -> None:
        self.manifest, self.env, self.faults, self.config = manifest, env, faults, config
        self.version = version
        self.label = version or "unknown"
        self.bandwidth = config.download_bytes_per_s / faults.slow_factor
        self.every = _progress_seconds(env)
        self.clock = 0.0
        self.events: list[_Event] = []
        self.arrivals: list[tuple[float, str, str]] = []
        self.failed: list[str] = []

    def say(self, line: str) -> None:
        self.events.append(_Event(self.clock, f"warmpool: {line}"))

    def plan(self) -> Plan:
        manifest, config = self.manifest, self.config
        for kind in manifest.ignored:
            self.say(f"manifest line ignored: {kind}")
        self.say(f"environment {self.label} start")
        for node in manifest.nodes:
            self.clock += config.node_install_s
            self.say(f"node {node.name} at {node.commit} done")
        for requirement in manifest.pip:
            self.clock += config.pip_install_s
            self.say(f"pip {requirement} done")
        for model in manifest.models:
            if model.required:
                self.download(model)
        self.say(f"environment {self.label} required {self.outcome()}")
        comfy_after = self.clock
        for model in manifest.models:  # in the background while ComfyUI serves
            if not model.required:
                self.download(model)
        self.say(f"environment {self.label} {self.outcome()}")
        kinds = {folder_kind(m.folder) for m in manifest.models}
        return Plan(
            version=self.version,
            comfy_after=comfy_after,
            events=tuple(self.events),
            arrivals=tuple(self.arrivals),
            nodes=tuple(n for n in manifest.nodes if n.name not in self.faults.broken_nodes),
            folders=(*MODEL_FOLDERS, *sorted(kinds - set(MODEL_FOLDERS))),
            fault_kinds=self.faults.kinds,
        )

    def outcome(self) -> str:
        return f"incomplete: {', '.join(self.failed)}" if self.failed else "complete"

    def download(self, model: ModelSpec) -> None:
        why = self.faults.model_fault(model, self.env)
        if why is not None:
            self.say(f"model {model.path} FAILED: {why}")
            self.failed.append(f"model {model.path}" + ("" if model.required else " (optional)"))
            return
        if model.size is None:  # its real size: what the default time gives at full speed
            total = int(self.config.model_unsized_s * self.config.download_bytes_per_s)
            took = self.config.model_unsized_s * self.faults.slow_factor
        else:
            total, took = model.size, model.size / self.bandwidth
        start = self.clock
        tick = self.every
        while tick < took:  # a progress line every WARMPOOL_PROGRESS_SECONDS while it runs
            self.clock = start + tick
            self.say(_progress(model, int(total * tick / took), total))
            tick += self.every
        self.clock = start + took
        self.say(_progress(model, total, total))
        self.say(f"model {model.path} done")
        self.arrivals.append((self.clock, folder_kind(model.folder), model.file))


def _progress(model: ModelSpec, got: int, total: int) -> str:
    if model.size is None:
        return f"model {model.path} {got} bytes"
    return f"model {model.path} {got * 100 // total if total else 100}% ({got}/{total} bytes)"


def _progress_seconds(env: Mapping[str, str]) -> float:
    """provision.sh's WARMPOOL_PROGRESS_SECONDS (default 5), in simulated seconds."""
    try:
        every = float(env.get("WARMPOOL_PROGRESS_SECONDS", "5"))
    except ValueError:
        return 5.0
    return every if every >= 0.01 else 5.0


def node_class_info(node: NodeSpec, name: str) -> dict[str, Any]:
    """A plausible `/object_info` entry for a custom node's class."""
    return {
        "input": {"required": {}, "optional": {}},
        "input_order": {"required": [], "optional": []},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": f"custom_nodes.{node.name}",
        "category": node.name,
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    }


class Provisioning:
    """One instance's environment on the clock: anchored when its container first runs."""

    def __init__(self, planned: Plan | None = None, config: SimConfig | None = None) -> None:
        self.plan = planned or Plan()
        self._config = config or SimConfig()
        self._anchor: float | None = None
        self._written = 0
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def for_rent(
        cls, env: Mapping[str, str], faults: Iterable[Fault], config: SimConfig
    ) -> Provisioning:
        return cls(plan(env, EnvironmentFaults.from_faults(faults), config), config)

    @property
    def version(self) -> str | None:
        return self.plan.version

    def begin(self, running: float) -> None:
        """The container runs (monotonic `running`): provisioning starts, the first time only
        (a resumed instance keeps its disk, and what was downloaded on it)."""
        if self._anchor is None:
            self._anchor = running
        path = self._config.provisioning_log_path
        if path and self._written < len(self.plan.events) and self._writer is None:
            self._writer = asyncio.create_task(
                self._write(Path(path)), name="vastsim-provisioning-log"
            )

    def close(self) -> None:
        """Stop writing the log file (stop, destroy, shutdown)."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def comfy_delay(self, running: float) -> float:
        """Real seconds from the container running at `running` until ComfyUI starts booting."""
        took = self._config.scaled(self.plan.comfy_after)
        if self._anchor is None:
            return took
        return max(0.0, self._anchor + took - running)

    def _real(self, at: float) -> float | None:
        return None if self._anchor is None else self._anchor + self._config.scaled(at)

    def lines(self, now: float | None = None) -> list[str]:
        """The provisioning log so far."""
        now = time.monotonic() if now is None else now
        return [
            e.line for e in self.plan.events if (t := self._real(e.at)) is not None and t <= now
        ]

    def object_info(self) -> dict[str, dict[str, Any]]:
        """The classes of every node that installed and imported (ComfyUI loads them at start)."""
        return {
            name: node_class_info(node, name) for node in self.plan.nodes for name in node.classes
        }

    def folders(self) -> list[str]:
        return list(self.plan.folders)

    def models(self, folder: str, now: float | None = None) -> list[str] | None:
        """The files of `folder` downloaded so far; None for a folder kind ComfyUI does not know."""
        if folder not in self.plan.folders:  # `/models/unet` too: ComfyUI maps it nowhere
            return None
        now = time.monotonic() if now is None else now
        return sorted(
            {
                file
                for at, where, file in self.plan.arrivals
                if where == folder and (t := self._real(at)) is not None and t <= now
            }
        )

    async def _write(self, path: Path) -> None:
        try:
            while self._written < len(self.plan.events):
                event = self.plan.events[self._written]
                due = self._real(event.at)
                if due is not None and due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                with path.open("a", encoding="utf-8") as file:
                    file.write(event.line + "\n")
                self._written += 1
        except OSError:
            log.exception("cannot append to the provisioning log %s", path)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
