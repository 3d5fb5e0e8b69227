#!/usr/bin/env bash
# The reliability suite's long mode for one area, file by file:
#
#   CI=true SAFEREPLAY_RELIABILITY_TRIALS=N tests/reliability/long_mode.sh AREA [REPORTS]
#
# AREA is procfaults, pgfaults, concurrency or hostile, or a longer prefix naming
# fewer files (hostile_surface): the files tests/reliability/test_reliability_AREA*.py.
# Each file is one pytest run with its own JSON report in REPORTS (default:
# reliability-reports/), so a run stopped half-way keeps the figures of the files it
# finished; the log says when each file started and ended and the load average then. tests/reliability/publish_figures.py
# merges the reports into docs/reliability-figures.json and docs/reliability.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
area=${1:?"usage: SAFEREPLAY_RELIABILITY_TRIALS=N $0 AREA [REPORTS]"}
reports=${2:-reliability-reports}
: "${SAFEREPLAY_RELIABILITY_TRIALS:?set SAFEREPLAY_RELIABILITY_TRIALS to the trials per scenario}"
files=(tests/reliability/test_reliability_"$area"*.py)
[ -e "${files[0]}" ] || { echo "no scenarios of area '$area' in tests/reliability" >&2; exit 2; }
mkdir -p "$reports"
failed=0
for file in "${files[@]}"; do
    name=$(basename "$file" .py)
    echo "== $name N=$SAFEREPLAY_RELIABILITY_TRIALS start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
    start=$(date +%s)
    SAFEREPLAY_RELIABILITY_REPORT="$reports/$name.json" .venv/bin/python -m pytest "$file" -q -p no:cacheprovider
    code=$?
    [ "$code" -eq 0 ] || failed=1
    echo "== $name rc=$code seconds=$(( $(date +%s) - start )) end load $(cut -d' ' -f1-3 /proc/loadavg)"
done
exit "$failed"
