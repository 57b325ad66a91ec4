#!/usr/bin/env bash
# The quarterly disaster-recovery drill as an operator runs it by hand: check the
# bucket against the manifests, restore every target's latest backup FROM THE BUCKET
# into scratch, and write a dated report for the audit trail.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/dr-drill.sh [--config FILE] [--report-dir DIR] [--target NAME]... [--local]
  --config FILE     pyops config (default: $PYOPS_CONFIG or /etc/pyops/pyops.toml)
  --report-dir DIR  where the report goes (default: current directory)
  --target NAME     drill only these targets (repeatable)
  --local           drill from the local repository instead of the bucket
Writes DIR/pyops-drill-YYYY-mm-dd.md and .json; exits 1 if any target failed.
USAGE
}

config="${PYOPS_CONFIG:-/etc/pyops/pyops.toml}" report_dir="." remote=(--remote) targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="${2:?}"; shift 2 ;;
    --report-dir) report_dir="${2:?}"; shift 2 ;;
    --target) targets+=(--target "${2:?}"); shift 2 ;;
    --local) remote=(); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "dr-drill.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

pyops="${PYOPS:-pyops}"
day=$(date -u +%Y-%m-%d)
mkdir -p "$report_dir"
json="$report_dir/pyops-drill-$day.json"
report="$report_dir/pyops-drill-$day.md"

drift="(not checked: --local)"
if [ ${#remote[@]} -gt 0 ]; then
  if drift=$("$pyops" --config "$config" sync --check "${targets[@]}" 2>&1); then
    drift="bucket and manifests agree"
  fi
fi

status=0
"$pyops" --config "$config" drill "${remote[@]}" "${targets[@]}" --format json > "$json" || status=$?

python3 - "$json" "$report" "$day" "$status" "$drift" <<'PY'
import json, socket, sys
src, out, day, status, drift = sys.argv[1:6]
drills = json.load(open(src)).get("drills", []) if open(src).read().strip() else []
lines = [f"# pyops DR drill, {day}", "", f"Host: {socket.gethostname()}",
         f"Result: {'PASSED' if status == '0' else 'FAILED'}", "",
         "| target | backup | from | fetch s | restore s | check s | RTO s | result |",
         "|---|---|---|---|---|---|---|---|"]
for d in drills:
    lines.append(
        f"| {d['target']} | {d.get('backup') or '-'} | {'bucket' if d['remote'] else 'local'} "
        f"| {d['fetch_s']} | {d['restore_s']} | {d['check_s']} | {d['rto_s']} "
        f"| {'ok' if d['ok'] else 'FAILED: ' + str(d.get('error'))} |")
lines += ["", "## Bucket check", "", "```", drift, "```", ""]
open(out, "w").write("\n".join(lines))
PY
echo "report: $report" >&2
exit "$status"
