#!/usr/bin/env bash
# Self-aware tiers s and m (issue 11 section 2): probe -> SFT -> eval (SFT-only) -> RL -> eval (SFT+RL).
# bash training/family/self-aware/run.sh [TIER...]   (from the repository root, .venv active)
# Runs into runs/family-sa/TIER, then copies the fp16 checkpoints (with disrouter-calibration.json) and the
# eval reports into training/family/self-aware/TIER/{sft,sftrl} and .../TIER/report-{sft,sftrl}; at the end
# `disrouter train mesh` replaces every checkpoint's node-level thresholds by the mesh's (needs both s and m).
set -euo pipefail
HERE=training/family/self-aware
step() {  # step NAME COMMAND...: run it, append its wall time to TIMES
  local start=$SECONDS; "${@:2}"; echo "$1 $((SECONDS - start)) s" | tee -a "$TIMES"
}
disrouter train probe --config training/configs/family-probe-l.yaml  # tier l on sa-train: the ceiling of the mesh-aware labels (ceiling_probe); resumes
for tier in "${@:-s m}"; do
  for t in $tier; do
    cfg=training/configs/family-sa-$t.yaml out=runs/family-sa/$t dest=$HERE/$t
    TIMES=$out/times.txt; mkdir -p "$out"; : > "$TIMES"
    step "$t probe" disrouter train probe --config "$cfg"
    step "$t sft" disrouter train sft --config "$cfg"
    python $HERE/to_fp16.py "$out/sft/model"
    rm -rf "$out/model"; [ -d "$out/rl" ] && mv "$out/rl" "$out/rl.hold"  # eval takes rl/model when there is one
    step "$t eval(sft)" disrouter train eval --config "$cfg"
    rm -rf "$dest/sft" "$dest/report-sft"; mkdir -p "$dest/report-sft"
    cp -r "$out/model" "$dest/sft"; cp "$out"/report.* "$out"/*.png "$dest/report-sft/"
    [ -d "$out/rl.hold" ] && mv "$out/rl.hold" "$out/rl"  # the RL stage resumes it when its settings match
    step "$t rl" disrouter train rl --config "$cfg"
    python $HERE/to_fp16.py "$out/rl/model"; rm -rf "$out/model"
    step "$t eval(sftrl)" disrouter train eval --config "$cfg"
    rm -rf "$dest/sftrl" "$dest/report-sftrl"; mkdir -p "$dest/report-sftrl"
    cp -r "$out/model" "$dest/sftrl"; cp "$out"/report.* "$out"/*.png "$dest/report-sftrl/"
    cp "$TIMES" "$dest/times.txt"
  done
done
TIMES=runs/family-sa/mesh-times.txt; : > "$TIMES"
step "mesh" disrouter train mesh --config training/configs/family-mesh.yaml
mkdir -p $HERE/mesh; cp runs/family-mesh/mesh-calibration.md runs/family-mesh/mesh-calibration.json "$TIMES" $HERE/mesh/
