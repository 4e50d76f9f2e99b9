#!/usr/bin/env bash
# What to run on a lent GPU machine, one device call per part. Logs go to $OUT (default ./gpu_out).
#
#   bash ../shared/device/prepare.sh        # here, once: fills .accel/ (ml-collections, Fashion-MNIST)
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh benchmarks", carry=[".accel"])
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh study", carry=[".accel"])
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh pallas", carry=[".accel"])
#   run(command="source .accel/env.sh && bash benchmarks/gpu_session.sh checks", carry=[".accel"])
#   run(command="source .accel/env.sh && OUT=$OUT bash benchmarks/gpu_session.sh profile", carry=[".accel"])
#
# benchmarks: im2col (two-stage patches on a GPU) against its one-stage patches and the patches of
#   lax.conv_general_dilated_patches at batch 64, N = 100 (at most 90 s); the accelerator benchmark
#   at batch 64, N = 100 with the real cell checked by im2col and by xla, the latter also with checks
#   that stop counting above the goal (at most 300 s); then the
#   issue table's other chunks (batch 8 / 64 / 512 / 4096), with bfloat16 at batch 4096, for what
#   is left of PART_SECONDS (default 500): rows print as they are measured, so a cut run keeps them;
# study: configs/fashion_mnist_gpu.py (about 7 minutes on an H100), cut at PART_SECONDS; further
#   arguments go to launch.py (e.g. `study --config.convolution=pallas`);
# pallas: config.convolution='pallas' against 'im2col' in one run: the GPU tests of the Triton
#   kernels (at most 90 s), the chunk at batch 64, N = 100 with xla and a few Triton settings (at
#   most 110 s), then the accelerator benchmark's chunks at 64x100, 8x1000 and 4096x8, the flax
#   baseline and the real cell (until 'first' and 'all') with both convolutions, for what is left;
# checks: config.eval_convolution (training by im2col, checks by 'pallas', the Triton kernels, or
#   'xla', cuDNN) and the engine's flattened im2col on a GPU, in one run: the engine's im2col against
#   its former 4-D patch layout (conv_forms.py im2col_4d, batch 64, N = 100, with XLA:GPU's byte
#   counts, at most 80 s); the accelerator benchmark at batch 64, N = 100 (chunk, bfloat16, flax
#   baseline) with the real cell (until 'first' and 'all') checked by im2col, pallas and xla (at most
#   300 s); the same chunk with XLA's Triton GEMMs allowed for every matmul (--xla_gpu_triton_gemm_any,
#   at most 50 s); then the chunks at batch 8, N = 1000 and batch 4096, N = 8 for what is left.
# profile: where the device's time goes (benchmarks/profile_chunk.py; 107 s on an H200): the chunk at
#   batch 64, N = 100 with one check by im2col and by xla, the chunks at batch 8, N = 1000 and batch
#   4096, N = 8, and the batch-64 chunk in bfloat16; each trace is kept under $OUT/traces.
# With 15 minutes of device time per session (machine start included), a session fits one part.
set -u
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_session.sh benchmarks|study|pallas|checks|profile [launch.py flags, for study]}
case $part in benchmarks|study|pallas|checks|profile) ;;
  *) echo "unknown part '$part': benchmarks, study, pallas, checks or profile" >&2; exit 2 ;;
