#!/usr/bin/env bash
# Install mmddaq and the OpenMMLab stack it needs into a virtual environment.
#
# Idempotent: an existing environment is reused and only what is missing is
# installed. mmcv 2.1.0 has no binary wheel for current PyTorch, so it is built
# from source once (about 20 minutes on 2 CPU cores) and the wheel is cached,
# keyed by the torch version, so later installs take minutes.
#
# Environment variables:
#   MMDDAQ_VENV        virtual environment to create or reuse
#                      (default: ~/.cache/mmddaq/venv-py311-torch2.14.1)
#   MMDDAQ_WHEEL_CACHE folder of self-built wheels
#                      (default: ~/.cache/mmddaq/wheels)
#   PYTHON             interpreter used to create the environment (default: python3.11)
set -euo pipefail

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMPRETRAIN_VERSION=1.2.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HOME}/.cache/mmddaq"
VENV="${MMDDAQ_VENV:-${CACHE}/venv-py311-torch${TORCH_VERSION}}"
WHEELS="${MMDDAQ_WHEEL_CACHE:-${CACHE}/wheels}/torch${TORCH_VERSION}-py311"
PY_BOOT="${PYTHON:-python3.11}"

log() { echo "[mmddaq install] $*"; }
die() { echo "[mmddaq install] ERROR: $*" >&2; exit 1; }

command -v "${PY_BOOT}" >/dev/null || PY_BOOT=python3
"${PY_BOOT}" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "Python 3.11 is required (torch ${TORCH_VERSION} wheels on this machine are cp311)"

if [ ! -x "${VENV}/bin/python" ]; then
    log "creating virtual environment ${VENV}"
    mkdir -p "$(dirname "${VENV}")"
    "${PY_BOOT}" -m venv "${VENV}"
fi
PY="${VENV}/bin/python"
PIP=("${PY}" -m pip --disable-pip-version-check)

# setuptools >= 77 for torch, < 81 because mmcv's setup.py imports pkg_resources.
"${PIP[@]}" install -q "pip>=23" "setuptools>=77,<81" wheel ninja

have() { "${PY}" -c "$1" >/dev/null 2>&1; }

if ! have "import torch, torchvision; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}'; assert torchvision.__version__.split('+')[0] == '${TORCHVISION_VERSION}'"; then
    log "installing torch ${TORCH_VERSION} and torchvision ${TORCHVISION_VERSION}"
    "${PIP[@]}" install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
fi

mmcv_ok() { have "import mmcv, mmcv.ops; assert mmcv.__version__ == '${MMCV_VERSION}'"; }

if ! mmcv_ok; then
    # Never leave a half-working mmcv behind: remove whatever is there first.
    "${PIP[@]}" uninstall -y -q mmcv mmcv-full mmcv-lite >/dev/null 2>&1 || true
    mkdir -p "${WHEELS}"
    WHEEL="$(ls "${WHEELS}"/mmcv-${MMCV_VERSION}-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "${WHEEL}" ]; then
        log "building mmcv ${MMCV_VERSION} with its compiled ops from source."
        log "This happens once per machine and takes about 20 minutes on 2 cores:"
        log "PyPI has no mmcv wheel for torch ${TORCH_VERSION}. The wheel is cached in ${WHEELS}."
        BUILD="$(mktemp -d)"
        trap 'rm -rf "${BUILD}"' EXIT
        # torch's headers need C++20; mmcv 2.1.0 hard-codes -std=c++17 after user
        # flags, so compiler wrappers rewrite the standard flag.
        for pair in "cc:gcc" "c++:g++"; do
            name="${pair%%:*}"; real="$(command -v "${pair##*:}")"
            cat > "${BUILD}/${name}" <<WRAP
#!/usr/bin/env bash
args=()
for a in "\$@"; do
  case "\$a" in -std=c++14|-std=c++17) args+=("-std=c++20");; *) args+=("\$a");; esac
done
exec "${real}" "\${args[@]}"
WRAP
            chmod +x "${BUILD}/${name}"
        done
        # --no-build-isolation: the build must see the installed torch, or mmcv
        # silently builds without mmcv._ext. --no-cache-dir: pip's cache keys
        # wheels by sdist, not by the torch they were built against.
        CC="${BUILD}/cc" CXX="${BUILD}/c++" MAX_JOBS="${MAX_JOBS:-$(nproc)}" MMCV_WITH_OPS=1 \
            "${PIP[@]}" wheel --no-build-isolation --no-deps --no-cache-dir \
            -w "${BUILD}/out" "mmcv==${MMCV_VERSION}" \
            || die "mmcv ${MMCV_VERSION} build failed (see the compiler output above)"
        WHEEL_BUILT="$(ls "${BUILD}"/out/mmcv-*.whl | head -n1)"
        cp "${WHEEL_BUILT}" "${WHEELS}/.partial.whl"
        mv "${WHEELS}/.partial.whl" "${WHEELS}/$(basename "${WHEEL_BUILT}")"
        WHEEL="${WHEELS}/$(basename "${WHEEL_BUILT}")"
    else
        log "reusing cached mmcv wheel ${WHEEL}"
    fi
    "${PIP[@]}" install -q "${WHEEL}"
    if ! mmcv_ok; then
        "${PIP[@]}" uninstall -y -q mmcv >/dev/null 2>&1 || true
        rm -f "${WHEEL}"
        die "mmcv installed but 'import mmcv.ops' fails; removed it and the cached wheel, rerun to rebuild"
    fi
fi

log "installing OpenMMLab packages and mmddaq"
"${PIP[@]}" install -q \
    "mmengine==${MMENGINE_VERSION}" "mmdet==${MMDET_VERSION}" "mmpretrain==${MMPRETRAIN_VERSION}" \
    "numpy" "scikit-learn" "scikit-image" "matplotlib" "pycocotools" \
    "onnx" "onnxruntime" "pytest" "pytest-timeout"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "${ROOT}"

"${PY}" -c "import mmcv.ops, mmdet, mmpretrain, mmengine, mmddaq; print('[mmddaq install] ok: torch', __import__('torch').__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmpretrain', mmpretrain.__version__)" \
    || die "final import check failed"

