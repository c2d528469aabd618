#!/usr/bin/env bash
# Prepare tools/gpu_check.sh here, on a machine with nvcc, so no GPU minute goes to installing or
# compiling (docs/performance.md "GPU check"):
#
#   tools/prepare_gpu_check.sh [--no-build] [--published PATH]...
#
# 1. pytest and its pure-Python dependencies into .gpu_deps/ (git-ignored; the GPU image has no
#    pytest and may reach no package registry); gpu_check.sh puts .gpu_deps on PYTHONPATH;
# 2. the extension medvol/_C*.so, built in place with its CUDA kernels (--no-build keeps the
#    existing one), and refused if it holds no GPU code;
# 3. .gpu_deps/build_record.json: the torch, CUDA, nvcc and Python it was built with and its
#    sha256, which the GPU run's "build" part compares with what it finds there;
# 4. copies of the given published clones into .gpu_deps/published/<name> (no .git), which
#    gpu_check.sh compares with when it is given no --published;
# then prints the carry list and the command for the GPU machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1
PUBLISHED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --published) [ $# -ge 2 ] || { echo "prepare_gpu_check: error: --published needs a PATH" >&2; exit 2; }
                     [ -f "$2/train.py" ] || { echo "prepare_gpu_check: error: --published $2: no train.py there" >&2; exit 2; }
                     PUBLISHED+=("$2"); shift ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "prepare_gpu_check: error: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
cd "$ROOT"
DEPS="$ROOT/.gpu_deps"
mkdir -p "$DEPS"

echo "[prepare] pytest -> .gpu_deps/"
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile --upgrade --target "$DEPS" pytest

if [ $BUILD -eq 1 ]; then
    echo "[prepare] building medvol/_C (CUDA kernels included; this takes minutes)"
    log="$DEPS/build.log"
    if ! "$PY" setup.py build_ext --inplace > "$log" 2>&1; then
        grep -E "^medvol build|error" "$log" | tail -20 >&2 || true
        echo "prepare_gpu_check: error: the build failed (full log: $log)" >&2
        exit 1
    fi
    grep -E "^medvol build" "$log" || true
fi
LIB="$(ls medvol/_C*.so 2>/dev/null | head -1 || true)"
[ -n "$LIB" ] || { echo "prepare_gpu_check: error: no medvol/_C*.so was built" >&2; exit 1; }

"$PY" - "$LIB" "$DEPS/build_record.json" <<'EOF'
import datetime, hashlib, json, os, platform, re, subprocess, sys, sysconfig
sys.path.insert(0, "tools")
import torch
from gpu_check_report import fatbin_entries

lib, record_path = sys.argv[1], sys.argv[2]
entries = fatbin_entries(lib)
if not entries:
    sys.exit(f"prepare_gpu_check: error: {lib} holds no CUDA code (nvcc missing or the CUDA build "
             "failed): the GPU run would have no CUDA kernels")
nvcc = None
for home in filter(None, [os.environ.get("CUDA_HOME"), f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"]):
    if os.path.exists(os.path.join(home, "bin", "nvcc")):
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release ([\d.]+)", out)
        nvcc = found.group(1) if found else None
        break
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
record = {"library": os.path.basename(lib), "sha256": hashlib.sha256(open(lib, "rb").read()).hexdigest(),
          "torch": torch.__version__, "torch_cuda": torch.version.cuda, "nvcc": nvcc,
          "python": platform.python_version(), "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
          "gpu_code": [f"{kind} {arch}" for kind, arch in entries], "commit": commit,
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
tmp = record_path + ".tmp"
with open(tmp, "w", encoding="utf-8") as handle:
    json.dump(record, handle, indent=1)
os.replace(tmp, record_path)
print(f"[prepare] {record['library']}: GPU code {', '.join(record['gpu_code'])}; torch {record['torch']}, "
      f"CUDA {record['torch_cuda']}, nvcc {nvcc}, Python {record['python']}")
EOF

for path in "${PUBLISHED[@]+"${PUBLISHED[@]}"}"; do
    name="$(basename "$(cd "$path" && pwd)")"
    rm -rf "$DEPS/published/$name"
    mkdir -p "$DEPS/published/$name"
    (cd "$path" && tar --exclude=.git --exclude=__pycache__ --exclude='*.ipynb' --exclude=figures -cf - .) \
        | tar -xf - -C "$DEPS/published/$name"
    echo "[prepare] published clone $path -> .gpu_deps/published/$name"
done

SIZE="$(du -sm "$DEPS" "$LIB" | awk '{s += $1} END {print s}')"
echo "[prepare] done (${SIZE} MiB to carry). On the GPU machine, from the repository root:"
echo "    carry: [\".gpu_deps\", \"$LIB\"]"
echo "    command: tools/gpu_check.sh --out gpu_check_out"
