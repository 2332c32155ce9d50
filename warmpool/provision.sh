#!/usr/bin/env bash
# warmpool provisioning: install a pool's environment (custom nodes, pip packages, models) on a
# ComfyUI instance from the manifest the rent request carried (docs/environment.md).
#
#   provision.sh MANIFEST.tsv
#
# Manifest lines (tab-separated):
#   node  <name> <git> <commit> <classes,...> <1|0 required>
#   pip   <requirement>
#   model <folder> <file> <url> <sha256|-> <size|-> <1|0 required>
#
# Order: nodes, pip packages, required models; then the /.provisioning marker is removed (and a
# ComfyUI that started early is restarted to import new nodes); then optional models.
# Idempotent: a second run finds everything in place and downloads nothing.
#
# Log lines (stdout, one per event, greppable with '^warmpool: '):
#   warmpool: environment <version> start
#   warmpool: node <name> at <commit> done | warmpool: node <name> FAILED: <why>
#   warmpool: pip <requirement> done       | warmpool: pip <requirement> FAILED: <why>
#   warmpool: model <folder>/<file> <pct>% (<bytes>/<total> bytes)    (size declared)
#   warmpool: model <folder>/<file> <bytes> bytes                      (size not declared)
#   warmpool: model <folder>/<file> done [(already present)] | ... FAILED: <why>
#   warmpool: environment <version> required complete | required incomplete: <what>
#   warmpool: environment <version> complete | incomplete: <what>      (then exit 1)
#
# Environment: COMFYUI_DIR (default $WORKSPACE/ComfyUI, WORKSPACE default /workspace),
# WARMPOOL_ENV_VERSION, WARMPOOL_MARKER (file removed once required items are in place),
# WARMPOOL_PIP (pip command, default /venv/main/bin/pip, else pip), WARMPOOL_STATE (default:
# state/ next to the manifest), WARMPOOL_PROGRESS_SECONDS (default 5), WARMPOOL_SUPERVISORCTL
# (default supervisorctl), HF_TOKEN (sent only to huggingface.co and its subdomains, over https),
# CIVITAI_TOKEN (only to civitai.com and its subdomains, over https).
set -euo pipefail

say() { printf 'warmpool: %s\n' "$*"; }

