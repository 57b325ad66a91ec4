#!/usr/bin/env bash
# Restore one pyops artifact with stock tools only: sha256sum, gpg, zstd/gzip,
# pg_restore/psql/createdb, sqlite3, tar. For the day pyops itself cannot be installed.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/restore-without-pyops.sh [options] ARTIFACT
  --dbname NAME           PostgreSQL: a NEW database to create and restore into
                          (server and user from the usual PGHOST/PGPORT/PGUSER/PGPASSWORD
                          or ~/.pgpass)
  --dest PATH             SQLite: the file to write (must not exist);
                          files: the directory to extract into (must be empty or absent)
  --gnupghome DIR         GnuPG home holding the secret key (default: gpg's own)
  --passphrase-file FILE  symmetric passphrase, or the secret key's passphrase
  --jobs N                pg_restore -j for custom/directory dumps (default 1)
  --globals               PostgreSQL: print the backup's saved roles and database state
                          (ID.globals.json.*, decoded) instead of restoring; create the
                          roles by hand from it before restoring onto a new server
  -h, --help              this help
The manifest (ID.manifest.json) must lie beside the artifact: its sha256 is checked
before anything is restored. Layers are read from the file name, outermost last:
  *.gpg -> gpg -d;  *.zst -> zstd -d;  *.gz -> gzip -d
  *.pgdump / *.pgtar -> pg_restore;  *.sql -> psql;  *.pgdir.tar -> tar + pg_restore
  *.sqlite3 -> file + PRAGMA integrity_check;  *.tar -> tar -x (members are relative to /)
USAGE
}

dbname="" dest="" gnupghome="" passfile="" jobs=1 artifact="" globals=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dbname) dbname="${2:?}"; shift 2 ;;
    --dest) dest="${2:?}"; shift 2 ;;
    --gnupghome) gnupghome="${2:?}"; shift 2 ;;
    --passphrase-file) passfile="${2:?}"; shift 2 ;;
    --jobs) jobs="${2:?}"; shift 2 ;;
    --globals) globals=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) artifact="$1"; shift ;;
  esac
done
[ -n "$artifact" ] || { usage >&2; exit 2; }
[ -f "$artifact" ] || { echo "no such artifact: $artifact" >&2; exit 1; }

die() { echo "restore-without-pyops: $*" >&2; exit 1; }
name=$(basename "$artifact")
dir=$(dirname "$artifact")
# ID = TARGET.TIER.YYYYmmddTHHMMSSZ; the rest of the name is the layers
id=$(printf '%s\n' "$name" | sed -E 's/^([^.]+\.[^.]+\.[0-9]{8}T[0-9]{6}Z)\..*$/\1/')
layers=${name#"$id".}
manifest="$dir/$id.manifest.json"
[ -f "$manifest" ] || die "manifest $manifest not found beside the artifact"

want=$(grep -o '"sha256": "[0-9a-f]\{64\}"' "$manifest" | head -n1 | cut -d'"' -f4)
got=$(sha256sum "$artifact" | cut -d' ' -f1)
[ "$want" = "$got" ] || die "sha256 mismatch: manifest $want, file $got: damaged, do not restore"
echo "sha256 ok ($got)" >&2

# the decode pipeline, as a list of commands joined by pipes below
gpg_cmd=(gpg --batch --quiet --decrypt)
[ -n "$gnupghome" ] && gpg_cmd+=(--homedir "$gnupghome")
[ -n "$passfile" ] && gpg_cmd+=(--pinentry-mode loopback --passphrase-file "$passfile")

# outer layers, outermost first: each one a stage of the pipe
decode_layers() {
  case "$1" in
    *.gpg) "${gpg_cmd[@]}" | decode_layers "${1%.gpg}" ;;
    *.zst) zstd -q -d -c | decode_layers "${1%.zst}" ;;
    *.gz) gzip -d -c | decode_layers "${1%.gz}" ;;
    *) cat ;;
  esac
}
stream() { decode_layers "$layers" < "$artifact"; }

