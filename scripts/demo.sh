#!/usr/bin/env bash
# pyops demo: the main job on bundled sample data, no server needed.
# init -> backup (SQLite + files, zstd + gpg symmetric) -> list -> verify --deep
# -> restore into scratch paths -> compare with the originals.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: scripts/demo.sh   (run by 'make demo'; leaves everything in ./demo-run)"
  exit 0
fi

here=$(cd "$(dirname "$0")/.." && pwd)
pyops="$here/.venv/bin/pyops"
[ -x "$pyops" ] || pyops=pyops
run="$here/demo-run"
rm -rf "$run"
mkdir -p "$run/app" "$run/gnupg"
chmod 700 "$run/gnupg"
export GNUPGHOME="$run/gnupg"
# gpg starts an agent for this home; leave nothing running, however the demo ends
stop_agent() { gpgconf --homedir "$run/gnupg" --kill all >/dev/null 2>&1 || true; }
trap stop_agent EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '$ %s\n' "$*"; }

step "sample data: a SQLite app database (WAL) and a media folder"
sqlite3 "$run/app/db.sqlite3" < "$here/pyops/demo/sample.sql" >/dev/null
cp -a "$here/pyops/demo/files" "$run/app/media"
head -c 32 /dev/urandom | base64 > "$run/passphrase"
chmod 600 "$run/passphrase"

export PYOPS_CONFIG="$run/pyops.toml"
step "pyops init"
say "pyops init --path $run/repo"
"$pyops" init --path "$run/repo"
# turn the starter into the demo config: symmetric encryption and two targets
sed -i -e 's|^mode = "none" .*|mode = "gpg-symmetric"|' \
       -e "s|^# gnupghome = .*|gnupghome = \"$run/gnupg\"|" \
       -e "s|^# passphrase_file = .*|passphrase_file = \"$run/passphrase\"|" "$PYOPS_CONFIG"
cat >> "$PYOPS_CONFIG" <<TOML

[[targets]]
name = "app-sqlite"
type = "sqlite"
path = "$run/app/db.sqlite3"

[[targets]]
name = "media"
type = "files"
paths = ["$run/app/media"]
exclude = ["*.tmp"]
TOML
say "pyops config check"
"$pyops" config check

step "pyops backup"
say "pyops backup --tier daily"
"$pyops" backup --tier daily

step "pyops list"
"$pyops" list

step "pyops verify --deep (decrypt, decompress, integrity_check / tar scan, compare with manifest)"
"$pyops" verify --deep --all

step "pyops restore into scratch paths"
say "pyops restore --latest --target app-sqlite --into $run/restored/db.sqlite3 --yes"
"$pyops" restore --latest --target app-sqlite --into "$run/restored/db.sqlite3" --yes
say "pyops restore --latest --target media --into $run/restored/media --yes"
"$pyops" restore --latest --target media --into "$run/restored/media" --yes

step "does the restored data match?"
for table in users posts '"Comments With Spaces"'; do
  a=$(sqlite3 "$run/app/db.sqlite3" "SELECT count(*) FROM $table")
  b=$(sqlite3 "$run/restored/db.sqlite3" "SELECT count(*) FROM $table")
  printf '  %-24s original %6s rows, restored %6s rows  %s\n' "$table" "$a" "$b" \
    "$([ "$a" = "$b" ] && echo OK || echo DIFFERENT)"
  [ "$a" = "$b" ]
done
orig=$(sqlite3 "$run/app/db.sqlite3" .dump | sha256sum | cut -c1-16)
rest=$(sqlite3 "$run/restored/db.sqlite3" .dump | sha256sum | cut -c1-16)
printf '  %-24s original %s, restored %s  %s\n' "SQL dump sha256" "$orig" "$rest" \
  "$([ "$orig" = "$rest" ] && echo OK || echo DIFFERENT)"
[ "$orig" = "$rest" ]
if diff -r "$run/app/media" "$run/restored/media${run}/app/media" >/dev/null; then
  echo "  media files                identical (diff -r)  OK"
else
  echo "  media files                DIFFERENT"; exit 1
fi

step "pyops history"
"$pyops" history --limit 5
printf '\nAll done. Everything is in %s; the encrypted artifacts are in %s/repo.\n' "$run" "$run"