# The token a download URL may carry: HF's only to huggingface.co (and subdomains), Civitai's
# only to civitai.com (and subdomains), over https only; nothing for any other host.
token_for() {
  local url=$1 rest host
  [[ $url == https://* ]] || return 0
  rest=${url#https://}
  host=${rest%%[/?#]*}
  host=${host##*@}
  host=${host%%:*}
  host=${host,,}
  if [[ -n ${HF_TOKEN:-} && ($host == huggingface.co || $host == *.huggingface.co) ]]; then
    printf '%s' "$HF_TOKEN"
  elif [[ -n ${CIVITAI_TOKEN:-} && ($host == civitai.com || $host == *.civitai.com) ]]; then
    printf '%s' "$CIVITAI_TOKEN"
  fi
}

# Split a manifest line on tabs into the global array F, keeping empty fields.
fields() {
  F=()
  readarray -t -d $'\t' F < <(printf '%s' "$1")
}

join_by() {
  local sep=$1 out=""
  shift
  for item in "$@"; do out+="${out:+$sep}$item"; done
  printf '%s' "$out"
}

# --- nodes ---------------------------------------------------------------------------------------

node_step() {
  local url=$2 commit=$3 dir=$comfy/custom_nodes/$1 record=$state/node.$1 head=""
  mkdir -p "$comfy/custom_nodes" || { why="cannot create $comfy/custom_nodes"; return 1; }
  if [[ -d $dir/.git ]]; then
    head=$(git -C "$dir" rev-parse HEAD 2>/dev/null) || head=""
    if [[ -n $head && $head == "$commit"* && -f $record && $(<"$record") == "$commit" ]]; then
      return 0
    fi
    git -C "$dir" remote set-url origin "$url" || { why="git remote set-url failed"; return 1; }
  elif [[ -e $dir ]]; then
    why="$dir exists and is not a git checkout"
    return 1
  else
    if ! git clone --quiet --no-checkout "$url" "$dir"; then
      rm -rf "$dir"
      why="git clone failed"
      return 1
    fi
  fi
  if ! git -C "$dir" cat-file -e "$commit^{commit}" 2>/dev/null; then
    git -C "$dir" fetch --quiet --tags origin || { why="git fetch failed"; return 1; }
  fi
  git -C "$dir" checkout --quiet --detach "$commit" || { why="commit $commit not found"; return 1; }
  if [[ -f $dir/.gitmodules ]]; then
    git -C "$dir" submodule --quiet update --init --recursive \
      || { why="git submodule update failed"; return 1; }
  fi
  changed=1
  if [[ -f $dir/requirements.txt ]]; then
    "${pip_cmd[@]}" install -r "$dir/requirements.txt" \
      || { why="pip install -r requirements.txt failed"; return 1; }
  fi
  printf '%s' "$commit" >"$record"
}

# --- pip -----------------------------------------------------------------------------------------

pip_step() {
  local req=$1 record=$state/pip.done
  if [[ -f $record ]] && grep -Fxq -- "$req" "$record"; then return 0; fi
  "${pip_cmd[@]}" install "$req" || { why="pip install failed"; return 1; }
  changed=1
  printf '%s\n' "$req" >>"$record"
}

# --- models --------------------------------------------------------------------------------------

file_size() { stat -c %s "$1"; }

progress() {  # label path total
  local got=0
  [[ -f $2 ]] && got=$(file_size "$2")
  if [[ $3 != - && $3 -gt 0 ]]; then
    say "model $1 $((got * 100 / $3))% ($got/$3 bytes)"
  else
    say "model $1 $got bytes"
  fi
}

# An existing file is kept when it matches what is declared; its verified hash is remembered
# (size, mtime, sha256) so a restart does not re-hash gigabytes.
present_ok() {  # dest sha size record
  local dest=$1 sha=$2 size=$3 record=$4 stamp
  stamp="$(stat -c '%s %Y' "$dest") $sha"
  if [[ $size != - && $(file_size "$dest") != "$size" ]]; then return 1; fi
  [[ $sha == - ]] && return 0
  [[ -f $record && $(<"$record") == "$stamp" ]] && return 0
  if [[ $(sha256sum "$dest" | cut -d' ' -f1) == "$sha" ]]; then
    printf '%s' "$stamp" >"$record"
    return 0
  fi
  return 1
}

# One curl run into $part (resuming when asked), progress lines while it runs. Sets code, rc, err.
fetch() {  # label url part total resume
  local label=$1 url=$2 part=$3 total=$4 resume=$5 token pid last naps
  local args=(--silent --show-error --location --fail --retry 3 --connect-timeout 30
    --speed-limit 1024 --speed-time 120 --output "$part" --write-out '%{http_code}')
  [[ $resume == 1 ]] && args+=(--continue-at -)
  token=$(token_for "$url")
  if [[ -n $token ]]; then
    # The token goes through stdin, never argv (ps would show it to every process).
    printf 'header = "Authorization: Bearer %s"\n' "$token" \
      | curl --config - "${args[@]}" "$url" >"$tmp/code" 2>"$tmp/err" &
  else
    curl "${args[@]}" "$url" >"$tmp/code" 2>"$tmp/err" </dev/null &
  fi
  pid=$!
  last=$SECONDS
  naps=(0.01 0.02 0.05)  # a small file is done within milliseconds: look soon, then every 0.2 s
  while kill -0 "$pid" 2>/dev/null; do
    sleep "${naps[0]:-0.2}"
    naps=("${naps[@]:1}")
    if ((SECONDS - last >= every)) && kill -0 "$pid" 2>/dev/null; then
      last=$SECONDS
      progress "$label" "$part" "$total"
    fi
  done
  rc=0
  wait "$pid" || rc=$?
  code=$(<"$tmp/code") || code=""
  code=${code:-000}
  err=$(head -c 200 "$tmp/err" | tr '\n' ' ') || err=""
}

model_step() {  # folder file url sha size
  local url=$3 sha=$4 size=$5 label=$1/$2 resume=0 got
  local dir=$comfy/models/$1 dest=$comfy/models/$1/$2 record=$state/model.$1.$2
  local part=$dest.part
  mkdir -p "$dir" || { why="cannot create $dir"; return 1; }
  if [[ -f $dest ]]; then
    if present_ok "$dest" "$sha" "$size" "$record"; then
      present=1
      return 0
    fi
    rm -f "$dest" "$record"
  fi
  [[ -s $part ]] && resume=1
  fetch "$label" "$url" "$part" "$size" "$resume"
  if [[ $resume == 1 && ($rc == 33 || $rc == 36 || $code == 416) ]]; then
    # The host cannot resume (or the partial file is already whole/bad): start over.
    rm -f "$part"
    fetch "$label" "$url" "$part" "$size" 0
  fi
  if [[ $rc != 0 ]]; then
    if [[ $code == 4* ]]; then rm -f "$part"; fi
    if [[ $code != 000 && $code -ge 400 ]]; then
      why="http $code"
    else
      why="download failed (curl exit $rc${err:+: $err})"
    fi
    return 1
  fi
  [[ -f $part ]] || : >"$part"
  progress "$label" "$part" "$size"
  got=$(file_size "$part")
  if [[ $size != - && $got != "$size" ]]; then
    rm -f "$part"
    why="size mismatch: got $got bytes, expected $size"
    return 1
  fi
  if [[ $sha != - ]]; then
    local actual
    actual=$(sha256sum "$part" | cut -d' ' -f1)
    if [[ $actual != "$sha" ]]; then
      rm -f "$part"
      why="sha256 mismatch: got $actual"
      return 1
    fi
  fi
  mv -f "$part" "$dest" || { why="cannot rename $part"; return 1; }
  [[ $sha != - ]] && printf '%s' "$(stat -c '%s %Y' "$dest") $sha" >"$record"
  return 0
}

models_pass() {  # 1: required models, 0: optional ones
  local line
  for line in "${models[@]}"; do
    fields "$line"
    [[ ${F[6]:-1} == "$1" ]] || continue
    why=""
    present=0
    if model_step "${F[1]}" "${F[2]}" "${F[3]}" "${F[4]:--}" "${F[5]:--}"; then
      if [[ $present == 1 ]]; then
        say "model ${F[1]}/${F[2]} done (already present)"
      else
        say "model ${F[1]}/${F[2]} done"
      fi
    else
      say "model ${F[1]}/${F[2]} FAILED: $why"
      if [[ $1 == 1 ]]; then
        failed+=("model ${F[1]}/${F[2]}")
      else
        failed+=("model ${F[1]}/${F[2]} (optional)")
      fi
    fi
  done
}

restart_comfyui_if_running() {
  local sv=${WARMPOOL_SUPERVISORCTL:-supervisorctl}
  command -v "$sv" >/dev/null 2>&1 || return 0
  if "$sv" status comfyui 2>/dev/null | grep -q RUNNING; then
    say "restarting ComfyUI to import the new nodes"
    "$sv" restart comfyui >/dev/null 2>&1 || say "ComfyUI restart failed"
  fi
}

main() {
  local manifest=${1:?usage: provision.sh MANIFEST.tsv} line
  comfy=${COMFYUI_DIR:-${WORKSPACE:-/workspace}/ComfyUI}
  version=${WARMPOOL_ENV_VERSION:-unknown}
  state=${WARMPOOL_STATE:-$(dirname "$manifest")/state}
  every=${WARMPOOL_PROGRESS_SECONDS:-5}
  if [[ -n ${WARMPOOL_PIP:-} ]]; then
    read -ra pip_cmd <<<"$WARMPOOL_PIP"
  elif [[ -x /venv/main/bin/pip ]]; then
    pip_cmd=(/venv/main/bin/pip)
  else
    pip_cmd=(pip)
  fi
  export GIT_TERMINAL_PROMPT=0
  failed=()
  changed=0
  mkdir -p "$state"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # One run at a time (an instance restarted while a run was going on starts another).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$state/lock"
    flock 9
  fi

  nodes=()
  pips=()
  models=()
  while IFS= read -r line || [[ -n $line ]]; do
    case $line in
      node$'\t'*) nodes+=("$line") ;;
      pip$'\t'*) pips+=("$line") ;;
      model$'\t'*) models+=("$line") ;;
      '') ;;
      *) say "manifest line ignored: ${line%%$'\t'*}" ;;
    esac
  done <"$manifest"

  say "environment $version start"
  for line in "${nodes[@]}"; do
    fields "$line"
    why=""
    if node_step "${F[1]}" "${F[2]}" "${F[3]}"; then
      say "node ${F[1]} at ${F[3]} done"
    else
      say "node ${F[1]} FAILED: $why"
      if [[ ${F[5]:-1} == 1 ]]; then
        failed+=("node ${F[1]}")
      else
        failed+=("node ${F[1]} (optional)")
      fi
    fi
  done
  for line in "${pips[@]}"; do
    fields "$line"
    why=""
    if pip_step "${F[1]}"; then
      say "pip ${F[1]} done"
    else
      say "pip ${F[1]} FAILED: $why"
      failed+=("pip ${F[1]}")
    fi
  done
  models_pass 1

  if ((${#failed[@]})); then
    say "environment $version required incomplete: $(join_by ', ' "${failed[@]}")"
  else
    say "environment $version required complete"
  fi
  # ComfyUI may start now: optional models keep downloading while it serves.
  if [[ -n ${WARMPOOL_MARKER:-} ]]; then rm -f "$WARMPOOL_MARKER"; fi
  if [[ $changed == 1 ]]; then restart_comfyui_if_running; fi

  models_pass 0
  if ((${#failed[@]})); then
    say "environment $version incomplete: $(join_by ', ' "${failed[@]}")"
    exit 1
  fi
  say "environment $version complete"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