esac
gpu_tests=(tests/test_pallas_conv.py::test_on_a_gpu_the_compiled_kernels_match_lax
           tests/test_pallas_conv.py::test_simple_cnn_with_pallas_convolutions_equals_im2col_in_values_and_gradients)
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # as the README's H100 figures were measured
start=$SECONDS
limit=${PART_SECONDS:-500}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
set -o pipefail
case $part in
  benchmarks)
    # im2col (two-stage patches on a GPU) against the one-stage patches, at batch 64, N = 100.
    timeout -k 5 90 python3 benchmarks/conv_forms.py --batch 64 --trials 100 --steps 50 --skip_bytes \
      --forms im2col one_stage patches_op 2>&1 | tee "$OUT/conv_forms.log"
    echo "conv_forms.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/conv_forms.log"
    timeout -k 10 300 python3 benchmarks/accelerator.py --cases 64x100 --eval_convolutions xla \
      --real_cell_modes first all --stopping_checks 2>&1 | tee "$OUT/accelerator.log"
    echo "accelerator.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log"
    left=$((limit - (SECONDS - start)))
    [ "$left" -gt 30 ] || left=30
    timeout -k 10 "$left" python3 benchmarks/accelerator.py --cases 8x100 8x1000 64x8 64x32 512x16 512x100 4096x1 \
      4096x8 --skip_real_cell 2>&1 | tee -a "$OUT/accelerator.log"
    echo "accelerator.py (the other chunks) exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log" ;;
  pallas)
    timeout -k 5 90 python3 -m pytest -q -p no:cacheprovider "${gpu_tests[@]}" 2>&1 | tee "$OUT/pallas_tests.log"
    echo "pallas tests exit $? after $((SECONDS - start)) s" | tee -a "$OUT/pallas_tests.log"
    timeout -k 5 110 python3 benchmarks/conv_forms.py --batch 64 --trials 100 --steps 50 --skip_bytes \
      --forms im2col xla pallas --pallas_settings warps=4 tile=256 stages=3 2>&1 | tee "$OUT/conv_forms.log"
    echo "conv_forms.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/conv_forms.log"
    left=$((limit - (SECONDS - start)))
    [ "$left" -gt 30 ] || left=30
    timeout -k 10 "$left" python3 benchmarks/accelerator.py --convolutions im2col pallas \
      --cases 64x100 8x1000 4096x8 --skip_dtype --real_cell_modes first all 2>&1 | tee "$OUT/accelerator.log"
    echo "accelerator.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log" ;;
  checks)
    timeout -k 5 80 python3 benchmarks/conv_forms.py --batch 64 --trials 100 --steps 50 \
      --forms im2col im2col_4d 2>&1 | tee "$OUT/conv_forms.log"
    echo "conv_forms.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/conv_forms.log"
    timeout -k 10 300 python3 benchmarks/accelerator.py --cases 64x100 --eval_convolutions pallas xla \
      --real_cell_modes first all 2>&1 | tee "$OUT/accelerator.log"
    echo "accelerator.py exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log"
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_triton_gemm_any=true" timeout -k 5 50 python3 benchmarks/conv_forms.py \
      --batch 64 --trials 100 --steps 50 --forms im2col 2>&1 | tee -a "$OUT/conv_forms.log"
    echo "conv_forms.py (--xla_gpu_triton_gemm_any) exit $? after $((SECONDS - start)) s" | tee -a "$OUT/conv_forms.log"
    left=$((limit - (SECONDS - start)))
    [ "$left" -gt 30 ] || left=30
    timeout -k 10 "$left" python3 benchmarks/accelerator.py --cases 8x1000 4096x8 --skip_real_cell 2>&1 \
      | tee -a "$OUT/accelerator.log"
    echo "accelerator.py (batch 8 and 4096) exit $? after $((SECONDS - start)) s" | tee -a "$OUT/accelerator.log" ;;
  profile)
    profile() { timeout -k 5 "$1" python3 benchmarks/profile_chunk.py --steps 20 --keep_traces "$OUT/traces" "${@:2}" 2>&1 \
      | tee -a "$OUT/profile.log"; echo "profile_chunk.py ${*:2} exit $? after $((SECONDS - start)) s" | tee -a "$OUT/profile.log"; }
    profile 130 --cases 64x100 --check --eval_convolutions im2col xla
    profile 90 --cases 8x1000 4096x8
    profile 60 --cases 64x100 --compute_dtype bfloat16 ;;
  study)
    timeout "$limit" python3 launch.py --config=configs/fashion_mnist_gpu.py --workdir="$OUT/fmnist_gpu" \
      --config.progress_every_seconds=30 "${@:2}" 2>&1 | tee "$OUT/study.log"
    echo "study exit $? after $((SECONDS - start)) s" | tee -a "$OUT/study.log" ;;
esac
