#!/usr/bin/env bash
# GPU smoke test: every model command on the accelerator in bfloat16, checked against the CPU in float32.
#
#   scripts/gpu_smoke.sh
#
# Environment (all optional):
#   JDNA_SMOKE_LM       causal LM: a HF model directory or a demo name      (default smollm2-135m)
#   JDNA_SMOKE_ENCODER  encoder: a HF model directory or a demo name        (default minilm-l6)
#   SMOKE_DEVICE        device under test                                    (default cuda)
#   SMOKE_DTYPE         dtype under test                                     (default bfloat16)
#   OUT                 where the logs, records and table go                 (default: a new temp dir)
#   PYTHON              the interpreter with torch, transformers, ...        (default python3)
#   SMOKE_INSTALL=1     `pip install --no-deps --no-build-isolation -e .` first (offline); by default jdna
#                       runs from this checkout without installing anything.
#
# The reference side always runs on the CPU in float32. The script writes its own tasks (file: JSON lines)
# and calibration text, so it needs no BIG-bench, MMLU, `datasets` or network. It prints a PASS/FAIL table
# (also written to $OUT/gpu_smoke/table.txt) and exits non-zero when any check fails. To check the script
# itself on a machine without a GPU: SMOKE_DEVICE=cpu SMOKE_DTYPE=bfloat16 scripts/gpu_smoke.sh
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
LM=${JDNA_SMOKE_LM:-smollm2-135m}
ENCODER=${JDNA_SMOKE_ENCODER:-minilm-l6}
DEVICE=${SMOKE_DEVICE:-cuda}
DTYPE=${SMOKE_DTYPE:-bfloat16}
ROOT=${OUT:-$(mktemp -d)}/gpu_smoke
WORK=$ROOT/work
mkdir -p "$WORK"
export JDNA_RUNS=$WORK/runs HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

if [[ "${SMOKE_INSTALL:-0}" == 1 ]]; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" || { echo "pip install failed" >&2; exit 2; }
fi
# jdna from this checkout: the installed package when it is this checkout, else a shim that maps the
# package's two source folders (jdna/ and commands/ -> jdna.commands) without installing anything.
SHIM=$WORK/jdna_cli.py
cat > "$SHIM" <<EOF
import importlib.util, sys
sys.path.insert(0, "$REPO")
import jdna
if not hasattr(jdna, "commands") and "jdna.commands" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "jdna.commands", "$REPO/commands/__init__.py", submodule_search_locations=["$REPO/commands"])
    module = importlib.util.module_from_spec(spec)
    sys.modules["jdna.commands"] = module
    spec.loader.exec_module(module)
    jdna.commands = module
from jdna.commands.app import main
sys.exit(main())
EOF
JDNA=("$PY" "$SHIM")
CHECK=("$PY" "$REPO/scripts/gpu_smoke_check.py")
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

echo "jdna GPU smoke: $DEVICE/$DTYPE vs cpu/float32; LM=$LM ENCODER=$ENCODER; logs in $ROOT" >&2
"$PY" - <<EOF >&2 || true
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
"${CHECK[@]}" data "$WORK/data" || exit 2
MC="file:$WORK/data/mc.jsonl"
CLS="file:$WORK/data/cls.jsonl"
CALIB=(--calib "$WORK/data/calib.txt" --calib-samples 8 --calib-seqlen 128)
started=$SECONDS

# step SIDE NAME ARGS...: run `jdna ARGS` with that side's placement; its record goes to WORK/SIDE/NAME.json.
step() {
  local side=$1 name=$2; shift 2
  local placement
  case $side in
    ref) placement=(--device cpu --dtype float32) ;;
    test) placement=(--device "$DEVICE" --dtype "$DTYPE") ;;
    test32) placement=(--device "$DEVICE" --dtype float32) ;;
  esac
  mkdir -p "$WORK/$side"
  local t0=$SECONDS
  if "${JDNA[@]}" "$@" "${placement[@]}" > "$WORK/$side/$name.json" 2> "$WORK/$side/$name.log"; then
    echo "  $side $name: ok ($((SECONDS - t0)) s)" >&2
  else
    echo "  $side $name: FAILED ($((SECONDS - t0)) s): $(tail -n 1 "$WORK/$side/$name.log")" >&2
    : > "$WORK/$side/$name.json"
  fi
}
path_of() { "$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["path"])' "$1" 2>/dev/null; }

run_side() {
  local side=$1
  echo "[$side]" >&2
  step "$side" prune_magnitude prune "$LM" -s 0.5
  step "$side" prune_wanda prune "$LM" -s 0.5 --method wanda "${CALIB[@]}"
  step "$side" prune_sparsegpt prune "$LM" -s 0.5 --method sparsegpt "${CALIB[@]}"
  step "$side" quantize_rtn quantize "$LM" --bits 4 --method rtn
  step "$side" quantize_gptq quantize "$LM" --bits 4 --method gptq "${CALIB[@]}"
  step "$side" lowrank lowrank "$LM" --rank-ratio 0.5
  step "$side" eval eval "$LM" --task "$MC" --shots 1
  local pruned
  pruned=$(path_of "$WORK/$side/prune_wanda.json")
  if [[ -n "$pruned" ]]; then step "$side" eval_wanda_pruned eval "$pruned" --task "$MC" --shots 1; fi
  local flags=(--task "$CLS" --train-examples 64 --epochs 2 --batch-size 16 --max-length 32 --eval-limit 32 --lr 1e-4)
  step "$side" finetune_dense finetune "$ENCODER" --mode dense "${flags[@]}"
  # The sparse endpoint starts from the same CPU magnitude mask on both sides (pruning is checked above).
  local mask
  mask=$(path_of "$WORK/encoder_mask.json")
  step "$side" finetune_sparse finetune "$mask" --mode sparse "${flags[@]}"
  local dense sparse
  dense=$(path_of "$WORK/$side/finetune_dense.json"); sparse=$(path_of "$WORK/$side/finetune_sparse.json")
  if [[ -n "$dense" && -n "$sparse" ]]; then
    step "$side" lmc lmc "$dense" "$sparse" --task "$CLS" --points 3 --limit 32
  fi
}

"${JDNA[@]}" prune "$ENCODER" -s 0.5 --device cpu > "$WORK/encoder_mask.json" 2> "$WORK/encoder_mask.log" \
  || { echo "pruning the encoder failed: $(tail -n 1 "$WORK/encoder_mask.log")" >&2; exit 2; }
# The two sides run at the same time (the reference mostly on the CPU, the test mostly on the device).
run_side ref &
ref_pid=$!
run_side test
wait "$ref_pid"
extra=()
if [[ "$DEVICE" != cpu && "$DTYPE" != float32 ]]; then
  echo "[test32]" >&2
  step test32 prune_magnitude prune "$LM" -s 0.5
  extra=(test32)
fi

"${CHECK[@]}" compare "$WORK" ref test "${extra[@]}" | tee "$ROOT/table.txt"
status=${PIPESTATUS[0]}
echo "total $((SECONDS - started)) s; table: $ROOT/table.txt" | tee -a "$ROOT/table.txt" >&2
exit "$status"