if [ "$globals" = 1 ]; then
  found=""
  for candidate in "$dir/$id".globals.json*; do [ -f "$candidate" ] && found=$candidate; done
  [ -n "$found" ] || die "no $id.globals.json* beside the artifact (a backup taken before pyops kept roles)"
  want=$(grep -A8 "\"name\": \"$(basename "$found")\"" "$manifest" |
    grep -o '"sha256": "[0-9a-f]\{64\}"' | head -n1 | cut -d'"' -f4)
  [ "$want" = "$(sha256sum "$found" | cut -d' ' -f1)" ] || die "$found: sha256 mismatch with the manifest"
  decode_layers "${found#"$dir/$id".}" < "$found"
  exit 0
fi

# pg_restore (psql) must be at least as new as the pg_dump that wrote the dump
client_check() {
  local dumped have
  dumped=$(grep -o '"pg_dump": "[^"]*"' "$manifest" | grep -o '[0-9]\+' | head -n1)
  have=$("$1" --version | grep -o '[0-9]\+' | head -n1)
  [ -z "$dumped" ] || [ "$have" -ge "$dumped" ] ||
    die "$id was written by pg_dump $dumped, but $1 here is version $have: install postgresql-client-$dumped (nothing was changed)"
}
INNER=$layers
while :; do
  case "$INNER" in
    *.gpg) INNER=${INNER%.gpg} ;;
    *.zst) INNER=${INNER%.zst} ;;
    *.gz) INNER=${INNER%.gz} ;;
    *) break ;;
  esac
done

# on failure, leave nothing half-restored: drop the database this script created,
# remove partial files and the private scratch
created_db="" partial="" scratch=""
cleanup() {
  status=$?
  [ -n "$scratch" ] && rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    [ -n "$partial" ] && rm -f "$partial"
    [ -n "$created_db" ] && dropdb --if-exists "$created_db" 2>/dev/null
    echo "restore-without-pyops: failed; nothing was left behind" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
new_db() { createdb "$1"; created_db=$1; }
new_scratch() { scratch=$(mktemp -d); chmod 700 "$scratch"; }

case "$INNER" in
  pgdump|pgtar)
    [ -n "$dbname" ] || die "--dbname NEW is required for a PostgreSQL dump"
    client_check pg_restore
    new_db "$dbname"
    if [ "$jobs" -gt 1 ] && [ "$INNER" = pgdump ]; then
      new_scratch
      stream > "$scratch/dump"
      pg_restore --exit-on-error --jobs "$jobs" -d "$dbname" "$scratch/dump"
    else
      # pg_restore stops before a tar archive's end: once it succeeded, read the rest,
      # so the decoders finish (and check it) instead of dying of SIGPIPE
      stream | { pg_restore --exit-on-error -d "$dbname" && cat > /dev/null; }
    fi ;;
  sql)
    [ -n "$dbname" ] || die "--dbname NEW is required for a PostgreSQL dump"
    client_check psql
    new_db "$dbname"
    stream | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$dbname" >/dev/null ;;
  pgdir.tar)
    [ -n "$dbname" ] || die "--dbname NEW is required for a PostgreSQL dump"
    client_check pg_restore
    new_scratch
    stream | tar -x -C "$scratch"
    new_db "$dbname"
    pg_restore --exit-on-error --jobs "$jobs" -d "$dbname" "$scratch/dump" ;;
  sqlite3)
    [ -n "$dest" ] || die "--dest FILE is required for a SQLite backup"
    [ ! -e "$dest" ] || die "$dest exists: choose a new path"
    partial="$dest.partial"
    stream > "$partial"
    check=$(sqlite3 "$dest.partial" 'PRAGMA integrity_check')
    [ "$check" = ok ] || { rm -f "$dest.partial"; die "integrity_check failed: $check"; }
    mv "$dest.partial" "$dest" ;;
  tar)
    [ -n "$dest" ] || die "--dest DIR is required for a files backup"
    mkdir -p "$dest"
    [ -z "$(ls -A "$dest")" ] || die "$dest is not empty"
    # GNU tar strips leading / and refuses .. members by default
    stream | tar -x -C "$dest" --numeric-owner ;;
  *) die "unknown artifact type '$INNER' in $name" ;;
esac
echo "restored $id" >&2
