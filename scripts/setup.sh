#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11+). Idempotent.
#
#   bash scripts/setup.sh          # the package, kfp, MLflow and the Docker SDK: enough for `polydistill run`
#   bash scripts/setup.sh --test   # plus the test tools (pytest, moto, kubectl/kustomize, kubernetes-validate)
#
# torch is installed first and pinned on its own: `pip install torch==2.13.0` takes the CPU wheel on these
# machines, while any torch requirement left for pip to resolve pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras="kfp,docker"
[[ "${1:-}" == "--test" ]] && extras="kfp,docker,test"

"$PYTHON" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
if [[ "${1:-}" == "--test" ]]; then
  bash scripts/install-test-tools.sh
fi
"$PYTHON" -c "import polydistill, torch, ale_py, kfp, mlflow; print('polydistill', polydistill.__version__, '| torch', torch.__version__, '| ale-py', ale_py.__version__, '| kfp', kfp.__version__, '| mlflow', mlflow.__version__)"
