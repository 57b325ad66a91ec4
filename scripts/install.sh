#!/usr/bin/env bash
# Install pyops on a server: system user, /etc/pyops, repository, venv, systemd timers.
# Idempotent: run it again to upgrade. --uninstall removes units and the venv, never backups.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/install.sh [options]
  --prefix DIR     install under DIR instead of / (no user, chown or systemctl; for tests)
  --source DIR     the pyops source tree to install (default: this script's checkout)
  --user NAME      service user (default: pyops)
  --no-enable      install the units but do not enable the timers
  --dry-run        print what would be done, change nothing
  --uninstall      remove units and the venv; keep config, repository and backups
  -h, --help       this help
Layout: /etc/pyops (0700, pyops.toml 0600), /var/backups/pyops (0700),
/opt/pyops (venv), /usr/local/bin/pyops (a link to it), shell completion for
bash, zsh and fish under /usr/local/share, units in /etc/systemd/system, timers:
pyops-backup@auto, pyops-maintenance, pyops-health, pyops-drill.
USAGE
}

prefix="" source_dir="$(cd "$(dirname "$0")/.." && pwd)" user="pyops"
enable=1 dry=0 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a directory}"; shift 2 ;;
    --user) user="${2:?--user needs a name}"; shift 2 ;;
    --no-enable) enable=0; shift ;;
    --dry-run) dry=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

etc="$prefix/etc/pyops"
repo="$prefix/var/backups/pyops"
venv="$prefix/opt/pyops"
unitdir="$prefix/etc/systemd/system"
config="$etc/pyops.toml"
link="$prefix/usr/local/bin/pyops"
share="$prefix/usr/local/share"
completions="bash:$share/bash-completion/completions/pyops
zsh:$share/zsh/site-functions/_pyops
fish:$share/fish/vendor_completions.d/pyops.fish"
system=1
[ -n "$prefix" ] && system=0

run() {
  if [ "$dry" -eq 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}
say() { printf 'install.sh: %s\n' "$*" >&2; }

# click writes each shell's completion script: _PYOPS_COMPLETE=<shell>_source pyops
install_completions() {
  local shell file
  while IFS=: read -r shell file; do
    if [ "$dry" -eq 1 ]; then
      printf '+ _PYOPS_COMPLETE=%s_source %s > %s\n' "$shell" "$venv/bin/pyops" "$file"
      continue
    fi
    mkdir -p "$(dirname "$file")"
    _PYOPS_COMPLETE="${shell}_source" "$venv/bin/pyops" > "$file.tmp"
    chmod 0644 "$file.tmp"
    mv "$file.tmp" "$file"
  done <<EOF
$completions
EOF
}

remove_completions() {
  local shell file
  while IFS=: read -r shell file; do
    if [ -e "$file" ]; then run rm -f "$file"; fi
  done <<EOF
$completions
EOF
  # the link on PATH, when it is ours (a pipx install keeps its own)
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/pyops" ]; then
    run rm -f "$link"
  fi
}

if [ "$system" -eq 1 ] && [ "$dry" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  say "run as root (or use --prefix DIR / --dry-run)"; exit 1
fi

if [ "$uninstall" -eq 1 ]; then
  if [ "$system" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    run systemctl disable --now pyops-backup@auto.timer pyops-maintenance.timer \
      pyops-health.timer pyops-drill.timer || true
  fi
  for unit in "$unitdir"/pyops-*; do
    [ -e "$unit" ] && run rm -f "$unit"
  done
  [ "$system" -eq 1 ] && command -v systemctl >/dev/null 2>&1 && run systemctl daemon-reload
  remove_completions
  run rm -rf "$venv"
  say "removed units, $venv and its shell completion; kept $etc and $repo (your backups)"
  exit 0
fi

if [ "$system" -eq 1 ] && ! id "$user" >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/pyops --shell /usr/sbin/nologin "$user"
fi

run mkdir -p "$etc" "$repo" "$unitdir"
run chmod 0700 "$etc" "$repo"

if [ ! -x "$venv/bin/pyops" ] || [ "$dry" -eq 1 ]; then
  run python3 -m venv "$venv"
fi
run "$venv/bin/pip" install --quiet --upgrade "$source_dir"

# `pyops` on PATH (completion completes that name), unless something else is there
if [ ! -e "$link" ] || { [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/pyops" ]; }; then
  run mkdir -p "$(dirname "$link")"
  run ln -sfn "$venv/bin/pyops" "$link"
else
  say "$link exists and is not ours; left as it is"
fi
install_completions

if [ ! -e "$config" ]; then
  run env PYOPS_CONFIG="$config" "$venv/bin/pyops" init --path "$repo"
else
  say "$config exists; left as it is"
fi
run chmod 0600 "$config"
key="$etc/repository.key"

if [ "$system" -eq 1 ]; then
  # the service user writes the repository; the config and the repository key stay
  # root's (root runs restores, and refuses files another user could change), readable
  # by the service through its group
  run chown -R "$user:$user" "$repo"
  run chown "root:$user" "$etc" "$config"
  run chmod 0750 "$etc"
  run chmod 0640 "$config"
  if [ -e "$key" ] || [ "$dry" -eq 1 ]; then
    run chown "root:$user" "$key"
    run chmod 0640 "$key"
  fi
fi

run env PYOPS_CONFIG="$config" "$venv/bin/pyops" systemd render --dest "$unitdir" \
  --service-user "$user"
if [ "$system" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
  run systemctl daemon-reload
  if [ "$enable" -eq 1 ]; then
    run systemctl enable --now pyops-backup@auto.timer pyops-maintenance.timer \
      pyops-health.timer pyops-drill.timer
  fi
fi
say "done: edit $config (add targets), then: $venv/bin/pyops config check"
