#!/usr/bin/env bash
# agd on a GPU machine in as few calls as possible: build the CUDA library, run the GPU tests, time the
# kernels (issues: fused Triton epilogue, C++/CUDA blocks) and compile, tune and time a derived student
# with TVM for the GPU. Every log and JSON result lands in OUT_DIR; a short summary is printed last.
#
# Usage (repository root): tools/gpu_check.sh OUT_DIR [STAGE ...]
#   install  editable install, the C++/CUDA libraries built in place (in the background: tests start at once)
#   tests    tests/test_kernels.py (Triton, compiled), then the CUDA block tests
#   bench    agd bench kernels: Triton suite float32 (all shapes) + search step, csrc suite, Triton bfloat16
#   tvm      TVM for target cuda: untuned (dlight) and tuned against eager / torch.compile; needs
#            apache-tvm, apache-tvm-ffi and xgboost importable (TVM_WHEELS=DIR: pip-install the wheels in DIR)
# Default stages: install tests bench. Env: PYTHON (python3), AGD_GENOTYPE (examples/translation_r9_small.json),
# and time caps in seconds per step (each step is killed at its cap, its partial log kept): T_TEST_TRITON,
# T_TEST_CUDA, T_BENCH_TRITON, T_BENCH_CSRC, T_PROFILE, T_BENCH_BF16, T_TVM_TESTS, T_TVM_TUNE, T_TVM_MEASURE, T_TVM_COMPILE;
# TVM_TRIALS (the tuning budget, 2000: the time cap usually ends it first).
# OUT_DIR gets summary.txt, the benchmarks' JSON and logs.tgz (every log): few files, for machines that
# return only a handful.
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUT_DIR [install|tests|bench|tvm ...]}
shift
stages=" ${*:-install tests bench} "
mkdir -p "$out"
out=$(cd "$out" && pwd)
logs=$(mktemp -d /tmp/agd-gpu-logs.XXXX)
trap 'tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null' EXIT
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: >"$summary"
step() { echo "== $(date +%T) $*"; }
note() {  # a line of the summary; the logs so far are packed at once (a run killed later keeps them)
  echo "$*" | tee -a "$summary"
  tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
}
want() { [[ "$stages" == *" $1 "* ]]; }

step "machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -n 1
  echo "$(nproc) CPUs, $(date -u +%F)"
} 2>&1 | tee -a "$summary"

build_pid=""
if want install; then
  step "install (editable, no C++), then build the C++ and CUDA libraries in place, in the background"
  AGD_SKIP_CPP=1 $py -m pip install -q --no-build-isolation --no-deps -e . >"$logs/install.log" 2>&1 \
    || { note "install FAILED"; tail -n 20 "$logs/install.log"; exit 1; }
  (MAX_JOBS=${MAX_JOBS:-12} $py setup.py build_ext --inplace >"$logs/build.log" 2>&1; echo "build exit $?" >>"$logs/build.log") &
  build_pid=$!
fi

wait_build() {
  if [[ -n "$build_pid" ]]; then
    wait "$build_pid"
    build_pid=""
    note "C++/CUDA build: $(tail -n 1 "$logs/build.log"), $(ls agd/_C*.so 2>/dev/null | tr '\n' ' ')"
    grep -E "error|Error" "$logs/build.log" | head -n 10
    $py -X faulthandler -m agd info >"$logs/info.txt" 2>&1  # it segfaulted once there: keep the stack
    grep -i -E "cuda|triton|c\+\+|blocks" "$logs/info.txt" | head -n 12 | tee -a "$summary"
  fi
}

run_pytest() {  # name timeout args...
  local name=$1 limit=$2
  shift 2
  timeout "$limit" $py -m pytest -q -p no:cacheprovider -rfEs "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  note "pytest $name: exit $rc: $(tail -n 1 "$logs/$name.log")"
  grep -E "^(FAILED|ERROR)" "$logs/$name.log" | cut -c1-400 | head -n 25 | tee -a "$summary"
}

if want tests; then
  step "Triton kernel tests on the GPU (compiled kernels, full-size shapes)"
  run_pytest test_kernels "${T_TEST_TRITON:-180}" tests/test_kernels.py
  wait_build
  step "CUDA block tests"
  run_pytest test_csrc_cuda "${T_TEST_CUDA:-180}" tests/test_csrc_cuda.py tests/test_csrc_blocks.py -k "cuda and not sources_compile"
fi
wait_build

if want bench; then
  step "bench: Triton suite, float32, every workload, and the whole search step"
  timeout "${T_BENCH_TRITON:-300}" $py -m agd bench kernels --suite triton --dtypes float32 \
    --json "$out/bench_triton_f32.json" >"$logs/bench_triton_f32.log" 2>&1
  note "bench triton float32: exit $?"
  step "bench: csrc suite (agd's CUDA ops against cuDNN / eager)"
  timeout "${T_BENCH_CSRC:-150}" $py -m agd bench kernels --suite csrc --no-compile-rows --json "$out/bench_csrc.json" \
    >"$logs/bench_csrc.log" 2>&1
  note "bench csrc: exit $?"
  step "profile: one fused forward + backward (translation b4 K5, float32), host and device"
  timeout "${T_PROFILE:-60}" $py - >"$logs/profile_fused.txt" 2>&1 <<'EOF'
import torch
from torch.profiler import ProfilerActivity, profile
from agd.bench import kernels as kb
w = kb.Workload("translation b4 K5", "translation", 4, 256, 64, 5)
wts, leaves, build = kb.make_inputs(w, torch.float32, "cuda")
run = kb.fwd_bwd("fused", wts, leaves, build, w.channels)
for _ in range(5):
    run()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        run()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
