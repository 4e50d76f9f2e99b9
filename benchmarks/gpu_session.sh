#!/usr/bin/env bash
# What to run on a lent GPU machine, one device call per part. Logs go to $OUT (default ./gpu_out).
#
#   bash ../shared/device/prepare.sh        # here, once: fills .accel/ (ml-collections, Fashion-MNIST)
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh benchmarks", carry=[".accel"])
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh study", carry=[".accel"])
#
# benchmarks: the convolution forms im2col, pallas (Triton kernels) and xla at N = 100, batch 64
#   (at most 180 s), then the whole accelerator benchmark (about 6 minutes on an H100) with what is
#   left of PART_SECONDS (default 500): its rows print as they are measured, so a cut run keeps them;
# study: configs/fashion_mnist_gpu.py (about 7 minutes on an H100), cut at PART_SECONDS.
# With 15 minutes of device time per session (machine start included), a session fits one part.
set -u
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_session.sh benchmarks|study}
case $part in benchmarks|study) ;; *) echo "unknown part '$part': benchmarks or study" >&2; exit 2 ;; esac
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # as the README's H100 figures were measured
start=$SECONDS
limit=${PART_SECONDS:-500}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
set -o pipefail
case $part in
  benchmarks)
    timeout 180 python3 benchmarks/conv_forms.py --trials 100 --steps 50 --forms im2col pallas xla 2>&1 \
      | tee "$OUT/conv_forms.log"
    echo "conv_forms.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/conv_forms.log"
    left=$((limit - (SECONDS - start)))
    timeout "$left" python3 benchmarks/accelerator.py 2>&1 | tee "$OUT/accelerator.log"
    echo "accelerator.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log" ;;
  study)
    timeout "$limit" python3 launch.py --config=configs/fashion_mnist_gpu.py --workdir="$OUT/fmnist_gpu" \
      --config.progress_every_seconds=30 2>&1 | tee "$OUT/study.log"
    echo "study exit $? after $((SECONDS - start)) s" | tee -a "$OUT/study.log" ;;
esac
