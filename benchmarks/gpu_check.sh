#!/usr/bin/env bash
# The GPU check (issue #12): every figure the README still marks as computed or as the paper's,
# measured in one run of at most $BUDGET seconds (8 minutes) on one H100/H200 with no network,
# into ONE JSON file: parity with transformers and generate speed at the 0.5B and 3B shapes, eval.py
# time for GSM8K's 1,319 questions, a stage-1 step and a stage-2 GRPO step at 3B with their peak
# memory. benchmarks/gpu_check.py's docstring says what each figure measures; without CUDA it runs
# a tiny smoke version of every part.
#
#   bash benchmarks/gpu_check.sh                        # -> runs/gpu_check/<UTC time>.json
#   bash benchmarks/gpu_check.sh out.json               # or this file
#   BUDGET=300 PY=/path/to/venv/bin/python bash benchmarks/gpu_check.sh out.json --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ).json}
shift || true
BUDGET=${BUDGET:-480}
PY=${PY:-python}
mkdir -p "$(dirname "$OUT")"
# parts that would start in the last minute are skipped; the hard limit stops one that overruns
# (the JSON is rewritten after every part, so what finished is kept either way)
status=0
timeout --kill-after=15 "$BUDGET" "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$((BUDGET - 60))" "$@" || status=$?
[ "$status" -eq 124 ] && echo "gpu_check: stopped at the ${BUDGET} s limit; the JSON holds the parts that finished"
echo "gpu_check: figures in $OUT"
exit "$status"