EOF
  note "profile: $(grep -E "Self CPU time total|Self CUDA time total" "$logs/profile_fused.txt" | tr '\n' ' ')"
  step "bench: Triton suite, bfloat16, one workload per space"
  timeout "${T_BENCH_BF16:-120}" $py -m agd bench kernels --suite triton --dtypes bfloat16 --quick --no-search-step \
    --json "$out/bench_triton_bf16.json" >"$logs/bench_triton_bf16.log" 2>&1
  note "bench triton bfloat16: exit $?"
fi

if want tvm; then
  if [[ -n "${TVM_WHEELS:-}" ]]; then
    step "install the TVM wheels from $TVM_WHEELS"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/agd-site "$TVM_WHEELS"/*.whl \
      >"$logs/tvm_install.log" 2>&1 || { note "TVM wheel install FAILED"; tail -n 5 "$logs/tvm_install.log"; }
    export PYTHONPATH=/tmp/agd-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # TVM's CUDA runtime library needs libcudart.so.13: the toolkit's or the CUDA wheel's
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           "$($py -c 'import site; print(site.getsitepackages()[0])')/nvidia/cu13/lib"; do
    [[ -e "$d/libcudart.so.13" ]] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && break
  done
  $py -m agd info 2>&1 | grep -i tvm | tee -a "$summary"
  $py -c "import agd" 2>/dev/null || AGD_SKIP_CPP=1 $py -m pip install -q --no-build-isolation --no-deps -e . \
    >"$logs/install_tvm.log" 2>&1
  geno=${AGD_GENOTYPE:-examples/translation_r9_small.json}
  db=/tmp/agd-tvm-db
  step "TVM cuda tests"
  run_pytest test_tuning_cuda "${T_TVM_TESTS:-90}" tests/test_tuning.py -k "cuda or gpu"
  step "TVM cuda: MetaSchedule tuning of $geno, capped at ${T_TVM_TUNE:-150} s (records persist; a killed run resumes)"
  t0=$(date +%s)
  timeout "${T_TVM_TUNE:-150}" $py -m agd latency measure "$geno" --target cuda --trials "${TVM_TRIALS:-2000}" \
    --database "$db" --backends tvm-tuned --json >"$logs/tvm_cuda_tune.json" 2>"$logs/tvm_cuda_tune.log"
  note "tvm tuning: exit $?, $(( $(date +%s) - t0 )) s, $(cat "$db"/database_tuning_record.json 2>/dev/null | wc -l) records"
  step "TVM cuda: eager, torch.compile, ONNX Runtime, TVM untuned (dlight) and tuned, in one process"
  timeout "${T_TVM_MEASURE:-200}" $py -m agd latency measure "$geno" --target cuda --database "$db" --repeats 50 \
    --backends eager,torch.compile,onnxruntime,tvm-untuned,tvm-tuned --json >"$out/tvm_cuda.json" 2>"$logs/tvm_cuda.log"
  note "tvm measure: exit $?"
  cp "$db"/database_*.json "$logs/" 2>/dev/null
  step "TVM cuda: agd compile (the checked artifact) from the database"
  timeout "${T_TVM_COMPILE:-90}" $py -m agd compile "$geno" --target cuda --database "$db" --trials 0 --output /tmp/agd-artifact \
    >"$logs/tvm_compile.log" 2>&1
  note "agd compile --target cuda: exit $?: $(tail -n 1 "$logs/tvm_compile.log")"
  cp /tmp/agd-artifact/manifest.json "$logs/artifact_manifest.json" 2>/dev/null
fi

step "summary"
cat "$summary"
for f in "$out"/bench_*.json; do
  [[ -s "$f" ]] && $py - "$f" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print("---", sys.argv[1].rsplit("/", 1)[-1])
for r in rows:
    if "fused_ms" in r:
        print(f"{r['workload']:>18} {r['dtype'][:4]}: wall e/c/f {r['eager_ms']:.3f} {r['compile_ms']:.3f} "
              f"{r['fused_ms']:.3f} ms x{r['eager_over_fused']:.2f} x{r['compile_over_fused']:.2f}", end="")
        if "fused_gpu_ms" in r:
            print(f" | gpu e/c/f {r['eager_gpu_ms']:.3f} {r['compile_gpu_ms']:.3f} {r['fused_gpu_ms']:.3f} ms "
                  f"x{r['eager_over_fused_gpu']:.2f} x{r['compile_over_fused_gpu']:.2f} {r['of_copy_gpu']:.0%} of copy", end="")
        print()
    elif "peak_mib" in r:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
        gpu = "" if r.get("gpu_ms") is None else f", gpu {r['gpu_ms']:.2f} ms"
        print(f"{r['workload']} epilogue {r['epilogue']}: {r['ms']:.2f} ms{gpu}, peak {peak}")
    else:
        print(f"{r['op'][:22]:>22} {r['shape'][:46]:<46} {r['backend']:>7}: {r['median_ms']:.4f} ms x{r['ratio']:.2f}")
EOF
done
for f in "$out"/tvm_cuda.json; do
  [[ -s "$f" ]] && $py - "$f" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    ms = f"{r['median_ms']:.3f} ms, err {r['max_abs_error']:.1e}" if r["ok"] else "-"
    print(f"{r['backend']:>14}: {ms}  {r['note'][:110]}")
EOF
done
exit 0
