#!/usr/bin/env bash
# Every GPU check of the SFT issue in one call, so a short GPU lease is spent on measurements:
# plain TRL's best 374M setting (../shared/bench/gpu_trl_baseline.py, carried in .gpu/) and then
# our SFT stage lever by lever, in one process each, on the same GPU. Results stream to $OUT as
# they finish, so a run cut off by its time limit still returns what it measured.
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
$PY - <<'PYEOF' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m, torch
print({p: m.version(p) for p in ["torch", "transformers", "trl", "datasets", "pyarrow", "accelerate"]})
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
PYEOF
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv 2>&1 | tee -a "$OUT/versions.txt"
# baseline item 4: 374M, packing, no gradient checkpointing (TRL's best plain setting)
timeout ${BASELINE_S:-150} $PY .gpu/gpu_trl_baseline.py ${BASELINE_ITEMS:-4} 2>&1 | grep -E "^(RESULT|FAILED|versions)" | tee "$OUT/baseline.txt"
for lever in ${LEVERS:-packed_flex_bf16_bs16_nll_compile packed_flex_bf16_bs32_liger_compile packed_flex_bf16_bs16 packed_flex_bf16_bs16_trl_steps packed_flex_bf16_bs16_nll packed_flex_bf16_bs16_compile packed_flex_bf16_bs16_liger packed_flex_bf16_bs32 packed_flex_bf16 packed_sdpa padded}; do
  # SIGINT first: a lever stopped by its limit prints the traceback of where it was stuck
  timeout -s INT -k 10 ${LEVER_S:-150} $PY bench/gpu_sft.py $lever > "$OUT/log_$lever.txt" 2>&1
  grep -h "^RESULT" "$OUT/log_$lever.txt" || tail -n 5 "$OUT/log_$lever.txt"
done
