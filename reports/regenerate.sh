#!/usr/bin/env bash
# Regenerate the committed example report (reports/example/) from real runs of
# the embedded model, SmolLM2-135M-Instruct, on the first 30 GSM8K test problems:
# zero-shot chat (the baseline) against 3-shot chat. Greedy decoding, so a rerun
# reproduces the same samples; an existing run is resumed (nothing regenerated)
# unless --fresh is given. CPU, about 4 minutes on 2 cores with --fresh (2026-12-01).
#
#   reports/regenerate.sh            # reuse journaled completions, rebuild report
#   reports/regenerate.sh --fresh    # regenerate everything from the model
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${HARNESS:-harness}
out=reports/example
runs=$out/evals  # not "runs/": that name is git-ignored
limit=${LIMIT:-30}
export HF_HUB_OFFLINE=1

"$harness" run --model smollm2-135m-instruct --suite gsm8k --limit "$limit" --out "$runs" \
  --run-id smollm2-0shot --label "smollm2-135m 0-shot" "$@"
"$harness" run --model smollm2-135m-instruct --suite gsm8k --limit "$limit" --num-fewshot 3 --out "$runs" \
  --run-id smollm2-3shot --label "smollm2-135m 3-shot" "$@"
"$harness" report "$runs/smollm2-3shot" --baseline "$runs/smollm2-0shot" --format md,html,csv,json --out "$out"
# The gate's verdict on the same pair, as CI would print it (exit 1 = regression).
code=0
"$harness" check "$runs/smollm2-3shot" --baseline "$runs/smollm2-0shot" > "$out/check.txt" || code=$?
echo "exit code: $code" >> "$out/check.txt"
cat "$out/check.txt"
# The HTML page as a real browser renders it (Debian: apt-get install -y chromium).
if command -v chromium > /dev/null; then
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --screenshot="$out/screenshot.png" \
    --window-size=1400,1800 "file://$PWD/$out/report.html" 2> /dev/null
  rm -rf "$profile"
fi
