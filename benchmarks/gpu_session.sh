#!/usr/bin/env bash
# One call on a lent GPU machine (about 10 minutes): the whole accelerator benchmark uninterrupted,
# then the GPU study config with the time left. Every log goes to $OUT (default ./gpu_out).
#
#   bash ../shared/device/prepare.sh        # here, once: fills .accel/ (ml-collections, Fashion-MNIST)
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh", carry=[".accel"], timeout_s=600)
#
# BENCHMARK_SECONDS (default 390) and TOTAL_SECONDS (default 570) bound the two parts.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the benchmark's cases and the study share the memory
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
set -o pipefail
timeout "${BENCHMARK_SECONDS:-390}" python3 benchmarks/accelerator.py 2>&1 | tee "$OUT/accelerator.log"
echo "accelerator.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log"
left=$(( ${TOTAL_SECONDS:-570} - (SECONDS - start) ))
if [ "$left" -gt 60 ]; then
  timeout "$left" python3 launch.py --config=configs/fashion_mnist_gpu.py --workdir="$OUT/fmnist_gpu" \
    --config.progress_every_seconds=30 2>&1 | tee "$OUT/study.log"
  echo "study exit $? after $((SECONDS - start)) s (resumable: run the same command again)" | tee -a "$OUT/study.log"
fi
echo "total $((SECONDS - start)) s"
