#!/usr/bin/env bash
# GPU checks and figures in one short run: at most $GPU_CHECKS_BUDGET seconds (default 480) in all, every step
# with its own time limit (cut to what is left; steps without time are listed as skipped), most important first;
# a failing step does not stop the others:
#   1. the tests marked `cuda` (Triton kernel against float64, bfloat16/AMP, mamba-ssm where installed);
#   2. bench_selective_scan.py: triton vs mamba-ssm's CUDA kernel vs chunked (and SDPA), fwd+bwd, L = 1k..64k;
#   3. one Mamba block training step under bfloat16 autocast per scan backend;
#   4. bench_models.py --paper --device cuda (bfloat16 autocast training steps) for the 2.5D models with the
#      triton backend, and SegMaST alone with the chunked and (if installed) mamba-ssm backends;
#   5. a sweep of the Triton tile length, the scans' forward pass alone, the older GPU scan tests.
#
# Usage (from the repository root):  bash benchmarks/gpu_checks.sh OUTPUT_DIR
# Python: $PYTHON (default python3), which needs torch with CUDA and the repository's requirements.
# Everything is written under OUTPUT_DIR: one .txt per step and summary.txt (step, exit code, seconds).
# Exit status: 0 when every step that ran passed, 1 when any failed (named on stderr; summary.txt has its code),
# 2 when the interpreter sees no CUDA device (nothing runs).
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_checks.sh OUTPUT_DIR" >&2
    exit 2
fi
OUT=$1
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export TRITON_CACHE_DIR="$OUT/.triton-cache"  # compiled kernels stay inside the output folder ...
trap 'rm -rf "$TRITON_CACHE_DIR"' EXIT        # ... and are removed at the end
unset TRITON_INTERPRET LONGISEG_SCAN_BACKEND
SUMMARY="$OUT/summary.txt"
echo "# gpu_checks $(date -u '+%Y-%m-%d %H:%M UTC')  step  exit-code(124: time limit)  seconds" >"$SUMMARY"
DEADLINE=$((SECONDS + ${GPU_CHECKS_BUDGET:-480}))

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "$name skipped-out-of-time 0" | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    echo "== $name: $*" | tee "$OUT/$name.txt"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name $rc $((SECONDS - t0))" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || FAILED+=("$name($rc)")
    tail -n 25 "$OUT/$name.txt"
}
FAILED=()
# no CUDA device (or a CPU-only torch): one line now, not every step failing on its own
if ! "$PY" -c "import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_checks: error: $PY sees no CUDA device (torch.cuda.is_available() is False, or torch is missing); nothing was run" >&2
    echo "no-cuda-device 2 0" >>"$SUMMARY"
    exit 2
fi
# mamba-ssm's CUDA kernel is optional: measured (and required) only where it is installed
if "$PY" -c "from longiseg.ssm import cuda as b; raise SystemExit(0 if b.cuda_scan_available() else 1)" 2>/dev/null; then
    HAVE_MAMBA_SSM=1 SCAN_CUDA=",cuda"
else
    HAVE_MAMBA_SSM=0 SCAN_CUDA=""
fi
# DynUNet is MONAI's (an optional extra): timed where MONAI is installed, left out (and said so) where it is not
MODELS_2D="segmast_ms segformer_ms"
if "$PY" -c "import monai" 2>/dev/null; then
    MODELS_2D="$MODELS_2D dynunet_2d_ms"
else
    echo "monai is not installed: dynunet_2d_ms is left out of the model benchmark"
fi

step gpu 30 nvidia-smi
step versions 60 "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except Exception as err:
    print("triton: not importable:", err)
from longiseg.ssm import cuda as bridge, resolve_backend
print("mamba-ssm importable:", bridge.cuda_scan_available(), "| auto on cuda:", resolve_backend("auto", torch.device("cuda")))
import importlib.util
missing = [m for m in ("nibabel", "cc3d", "monai", "numba", "timm", "einops", "scipy", "yaml", "hypothesis")
           if importlib.util.find_spec(m) is None]
