#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_packing_device.sh installs on the GPU machine.
#
#     bash benchmarks/gpu_packing_wheels.sh        # from the repository root; fills .whl/ (git-ignored)
#
# The GPU machine (Python 3.12, x86-64, no network) has torch, numpy, scipy, scikit-learn, pandas,
# pyarrow, pyyaml, matplotlib and most of Ray's small dependencies, but not Ray itself, nor
# jsonschema and pydantic (ray.tune imports ray.train, which needs pydantic). Versions are the ones
# `pip install -e .[dev]` resolves here. Ray's wheel is 79 MB, over the 64 MiB a device call
# carries: its Java jars (32 MB, for Java workers only) and the dashboard's JavaScript source maps
# are dropped, which leaves a 47 MB wheel that runs Python workers and Tune unchanged.
set -euo pipefail

WHEELS=.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PACKAGES=(
    ray==2.60.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.16.0
)

mkdir -p "$WHEELS"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "${PACKAGES[@]}"

python3 - "$WHEELS" <<'EOF'
"""Rewrite Ray's wheel without its Java jars and JavaScript source maps (RECORD kept consistent)."""
import sys
import zipfile
from pathlib import Path

def dropped(name: str) -> bool:
    return name.startswith("ray/jars/") or name.endswith(".js.map")

for wheel in Path(sys.argv[1]).glob("ray-*.whl"):
    with zipfile.ZipFile(wheel) as source:
        if not any(dropped(info.filename) for info in source.infolist()):
            continue  # already slimmed
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if dropped(info.filename):
                    continue
                data = source.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if not dropped(line.split(",")[0])).encode()
                target.writestr(info, data, zipfile.ZIP_DEFLATED)
    slim.replace(wheel)
    print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB after dropping jars and source maps")
EOF
du -ch "$WHEELS"/*.whl | tail -1
