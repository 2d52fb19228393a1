#!/usr/bin/env bash
# Self-aware tiers s and m (issue 11 section 2): probe -> SFT -> eval (SFT-only) -> RL -> eval (SFT+RL).
# bash training/family/self-aware/run.sh [TIER...]   (from the repository root, .venv active)
# Runs into runs/family-sa/TIER, then copies the fp16 checkpoints (with disrouter-calibration.json) and the
# eval reports into training/family/self-aware/TIER/{sft,sftrl} and .../TIER/report-{sft,sftrl}.
set -euo pipefail
HERE=training/family/self-aware
step() {  # step NAME COMMAND...: run it, append its wall time to TIMES
  local start=$SECONDS; "${@:2}"; echo "$1 $((SECONDS - start)) s" | tee -a "$TIMES"
}
for tier in "${@:-s m}"; do
  for t in $tier; do
    cfg=training/configs/family-sa-$t.yaml out=runs/family-sa/$t dest=$HERE/$t
    TIMES=$out/times.txt; mkdir -p "$out"; : > "$TIMES"
    step "$t probe" python $HERE/train.py probe --config "$cfg"
    step "$t sft" python $HERE/train.py sft --config "$cfg"
    python $HERE/to_fp16.py "$out/sft/model"
    rm -rf "$out/model"; [ -d "$out/rl" ] && mv "$out/rl" "$out/rl.hold"  # eval takes rl/model when there is one
    step "$t eval(sft)" python $HERE/train.py eval --config "$cfg"
    rm -rf "$dest/sft" "$dest/report-sft"; mkdir -p "$dest/report-sft"
    cp -r "$out/model" "$dest/sft"; cp "$out"/report.* "$out"/*.png "$dest/report-sft/"
    [ -d "$out/rl.hold" ] && mv "$out/rl.hold" "$out/rl"  # the RL stage resumes it when its settings match
    step "$t rl" python $HERE/train.py rl --config "$cfg"
    python $HERE/to_fp16.py "$out/rl/model"; rm -rf "$out/model"
    step "$t eval(sftrl)" python $HERE/train.py eval --config "$cfg"
    rm -rf "$dest/sftrl" "$dest/report-sftrl"; mkdir -p "$dest/report-sftrl"
    cp -r "$out/model" "$dest/sftrl"; cp "$out"/report.* "$out"/*.png "$dest/report-sftrl/"
    cp "$TIMES" "$dest/times.txt"
  done
done
