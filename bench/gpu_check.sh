#!/usr/bin/env bash
# The GPU checks of issue 14 in one short run, on a machine with CUDA whose python3 has the project's
# packages (docs/BENCHMARKS.md, "Ingest on an accelerator (cuda)", says where it ran):
#
#     bash bench/gpu_check.sh OUT_DIR [PHOTOS_FOLDER]
#
# 1. the `gpu`-marked tests: models placed on the GPU, fp32 agreeing with the CPU, half precision kept
#    only where it agrees with fp32, a worker forked after the device check still using the GPU;
# 2. that fork test again with torch's default CUDA check (PYTORCH_NVML_BASED_CUDA_CHECK=0, what the
#    code did before): it shows why the check asks NVML;
# 3. bench.ingest_device --device cuda, whose section of docs/BENCHMARKS.md is copied to OUT_DIR.
set -u -o pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [PHOTOS_FOLDER]}
photos=${2:-}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
started=$(date +%s)
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, PIL, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'Pillow', PIL.__version__, 'numpy', numpy.__version__)"
    nproc
} 2>&1 | tee "$out/environment.txt"

python3 -m pytest -q -p no:cacheprovider -m gpu tests/retrieval -rA 2>&1 | tee "$out/gpu-tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]}, $(( $(date +%s) - started )) s" | tee -a "$out/gpu-tests.log"

PYTORCH_NVML_BASED_CUDA_CHECK=0 python3 -m pytest -q -p no:cacheprovider tests/retrieval/test_devices.py \
    -k forked 2>&1 | tail -n 15 | tee "$out/fork-with-default-check.log"

python3 -m bench.ingest_device --device cuda ${photos:+--photos "$photos"} --raw "$out/ingest-device.json" 2>&1 \
    | tee "$out/ingest-device.log"
echo "bench: exit ${PIPESTATUS[0]}, $(( $(date +%s) - started )) s" | tee -a "$out/ingest-device.log"
cp docs/BENCHMARKS.md "$out/BENCHMARKS.md"
cp var/imaginaition_bench_device/qcluster.log "$out/qcluster.log" 2>/dev/null
python3 -m imaginaition_site.embedded_db stop
