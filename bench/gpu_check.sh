#!/usr/bin/env bash
# One script for a lent GPU machine: every GPU measurement of docs/performance.md plus the CUDA tests, in one go.
#
#   bash bench/gpu_check.sh            # on the GPU machine, in the repository root; results under $OUT (or ./gpu-out)
#   SMALL=1 bash bench/gpu_check.sh    # a quick rehearsal on the CPU: tiny sizes, same steps, same files
#
# It installs nothing when .venv/ is already there (carry it), writes its JPEGs once and reuses them for every
# embedding measurement, and keeps going when one step fails, so one bad step does not cost the others' time.
# Each step's output goes to $OUT/<step>.log (and JSON where the bench script writes one); $OUT/summary.txt lists
# each step's exit status and seconds. Budget: under 8 minutes on one H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=.venv/bin/python
[ -x "$PY" ] || { make install >"$OUT/install.log" 2>&1 || exit 1; }

if [ "${SMALL:-0}" = 1 ]; then
    DEV=cpu; N_B=32; N_L=8; PROBE="--n-train 2000 --dim 128 --classes 20 --steps 50"; EMB_REPEATS=1
    MODELS_B=vit_small_patch16_224; MODELS_L=vit_small_patch16_224
else
    DEV=cuda; N_B=20000; N_L=8000; PROBE=""; EMB_REPEATS=2
    MODELS_B=vit_base_patch16_224; MODELS_L=vit_large_patch14_224
fi
JPEGS="$OUT/.jpegs"  # written by the first embed step, reused by the rest; removed at the end

step() {  # step NAME COMMAND...: run, log, time, never stop the script
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-28s rc=%-3s %5ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
step embed-b16-eager    "$PY" bench/embed.py --device "$DEV" --n-images "$N_B" --models "$MODELS_B" --dir "$JPEGS" \
                        --repeats "$EMB_REPEATS" --json-out "$OUT/embed-b16-eager.json"
step embed-l14-eager    "$PY" bench/embed.py --device "$DEV" --n-images "$N_L" --models "$MODELS_L" --dir "$JPEGS" \
                        --repeats "$EMB_REPEATS" --json-out "$OUT/embed-l14-eager.json"
step embed-b16-compiled "$PY" bench/embed.py --device "$DEV" --n-images "$N_B" --models "$MODELS_B" --dir "$JPEGS" \
                        --repeats "$EMB_REPEATS" --compile --json-out "$OUT/embed-b16-compiled.json"
step embed-l14-compiled "$PY" bench/embed.py --device "$DEV" --n-images "$N_L" --models "$MODELS_L" --dir "$JPEGS" \
                        --repeats "$EMB_REPEATS" --compile --json-out "$OUT/embed-l14-compiled.json"
step datapath-only      "$PY" bench/embed.py --device "$DEV" --n-images "$N_B" --data-only --dir "$JPEGS" \
                        --json-out "$OUT/datapath-only.json"
# shellcheck disable=SC2086  # PROBE holds several flags
step probe              "$PY" bench/probe.py --device "$DEV" $PROBE --json "$OUT/probe.json"
step suite-projection   "$PY" bench/suite_projection.py --from-json "$OUT/embed-l14-compiled.json" \
                        --model "$MODELS_L" --device "$DEV" --measure-probe
step cuda-tests         "$PY" -m pytest -q -rs -k "cuda or gpu or CUDA" tests/
rm -rf "$JPEGS"
echo "results: $OUT (summary.txt lists each step)"
