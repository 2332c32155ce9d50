"""What must be on a slot before it is READY, and how does it get there without the studio hosting
anything?

A pool's *environment* is declared in one file (YAML or JSON): the image, then either a
`provisioning_script` URL (the `vastai/comfyui` image's own `PROVISIONING_SCRIPT` hook) or a
declarative manifest of custom nodes (git URL + commit), pip packages and models (URL, ComfyUI
folder, file name, optional sha256/size, required or background), plus extra non-secret env vars
and which of the pool's tokens the instance receives. Its content hash is its `version`.

The manifest travels inside the rent request itself (Vast.ai's `env` and `onstart`), so nothing
needs hosting:

- `WARMPOOL_ENV_VERSION`: the version;
- `WARMPOOL_MANIFEST_00`, `_01`, ...: concatenated in order, the standard base64 of the gzip of the
  manifest text (one line per item, tab-separated; `manifest_lines`);
- `WARMPOOL_SCRIPT_00`, ...: the same encoding of `warmpool/provision.sh`;
- `onstart`: a small bootstrap that unpacks both into `/opt/warmpool/`, runs the script in the
  background under the `/.provisioning` marker (its output in `/var/log/portal/provisioning.log`),
  then runs the image's own start command.

Vast.ai limits each env entry (key + value) to 256 characters, the whole env to 32768 and
`onstart` to 4048: `check_fits` refuses a too-large environment when it is set on a pool, not at
rent time. Tokens never appear here: the rent activity adds `HF_TOKEN`/`CIVITAI_TOKEN` for the
names in `secrets`, so an `Environment` may travel through workflow history.

Readiness: `required_checks` lists what ComfyUI must report (node classes in `/object_info`,
files in `/models/<folder>`), and `missing` names what is not there yet, in the product's words.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from warmpool.boundary import Model

DEFAULT_IMAGE = "vastai/comfyui:latest"
DEFAULT_ONSTART = "entrypoint.sh"
"""The image's own start command (the ComfyUI template's `onstart`, `SlotConfig.onstart`)."""

ENV_ENTRY_MAX = 256
"""Vast.ai: characters per env entry, key and value together (the simulator counts both)."""
ENV_TOTAL_MAX = 32768
"""Vast.ai: characters of the whole env, keys and values."""
ENV_RESERVE = 4096
"""Room left for what the rent adds to the env: port flags, portal token, HF/Civitai tokens."""
ENV_BUDGET = ENV_TOTAL_MAX - ENV_RESERVE
ONSTART_MAX = 4048
"""Vast.ai's onstart limit (its docs also say 4096 for args + onstart: the smaller one)."""

VERSION_VAR = "WARMPOOL_ENV_VERSION"
MANIFEST_PREFIX = "WARMPOOL_MANIFEST_"
SCRIPT_PREFIX = "WARMPOOL_SCRIPT_"
MAX_CHUNKS = 100
"""Chunk suffixes are two digits: 00..99."""
CHUNK_CHARS = ENV_ENTRY_MAX - len(MANIFEST_PREFIX) - 2
"""236: a chunk entry (`WARMPOOL_MANIFEST_NN` + value) stays within 256 characters, as Vast.ai
(and the simulator) count an entry, so every chunk value is also well under 255."""

SECRET_ENV: dict[str, str] = {"hf": "HF_TOKEN", "civitai": "CIVITAI_TOKEN"}
"""The instance env var each declared secret becomes (set by the rent activity, never here)."""

RESERVED_ENV = frozenset(
    {
        "HF_TOKEN",
        "HUGGINGFACE_HUB_TOKEN",
        "CIVITAI_TOKEN",
        "OPEN_BUTTON_TOKEN",
        "OPEN_BUTTON_PORT",
        "WEB_PASSWORD",
        "PROVISIONING_SCRIPT",
        "PORTAL_CONFIG",
        "CONTAINER_API_KEY",
        "VASTAI_API_KEY",
    }
)
"""Names the pool sets itself (portal token and port, provisioning) or that hold secrets."""

LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}
"""ComfyUI lists files of `models/unet` under `diffusion_models` and of `models/clip` under
`text_encoders` (folder_paths.map_legacy): `/models/unet` may answer 404 on a current ComfyUI."""

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_GIT_RE = re.compile(r"(https?|file)://[^\s\\]+")
_HTTP_RE = re.compile(r"https?://[^\s/\\?#]+[^\s\\]*")
_HTTPS_RE = re.compile(r"https://[^\s/\\?#]+[^\s\\]*")
_COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FOLDER_RE = re.compile(r"[a-z0-9_]{1,64}")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+()\[\]@=-]{0,199}")
_CLASS_FORBIDDEN = re.compile(r"[,\t\r\n]")
_PIP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._\[\],<>=!~+@/:%#?-]{0,199}")
_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
_SECRET_NAME_RE = re.compile(
    r"(?:^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS)$"
)
_TOKEN_VALUE_RE = re.compile(
    r"^(hf_|api_org_|ghp_|gho_|ghs_|github_pat_|glpat-|sk-|xox[abprs]-|AKIA[0-9A-Z]{16})"
    r"|^[0-9a-f]{32}$"
)


class EnvironmentFileError(ValueError):
    """An environment file that cannot be used: one line per problem, each naming the file and
    the field path (`env.yaml: models[1].sha256: ...`), so a CLI prints it as is."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class EnvironmentTooLarge(ValueError):
    """The environment does not fit in a rent request (Vast.ai's env or onstart limits)."""


# --- field rules -------------------------------------------------------------------------------


def _hex_text(value: object) -> object:
    """YAML reads an all-digit commit or hash as a number, losing leading zeros: ask for quotes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be a quoted string (YAML read it as a number)")
    return value.lower() if isinstance(value, str) else value


def _safe_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be a folder name of letters, digits, '.', '_' or '-' (at most 100, not "
            f"starting with '.' or '-'), got {value!r}"
        )
    return value


def _git_url(value: str) -> str:
    if not _GIT_RE.fullmatch(value):
        raise ValueError(
            f"must be an https://, http:// or file:// git URL (no ssh, no spaces), got {value!r}"
        )
    return value


def _commit(value: str) -> str:
    if not _COMMIT_RE.fullmatch(value):
        raise ValueError(f"must be a commit hash of 7 to 40 hex characters, got {value!r}")
    return value


def _node_class(value: str) -> str:
    if not value.strip() or value != value.strip() or _CLASS_FORBIDDEN.search(value):
        raise ValueError(
            f"must be a node class name without commas, tabs or surrounding spaces: {value!r}"
        )
    return value


def _http_url(value: str) -> str:
    if not _HTTP_RE.fullmatch(value):
        raise ValueError(f"must be an http:// or https:// URL without spaces, got {value!r}")
    return value


def _https_url(value: str) -> str:
    if not _HTTPS_RE.fullmatch(value):
        raise ValueError(f"must be an https:// URL without spaces, got {value!r}")
    return value


def _folder(value: str) -> str:
    if not _FOLDER_RE.fullmatch(value):
        raise ValueError(
            "must be a ComfyUI models folder name of lower-case letters, digits and '_' "
            f"(checkpoints, loras, vae, ...), got {value!r}"
        )
    return value


def _file(value: str) -> str:
    if not _FILE_RE.fullmatch(value) or value.endswith(".part"):
        raise ValueError(
            "must be a plain file name (letters, digits and ._+-()[]@=, no '/', not starting "
            f"with '.', not ending with '.part'), got {value!r}"
        )
    return value


def _sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError(f"must be 64 hex characters, got {value!r}")
    return value


def _requirement(value: str) -> str:
    if value.startswith("-") or not _PIP_RE.fullmatch(value):
        raise ValueError(
            "must be a pip requirement such as 'package>=1.2' or 'name @ https://...': no "
            f"options and no shell characters such as ; & | $ ` ( ) quotes, got {value!r}"
        )
    return value


def _env_name(value: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{value!r}: ports are mapped by the pool, not by the environment")
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r}: env var names are upper case: [A-Z_][A-Z0-9_]*")
    if value in RESERVED_ENV or value.startswith("WARMPOOL_"):
        raise ValueError(
            f"{value!r} is set by the pool itself; tokens are declared in `secrets` (hf, civitai)"
        )
    if _SECRET_NAME_RE.search(value):
        raise ValueError(
            f"{value!r} looks like a secret: extra env vars are not secret (they are stored in "
            "the pool's history and sent in clear); declare HF/Civitai access in `secrets`"
        )
    return value


def _env_value(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be a string (quote it in YAML)")
    if any(c in value for c in "\n\r\0"):
        raise ValueError("must be one line")
    if _TOKEN_VALUE_RE.search(value):
        raise ValueError(
            "looks like a token: extra env vars are not secret; declare HF/Civitai access in "
            "`secrets` (the pool's own tokens are then sent to the instance)"
        )
    return value


NodeName = Annotated[str, AfterValidator(_safe_name)]
GitUrl = Annotated[str, AfterValidator(_git_url)]
Commit = Annotated[str, BeforeValidator(_hex_text), AfterValidator(_commit)]
NodeClass = Annotated[str, AfterValidator(_node_class)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
Folder = Annotated[str, AfterValidator(_folder)]
FileName = Annotated[str, AfterValidator(_file)]
Sha256 = Annotated[str, BeforeValidator(_hex_text), AfterValidator(_sha256)]
Requirement = Annotated[str, AfterValidator(_requirement)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]
Secret = Literal["hf", "civitai"]


# --- the declaration ---------------------------------------------------------------------------


class NodeSpec(Model):
    """A custom node pack, pinned to a commit so every slot runs the same code."""

    name: NodeName
    """Its folder under `custom_nodes/`."""
    git: GitUrl
    """Where to clone it from (https, http or file; ssh needs keys the instance has not got)."""
    commit: Commit
    """The commit checked out (detached): a branch would make two slots differ."""
    classes: list[NodeClass] = Field(default_factory=list)
    """Node class names it provides: readiness checks them in ComfyUI's `/object_info`, which
    proves the pack imported, not only that it was cloned."""
    required: bool = True
    """False: a pack whose failure does not keep the slot from READY."""


class ModelSpec(Model):
    """A model file, downloaded into a ComfyUI models folder."""

    url: HttpUrl
    folder: Folder
    """The ComfyUI models folder: checkpoints, loras, vae, clip, unet, diffusion_models,
    text_encoders, controlnet, upscale_models, embeddings, clip_vision, ..."""
    file: FileName
    """The file name in that folder (what workflows name it)."""
    sha256: Sha256 | None = None
    """Checked after download and on every later run: a wrong file is deleted, never served."""
    size: int | None = Field(default=None, gt=0)
    """Bytes: progress percentages, and a cheap check before the hash."""
    required: bool = True
    """True: present before READY; False: downloaded in the background after ComfyUI starts."""


class Environment(Model):
    """What every slot of a pool runs: see the module docstring. Its `version` is its content
    hash, so re-applying an older file gives the older version back (a rollback)."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=1024)
    fallback_image: str | None = Field(default=None, min_length=1, max_length=1024)
    provisioning_script: HttpsUrl | None = None
    """A script URL the image runs itself (`PROVISIONING_SCRIPT`); excludes nodes/pip/models."""
    nodes: list[NodeSpec] = Field(default_factory=list)
    pip: list[Requirement] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    """Extra non-secret instance env vars (stored in history, sent in clear)."""
    secrets: list[Secret] = Field(default_factory=list)
    """Which of the pool's tokens the instance receives (`HF_TOKEN`, `CIVITAI_TOKEN`)."""

    @field_validator("secrets")
    @classmethod
    def _secrets_as_a_set(cls, value: list[Secret]) -> list[Secret]:
        """Order and repetition carry no meaning: normalised so they do not change the version."""
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> Environment:
        problems: list[str] = []
        if self.provisioning_script is not None and (self.nodes or self.pip or self.models):
            problems.append(
                "provisioning_script: give either a provisioning_script URL or nodes/pip/models, "
                "not both"
            )
        if self.provisioning_script is not None:
            entry = len("PROVISIONING_SCRIPT") + len(self.provisioning_script)
            if entry > ENV_ENTRY_MAX:
                problems.append(
                    f"provisioning_script: the URL is {len(self.provisioning_script)} characters; "
                    f"Vast.ai allows {ENV_ENTRY_MAX - len('PROVISIONING_SCRIPT')} here"
                )
        names: dict[str, int] = {}
        owners: dict[str, str] = {}
        for i, node in enumerate(self.nodes):
            if node.name in names:
                first = names[node.name]
                problems.append(
                    f"nodes[{i}].name: {node.name!r} is already declared by nodes[{first}]"
                )
            names.setdefault(node.name, i)
            for j, cls in enumerate(node.classes):
                if cls in owners and owners[cls] != node.name:
                    problems.append(
                        f"nodes[{i}].classes[{j}]: {cls!r} is already provided by {owners[cls]!r}"
                    )
                owners.setdefault(cls, node.name)
        files: dict[tuple[str, str], int] = {}
        for i, model in enumerate(self.models):
            key = (model.folder, model.file)
            if key in files:
                problems.append(
                    f"models[{i}].file: {model.folder}/{model.file} is already declared by "
                    f"models[{files[key]}]"
                )
            files.setdefault(key, i)
        for name, value in self.env.items():
            if len(name) + len(value) > ENV_ENTRY_MAX:
                problems.append(
                    f"env.{name}: name and value are {len(name) + len(value)} characters; "
                    f"Vast.ai allows {ENV_ENTRY_MAX} per entry"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def version(self) -> str:
        """`env-` + 12 hex of the sha256 of the canonical JSON: same content, same version
        (whatever the key order, YAML or JSON); any change, a new version."""
        return "env-" + hashlib.sha256(canonical_json(self).encode()).hexdigest()[:12]

    @property
    def declarative(self) -> bool:
        """True when the pool ships a manifest (nodes, pip or models) rather than a script URL."""
        return bool(self.nodes or self.pip or self.models)


def canonical_json(env: Environment) -> str:
    """The content the version hashes: every field (defaults included), keys sorted."""
    return json.dumps(
        env.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def secret_env_names(env: Environment) -> list[str]:
    """The token env vars the rent activity adds for this environment (`HF_TOKEN`, ...)."""
    return [SECRET_ENV[s] for s in env.secrets]


# --- loading a file ----------------------------------------------------------------------------


def _path_text(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def validation_problems(error: ValidationError) -> list[str]:
    """One line per problem, `field.path: message`, without pydantic's URL footer."""
    problems: list[str] = []
    for item in error.errors(include_url=False):
        path = _path_text(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        for line in message.splitlines():
            problems.append(f"{path}: {line}" if path else line)
    return problems


def parse_environment(data: object, *, source: str = "environment") -> Environment:
    """An `Environment` from decoded YAML/JSON, or `EnvironmentFileError` naming `source`."""
    if not isinstance(data, dict):
        raise EnvironmentFileError(
            [f"{source}: must be a mapping of fields (image, nodes, models, ...)"]
        )
    try:
        return Environment.model_validate(data)
    except ValidationError as error:
        raise EnvironmentFileError([f"{source}: {p}" for p in validation_problems(error)]) from None


def _no_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _load_yaml(text: str, source: str) -> object:
    class _StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice (PyYAML silently keeps the last one)."""

    def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise EnvironmentFileError([f"{source}: {where}{what}"]) from None


def load_environment(path: Path) -> Environment:
    """Read and validate an environment file: `.yaml`/`.yml` (PyYAML) or `.json`.

    Every problem raises `EnvironmentFileError`, one line each, naming the file and the field.
    """
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise EnvironmentFileError([f"{source}: must end in .yaml, .yml or .json"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise EnvironmentFileError([f"{source}: cannot read: {reason}"]) from None
    data: object
    if suffix in (".yaml", ".yml"):
        data = _load_yaml(text, source)
    else:
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_json_keys)
        except json.JSONDecodeError as error:
            raise EnvironmentFileError(
                [f"{source}: line {error.lineno}, column {error.colno}: {error.msg}"]
            ) from None
        except ValueError as error:
            raise EnvironmentFileError([f"{source}: {error}"]) from None
    return parse_environment(data, source=source)


# --- the wire format ---------------------------------------------------------------------------


def manifest_lines(env: Environment) -> list[str]:
    """The manifest, one tab-separated line per item, in the order the script installs them:

    - `node\\t<name>\\t<git>\\t<commit>\\t<classes joined by ",">\\t<1|0 required>`
    - `pip\\t<requirement>`
    - `model\\t<folder>\\t<file>\\t<url>\\t<sha256 or ->\\t<size or ->\\t<1|0 required>`

    No field can hold a tab or a newline (validation refuses them).
    """
    lines = [
        "\t".join(
            ("node", n.name, n.git, n.commit, ",".join(n.classes), "1" if n.required else "0")
        )
        for n in env.nodes
    ]
    lines += [f"pip\t{req}" for req in env.pip]
    lines += [
        "\t".join(
            (
                "model",
                m.folder,
                m.file,
                m.url,
                m.sha256 or "-",
                str(m.size) if m.size is not None else "-",
                "1" if m.required else "0",
            )
        )
        for m in env.models
    ]
    return lines


def encode_chunks(text: str, prefix: str) -> dict[str, str]:
    """`{prefix}00`, `{prefix}01`, ...: the base64 of the gzip of `text`, cut into values of at
    most CHUNK_CHARS characters. Deterministic (gzip mtime 0), so the same text gives the same
    env. More than MAX_CHUNKS chunks raises EnvironmentTooLarge."""
    blob = base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    data = blob.decode("ascii")
    chunks = [data[i : i + CHUNK_CHARS] for i in range(0, len(data), CHUNK_CHARS)] or [""]
    if len(chunks) > MAX_CHUNKS:
        raise EnvironmentTooLarge(
            f"{prefix}*: {len(data)} characters of compressed data need {len(chunks)} env "
            f"entries, at most {MAX_CHUNKS} are possible ({MAX_CHUNKS * CHUNK_CHARS} characters)"
            f"; {_HINT}"
        )
    return {f"{prefix}{i:02d}": chunk for i, chunk in enumerate(chunks)}


def decode_chunks(env_vars: Mapping[str, str], prefix: str) -> str:
    """The inverse of `encode_chunks`; ValueError when chunks are missing or corrupt."""
    indexes = sorted(
        int(k[len(prefix) :])
        for k in env_vars
        if k.startswith(prefix) and re.fullmatch(r"\d\d", k[len(prefix) :])
    )
    if not indexes:
        raise ValueError(f"no {prefix}NN variables")
    if indexes != list(range(len(indexes))):
        raise ValueError(f"{prefix}NN variables are not numbered 00..{len(indexes) - 1:02d}")
    data = "".join(env_vars[f"{prefix}{i:02d}"] for i in indexes)
    return gzip.decompress(base64.b64decode(data, validate=True)).decode("utf-8")


def decode_manifest(env_vars: Mapping[str, str]) -> list[str]:
    """The manifest lines an instance receives (what a simulator or a test reads back)."""
    text = decode_chunks(env_vars, MANIFEST_PREFIX)
    return text.split("\n") if text else []


def decode_script(env_vars: Mapping[str, str]) -> str:
    """The provisioning script an instance receives."""
    return decode_chunks(env_vars, SCRIPT_PREFIX)


@lru_cache(maxsize=1)
def provision_script() -> str:
    """The text of `warmpool/provision.sh` (package data)."""
    return resources.files("warmpool").joinpath("provision.sh").read_text(encoding="utf-8")


def shipped_script() -> str:
    """`provision.sh` as an instance receives it: comment-only and blank lines dropped (the
    script documents itself at length; the env budget is better spent on the manifest). The
    script has no here-documents or multi-line strings, so no such line is data."""
    lines = provision_script().splitlines()
    kept = lines[:1] + [
        line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")
    ]
    return "\n".join(kept) + "\n"


@lru_cache(maxsize=1)
def _script_chunks() -> tuple[tuple[str, str], ...]:
    return tuple(encode_chunks(shipped_script(), SCRIPT_PREFIX).items())


_BOOTSTRAP = """\
# warmpool bootstrap: unpack the pool's environment from the WARMPOOL_* env vars into
# /opt/warmpool, install it in the background under /.provisioning, then start the image.
R="${WARMPOOL_ROOT:-}"; D="$R/opt/warmpool"; L="$R/var/log/portal/provisioning.log"
M="$R/.provisioning"
mkdir -p "$D" "${L%/*}"
wp_unpack() {
  printenv | LC_ALL=C sort | sed -n "s/^WARMPOOL_$1_[0-9][0-9]=//p" | tr -d '\\n' \\
    | base64 -d | gunzip
}
if wp_unpack SCRIPT > "$D/provision.sh" && wp_unpack MANIFEST > "$D/manifest.tsv"; then
  touch "$M"
  (WARMPOOL_MARKER="$M" bash "$D/provision.sh" "$D/manifest.tsv"; rm -f "$M") \\
    >> "$L" 2>&1 < /dev/null &
else
  echo "warmpool: environment ${WARMPOOL_ENV_VERSION:-?} incomplete: unpack failed" >> "$L"
fi
"""
"""POSIX sh; `WARMPOOL_ROOT` (unset on an instance) roots every path for tests."""


def bootstrap(onstart: str) -> str:
    """The `onstart` of a declarative environment: the bootstrap, then the image's `onstart`."""
    return _BOOTSTRAP + onstart


class InstanceSetup(Model):
    """What a rent request carries for an environment (never a token: see `secret_env_names`)."""

    env_vars: dict[str, str]
    onstart: str


_HINT = (
    "host a provisioning script and give its URL as `provisioning_script`, or declare fewer "
    "or shorter items"
)


def _env_vars(env: Environment) -> dict[str, str]:
    env_vars: dict[str, str] = {VERSION_VAR: env.version}
    if env.provisioning_script is not None:
        env_vars["PROVISIONING_SCRIPT"] = env.provisioning_script
    elif env.declarative:
        env_vars.update(encode_chunks("\n".join(manifest_lines(env)), MANIFEST_PREFIX))
        env_vars.update(_script_chunks())
    env_vars.update(env.env)
    return env_vars


def _check_sizes(env_vars: Mapping[str, str], onstart: str) -> None:
    size = sum(len(k) + len(v) for k, v in env_vars.items())
    if size > ENV_BUDGET:
        raise EnvironmentTooLarge(
            f"the environment needs {size} characters of instance env vars; the limit is "
            f"{ENV_BUDGET} ({ENV_TOTAL_MAX} for Vast.ai's whole env minus {ENV_RESERVE} kept for "
            f"ports and tokens); {_HINT}"
        )
    if len(onstart) > ONSTART_MAX:
        raise EnvironmentTooLarge(
            f"the onstart script is {len(onstart)} characters; Vast.ai allows {ONSTART_MAX}; "
            "shorten the image's start command"
        )


def instance_setup(env: Environment, *, onstart: str) -> InstanceSetup:
    """The env vars and onstart of a rent request for `env`; `onstart` is the image's own start
    command (`SlotConfig.onstart`), which runs last. Raises EnvironmentTooLarge.

    - `provisioning_script`: `PROVISIONING_SCRIPT`, the version and the extra env; `onstart`
      unchanged (the image runs the script itself);
    - a manifest: the version, `WARMPOOL_MANIFEST_NN`, `WARMPOOL_SCRIPT_NN` and the extra env;
      `onstart` is the bootstrap followed by the given `onstart`;
    - neither: the version and the extra env; `onstart` unchanged.
    """
    env_vars = _env_vars(env)
    start = bootstrap(onstart) if env.provisioning_script is None and env.declarative else onstart
    _check_sizes(env_vars, start)
    return InstanceSetup(env_vars=env_vars, onstart=start)


def check_fits(env: Environment, *, onstart: str = DEFAULT_ONSTART) -> None:
    """Raise EnvironmentTooLarge unless `env` fits a rent request (what `pool set-env` calls).
    Cheap: one gzip of the manifest (the script's encoding is cached)."""
    instance_setup(env, onstart=onstart)


# --- readiness ---------------------------------------------------------------------------------


def listing_folder(folder: str) -> str:
    """The `/models/<folder>` a file of `models/<folder>` is listed under by ComfyUI."""
    return LEGACY_FOLDERS.get(folder, folder)


class ReadinessChecks(Model):
    """What ComfyUI must report before a slot is READY with `version`."""

    version: str
    node_classes: dict[str, str] = Field(default_factory=dict)
    """Required node class -> the node pack (name) that provides it, for messages."""
    models: list[tuple[str, str]] = Field(default_factory=list)
    """Required models as (folder, file), the folder as declared."""

    @property
    def folders(self) -> list[str]:
        """The `/models/<folder>` listings to fetch (legacy names mapped, each once)."""
        return sorted({listing_folder(folder) for folder, _ in self.models})

    @property
    def empty(self) -> bool:
        return not self.node_classes and not self.models


def required_checks(env: Environment) -> ReadinessChecks:
    """What readiness checks for `env`: the classes of required nodes, the required models.

    A `provisioning_script` declares nothing, so only ComfyUI answering is checked then."""
    classes = {cls: node.name for node in env.nodes if node.required for cls in node.classes}
    models = [(m.folder, m.file) for m in env.models if m.required]
    return ReadinessChecks(version=env.version, node_classes=classes, models=models)


def missing(
    checks: ReadinessChecks,
    object_info_classes: set[str],
    models_by_folder: Mapping[str, set[str]],
) -> list[str]:
    """What is not there yet, in the product's words (`node class FooNode (from comfyui-foo)`,
    `model checkpoints/sdxl.safetensors`); empty when everything required is present.

    `models_by_folder` holds the `/models/<folder>` listings, keyed by the folder fetched; a
    legacy folder (`unet`, `clip`) is looked up under its current name and its own."""
    gaps = [
        f"node class {cls} (from {node})"
        for cls, node in checks.node_classes.items()
        if cls not in object_info_classes
    ]
    empty: set[str] = set()
    for folder, file in checks.models:
        listed = models_by_folder.get(listing_folder(folder), empty) | models_by_folder.get(
            folder, empty
        )
        if file not in listed:
            gaps.append(f"model {folder}/{file}")
    return gaps


class EnvironmentCheckInput(Model):
    """`comfy.check_environment`: one check of `checks` on the endpoint the slot validated.

    `url` is the slot's connection URL (validated by the port probes, never another address);
    the activity sends the instance token of `label` to it, and only to it."""

    label: str
    url: str
    checks: ReadinessChecks


class EnvironmentReport(Model):
    """What one check found: `missing` names what is not there yet (`missing()`'s words), empty
    when every required node class and model is present."""

    missing: list[str]
    classes_found: int
    """Node classes `/object_info` listed (0 when no class is required: not fetched)."""
    models_found: dict[str, int]
    """Files listed per `/models/<folder>` fetched (the folders of `ReadinessChecks.folders`)."""
    notes: list[str] = Field(default_factory=list)
    """What the check could not read as asked, e.g. a folder ComfyUI does not know (404)."""

    @property
    def complete(self) -> bool:
        return not self.missing


# --- progress from the provisioning log --------------------------------------------------------

_LOG_EVENT_RE = re.compile(r"(?:^|[\s:\]|>])warmpool: (?P<event>.*?)\s*$")
"""A `provision.sh` line, also when the collector's line carries a prefix (a file name, a
time stamp): `warmpool: ` at the start or after a separator."""
_INSTANCE_SEPARATOR_RE = re.compile(r"^--- instance \d+ ---$")
"""The line a slot's log tail gets when its lines start coming from another instance."""
_SIZED_RE = re.compile(r"model (?P<path>\S+) (?P<pct>\d+)% \((?P<got>\d+)/(?P<size>\d+) bytes\)")
_UNSIZED_RE = re.compile(r"model (?P<path>\S+) (?P<got>\d+) bytes")
_FAILED_RE = re.compile(r"(?P<kind>node|model|pip) (?P<name>.+?) FAILED: (?P<why>.*)")
_NODE_DONE_RE = re.compile(r"node (?P<name>\S+) at \S+ done")
_PIP_DONE_RE = re.compile(r"pip (?P<name>.+) done")
_MODEL_DONE_RE = re.compile(r"model (?P<name>\S+) done(?P<present> \(already present\))?")
_ENV_RE = re.compile(
    r"environment (?P<version>\S+) (?P<what>start|complete|incomplete: .*"
    r"|required complete|required incomplete: .*)"
)
_RESTART_LINES = frozenset({"restarting ComfyUI to import the new nodes", "ComfyUI restart failed"})
_UNITS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB"))


def _amount(got: int, total: int | None = None) -> str:
    """`1.2/2.7 GB`, `167.3 MB`, `500 bytes`: decimal units chosen by the total (or the amount)."""
    scale = total if total is not None else got
    for factor, unit in _UNITS:
        if scale >= factor:
            text = f"{got / factor:.1f}"
            return f"{text}/{total / factor:.1f} {unit}" if total is not None else f"{text} {unit}"
    return f"{got}/{total} bytes" if total is not None else f"{got} bytes"


def _steps(env: Environment) -> list[tuple[str, str, str]]:
    """`provision.sh`'s order as (kind, name, what it is doing then): nodes, pip packages,
    required models, then (after `required complete`) optional models."""
    steps = [("node", n.name, f"installing node {n.name}") for n in env.nodes]
    steps += [("pip", req, f"installing pip {req}") for req in env.pip]
    for required in (True, False):
        steps += [
            ("model", path, f"downloading {path}" + ("" if required else " (optional)"))
            for m in env.models
            if m.required is required
            for path in (f"{m.folder}/{m.file}",)
        ]
    return steps


def _after(env: Environment | None, kind: str, name: str) -> str | None:
    """What the script does after finishing `kind name`, when the environment says."""
    if env is None:
        return None
    steps = _steps(env)
    for i, (step_kind, step_name, _) in enumerate(steps):
        if (step_kind, step_name) == (kind, name):
            return steps[i + 1][2] if i + 1 < len(steps) else None
    return None


def _describe(event: str, env: Environment | None) -> str | None:
    """One `warmpool:` event in the product's words; None for an event that is no state."""
    if match := _SIZED_RE.fullmatch(event):
        amount = _amount(int(match["got"]), int(match["size"]))
        return f"downloading {match['path']} {match['pct']}% ({amount})"
    if match := _UNSIZED_RE.fullmatch(event):
        return f"downloading {match['path']} ({_amount(int(match['got']))})"
    if match := _FAILED_RE.fullmatch(event):
        return f"{match['kind']} {match['name']} FAILED: {match['why']}"
    if match := _NODE_DONE_RE.fullmatch(event):
        return _after(env, "node", match["name"]) or f"node {match['name']} installed"
    if match := _MODEL_DONE_RE.fullmatch(event):
        done = "already present" if match["present"] else "downloaded"
        return _after(env, "model", match["name"]) or f"model {match['name']} {done}"
    if match := _PIP_DONE_RE.fullmatch(event):
        return _after(env, "pip", match["name"]) or f"pip {match['name']} installed"
    if match := _ENV_RE.fullmatch(event):
        version, what = match["version"], match["what"]
        steps = _steps(env) if env is not None and env.version == version else []
        if what == "start":
            return steps[0][2] if steps else f"environment {version} starting"
        optional = [s[2] for s in steps if s[2].endswith("(optional)")]
        if what == "required complete" and optional:
            return f"environment {version} required complete, {optional[0]}"
        return f"environment {version} {what}"
    if event in _RESTART_LINES:
        return event
    return None


def provisioning_progress(lines: Sequence[str], *, env: Environment | None = None) -> str | None:
    """The latest state of `provision.sh` in a slot's log tail, in the product's words:

    - `downloading checkpoints/sdxl.safetensors 45% (3.1/6.9 GB)`, or `downloading
      embeddings/x.pt (167.3 MB)` when the size is not declared;
    - `node comfyui-foo installed`, `pip onnx>=1.18 installed`, `model vae/x.safetensors
      downloaded` (or `already present`); with `env` (the environment the instance got), what
      the script does next instead: `installing node comfyui-foo`, `installing pip onnx>=1.18`,
      `downloading loras/x.safetensors` (before its first progress line);
    - `model loras/x.safetensors FAILED: http 404` (also `node ...`, `pip ...`);
    - `environment env-abc starting`, `... required complete`, `... required incomplete:
      <what>`, `environment env-abc complete`, `environment env-abc incomplete: <what>`;
    - `restarting ComfyUI to import the new nodes`.

    None when the tail holds no `warmpool:` state line (no SSH logs, or a provisioning_script
    environment). Lines may carry a prefix before `warmpool: ` (a file name, a time stamp); lines
    before the tail's last `--- instance N ---` belong to an earlier instance and are not read.
    Pure: a workflow may call it on its log tail.
    """
    for line in reversed(lines):
        if _INSTANCE_SEPARATOR_RE.match(line):
            return None
        match = _LOG_EVENT_RE.search(line)
        if match is None:
            continue
        state = _describe(match["event"], env)
        if state is not None:
            return state
    return None