print("not installed (the checks below need none of them but monai, for DynUNet):", missing or "none")
EOF

step pytest_cuda 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_triton_scan.py tests/test_selective_scan.py \
    tests/test_engine_trainer.py tests/test_inferers_triplanar.py

step scan_fwd_bwd 150 "$PY" benchmarks/bench_selective_scan.py --device cuda --reps 5 \
    --lengths 1024,4096,16384,65536 --methods "triton$SCAN_CUDA,chunked,sdpa"

step mamba_block_amp 90 "$PY" - <<'EOF'
# one Mamba block (d_model 256, d_state 16) training step under bfloat16 autocast, B=8, L=4096, per scan backend
import torch
from torch.utils.benchmark import Timer
from longiseg.ssm import Mamba
from longiseg.ssm import cuda as bridge
x = torch.randn(8, 4096, 256, device="cuda")
for backend in ["triton", "chunked"] + (["cuda"] if bridge.cuda_scan_available() else []):
    torch.manual_seed(0)
    block = Mamba(256, d_state=16, backend=backend).cuda()
    opt = torch.optim.AdamW(block.parameters())
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = block(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    torch.cuda.reset_peak_memory_stats()
    t = Timer("step()", globals={"step": step}).blocked_autorange(min_run_time=2.0)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"{backend:>8}: {t.median * 1e3:8.2f} ms/step  peak {peak:7.0f} MiB  loss finite: {torch.isfinite(block(x)).all().item()}")
EOF

# $MODELS_2D unquoted: a list of words
step models_paper_triton 120 env LONGISEG_SCAN_BACKEND=triton "$PY" benchmarks/bench_models.py --paper --device cuda \
    --models $MODELS_2D --no-inference
step models_paper_chunked 60 env LONGISEG_SCAN_BACKEND=chunked "$PY" benchmarks/bench_models.py --paper --device cuda \
    --models segmast_ms --no-inference
if [ "$HAVE_MAMBA_SSM" -eq 1 ]; then
    step models_paper_cuda 60 env LONGISEG_SCAN_BACKEND=cuda "$PY" benchmarks/bench_models.py --paper --device cuda \
        --models segmast_ms --no-inference
fi

step triton_tiles 60 "$PY" - <<'EOF'
# fwd+bwd time of the Triton kernels per tile length (B=2, D=128, N=16, float32): to tune the default tile
import torch
from torch.utils.benchmark import Timer
from longiseg.ssm.triton_kernel import selective_scan_triton
for L in (4096, 65536):
    g = torch.Generator(device="cuda").manual_seed(0)
    def r(*s):
        return torch.randn(*s, device="cuda", generator=g)
    xs = [r(2, 128, L), r(2, 128, L) - 2, -(0.5 + r(128, 16).abs()), r(2, 16, L), r(2, 16, L), r(128), r(2, 128, L), r(128)]
    xs = [x.requires_grad_() for x in xs]
    for bt in (16, 32, 64, 128, 256):
        def step():
            selective_scan_triton(*xs, delta_softplus=True, block_t=bt).sum().backward()
        step()
        t = Timer("step()", globals={"step": step}).blocked_autorange(min_run_time=1.0)
        print(f"L={L:6d} block_t={bt:4d}  fwd+bwd median {t.median * 1e3:8.3f} ms")
EOF

step scan_forward 60 "$PY" benchmarks/bench_selective_scan.py --device cuda --reps 5 --forward \
    --lengths 4096,65536 --methods "triton$SCAN_CUDA,chunked"

step pytest_gpu_backends 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_selective_scan.py -k gpu_backends

echo "== summary ($SUMMARY)"
cat "$SUMMARY"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_checks: error: ${#FAILED[@]} step(s) failed (exit code): ${FAILED[*]}" >&2
    exit 1
fi
