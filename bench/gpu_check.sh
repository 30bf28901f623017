#!/usr/bin/env bash
# The GPU check (issue 22): one script for one H100/H200, about 8 minutes, that downloads nothing.
#
#   bench/gpu_check.sh                 on the GPU machine, from the repository root: measures, and writes the table
#                                      between the gpu-check markers of docs/scale.md
#   bench/gpu_check.sh --dry-run       anywhere, on the CPU: the same steps on tiny shapes (no embedded build), the
#                                      table to a temporary file (tests/test_gpu_check.py runs it in the fast lane)
#   bench/gpu_check.sh --fetch-wheels  where there is a network: fill bench/wheels/ (gitignored) for the GPU machine
#
# Options: --wheels DIR (default bench/wheels), --table FILE (where the table goes), --python-versions "3.10 3.11
# 3.12" (with --fetch-wheels: the machine's Python must be one of them).
#
# The GPU machine has torch, transformers, accelerate and h5py; every other package the project imports is
# installed from the wheels folder, only where it is missing (bench/gpu_wheels.txt lists them, pinned, with their
# own dependencies: pip runs with --no-index --no-deps). Carry bench/wheels/ with the checkout.
#
# Steps and what each measures (docs/scale.md explains the table):
#   1. the embedded build (`neuron-explorer build`, --device auto) in a fresh home, its time and figures;
#   2. bench/scale_bench.py on an 8B-shaped random pair (32 × 14,336, vocabulary 128,256, bfloat16): bare greedy
#      generation and `compute` over 1,199 prompts, a patch run, `torchrun --nproc_per_node 1` of the same compute,
#      and the explorer on the 8B cache.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
wheels=bench/wheels
table=""
dry_run=0
fetch=0
python_versions="3.10 3.11 3.12"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --fetch-wheels) fetch=1 ;;
        --wheels) wheels=$2; shift ;;
        --table) table=$2; shift ;;
        --python-versions) python_versions=$2; shift ;;
        *) echo "gpu_check.sh: unknown option $1 (see the comments at the top)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$fetch" = 1 ]; then
    mkdir -p "$wheels"
    for version in $python_versions; do
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" --python-version "$version" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            -r bench/gpu_wheels.txt
    done
    echo "bench/gpu_check.sh: $(ls "$wheels" | wc -l) wheels in $wheels"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# 0. what is missing, from the wheels (never from a network)
missing=$("$python" - <<'EOF'
import importlib.metadata as metadata
for line in open("bench/gpu_wheels.txt"):
    name = line.split("#")[0].strip().split("==")[0]
    if name:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            print(name)
EOF
)
if [ -n "$missing" ]; then
    if [ "$dry_run" = 1 ]; then
        echo "gpu_check.sh: missing here (a real run installs them from $wheels): $missing" >&2
    else
        pins=$(grep -E "^($(echo $missing | tr ' ' '|'))==" bench/gpu_wheels.txt)
        "$python" -m pip install --quiet --no-index --no-deps --find-links "$wheels" --target "$work/site" $pins
        export PYTHONPATH="$PYTHONPATH:$work/site"
    fi
fi

if [ "$dry_run" = 1 ]; then
    size=tiny; prompts=8; new_tokens=3; batch=4; device=cpu; dtype=float32; extra=(--in-process)
    table=${table:-$work/gpu-check.md}
else
    size=8b; prompts=1199; new_tokens=20; batch=32; device=auto; dtype=bfloat16; extra=()
    table=${table:-docs/scale.md}
fi
"$python" - <<'EOF' > "$work/machine.txt"
import torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
started=$(date +%s)

# 1. the embedded build on the GPU, in a fresh home (so every stage runs)
build_line="skipped (a dry run)"
if [ "$dry_run" = 0 ]; then
    begun=$(date +%s)
    NEURON_EXPLORER_HOME="$work/home" "$python" -m neuron_explorer build --device auto -o "$work/embedded.h5" \
        > "$work/build.txt" 2>&1 || { tail -20 "$work/build.txt" >&2; exit 1; }
    build_line="$(( $(date +%s) - begun )) s"
fi

# 2. the 8B-shaped pair: bare generation and compute over 1,199 prompts, a patch run, torchrun, the explorer
NEURON_EXPLORER_HOME="$work/home" "$python" bench/scale_bench.py --sizes "$size" --prompts "$prompts" \
    --prompt-source "$work/prompts.txt" --patch-holdout 0 --new-tokens "$new_tokens" --batch-size "$batch" \
    --device "$device" --dtype "$dtype" --parts bare,compute,patch,torchrun,explorer --work "$work" \
    --markdown "$work/table.md" --json "$work/figures.json" --prepare-prompts "${extra[@]}"

# 3. the table: into docs/scale.md between its markers, or the file asked for
{
    echo "Measured by \`bench/gpu_check.sh\` on $(cat "$work/machine.txt"), $(date -u +%Y-%m-%d), $(( $(date +%s) - started )) s in all."
    echo "The embedded build (\`neuron-explorer build --device auto\`, every stage): $build_line."
    if [ -f "$work/build.txt" ]; then
        echo; echo '```'; grep -v "^\s*$" "$work/build.txt" | tail -25; echo '```'
    fi
    echo; echo "The $size-shaped random pair, $prompts prompts recorded, $new_tokens new tokens, batch $batch:"; echo
    cat "$work/table.md"
} > "$work/section.md"
"$python" - "$table" "$work/section.md" <<'EOF'
import sys
from pathlib import Path

target, section = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
begin, end = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
text = target.read_text() if target.exists() else ""
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    text = head + begin + "\n" + section + rest[rest.index(end):]
else:
    text = begin + "\n" + section + end + "\n"
target.write_text(text)
print(f"gpu_check.sh: the table is in {target}")
EOF
