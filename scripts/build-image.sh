#!/usr/bin/env bash
# Build the project image (images/Dockerfile, or images/Dockerfile.cuda with --cuda) and tag it as
# src/polydistill_kfp/components/IMAGE (src/polydistill_kfp/components/IMAGE_CUDA) says, which is the tag the pipeline's components run in.
#
#   bash scripts/build-image.sh                    # online: base python:3.11.13-slim-bookworm, PyPI + PyTorch index
#   sudo bash scripts/build-image.sh --offline     # from a wheelhouse, built with --network none
#   sudo bash scripts/build-image.sh --offline --cuda
#
# Options:
#   --offline      fill (or reuse) the wheelhouse on this machine, then build with no index and no network.
#                  Without --base, the base is polydistill/base:bookworm, made here with debootstrap from
#                  Debian's packages when it is missing (for machines that reach no image registry).
#   --cuda         the CUDA variant (torch 2.13.0 as PyPI publishes it for linux/amd64, with its nvidia-* wheels:
#                  several GB).
#   --base IMAGE   the base image (build argument PYTHON_IMAGE): Python 3.11 on Debian bookworm.
#   --tag TAG      another tag than src/polydistill_kfp/components/IMAGE[_CUDA] (the components and `polydistill run --runner docker`
#                  use that file's tag).
#   --wheels-only  fill the wheelhouse and stop (implies --offline): to carry it to an air-gapped machine, whose
#                  POLYDISTILL_CACHE_DIR/wheels/<variant>/ it then fills.
#
# The engine: the one DOCKER_HOST (or the default socket) points at; when none answers and we are root, the
# script installs and starts its own (scripts/docker-engine.sh) and leaves it running for the next command
# (`sudo bash scripts/docker-engine.sh stop` stops it).
# Caches (POLYDISTILL_CACHE_DIR, default /var/cache/polydistill): wheels/<variant>/ (refilled only when
# pyproject's requirements change), base/bookworm-minbase.tar (the debootstrap'ed base) and the engine's data
# root (layers), so a second build costs seconds when only the sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
CACHE_DIR="${POLYDISTILL_CACHE_DIR:-/var/cache/polydistill}"
TORCH_VERSION="2.13.0"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
DEFAULT_OFFLINE_BASE="polydistill/base:bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

offline=0 variant=cpu base="" tag="" wheels_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) offline=1 ;;
    --wheels-only) offline=1; wheels_only=1 ;;
    --cuda) variant=cuda ;;
    --base) base="${2:?--base needs an image}"; shift ;;
    --tag) tag="${2:?--tag needs a tag}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "build-image: $*" >&2; }
if [ "$variant" = cuda ]; then dockerfile=images/Dockerfile.cuda; tag_file=src/polydistill_kfp/components/IMAGE_CUDA
else dockerfile=images/Dockerfile; tag_file=src/polydistill_kfp/components/IMAGE; fi
tag="${tag:-$(cat "$tag_file")}"

# ---- the engine ----
if [ "$wheels_only" = 0 ] && ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  eval "$(bash scripts/docker-engine.sh env)"
  if ! bash scripts/docker-engine.sh status >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "no Docker engine answers; start one (sudo bash scripts/docker-engine.sh start)"; exit 1; }
    bash scripts/docker-engine.sh install
    bash scripts/docker-engine.sh start >/dev/null
  fi
  say "engine: $DOCKER_HOST"
fi

# ---- the base image (offline only: online builds pull the Dockerfile's default) ----
make_base() {
  # Debian's minimal base plus its Python 3.11 (the version the wheelhouse is filled for); apt's lists and
  # downloaded packages are dropped, the image needs neither.
  local tarball="$CACHE_DIR/base/bookworm-minbase.tar" root
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || { say "making the base image needs root (debootstrap), or pass --base IMAGE"; exit 1; }
    command -v debootstrap >/dev/null || bash scripts/docker-engine.sh install
    root="$(mktemp -d)"
    say "debootstrap bookworm into $root (a few minutes, once)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
      "$DEBIAN_MIRROR" >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    mkdir -p "$(dirname "$tarball")"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root" "$root.log"
  fi
  docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$1" >/dev/null
  say "base image $1 imported from $tarball"
}

if [ "$offline" = 1 ] && [ "$wheels_only" = 0 ]; then
  base="${base:-$DEFAULT_OFFLINE_BASE}"
  docker image inspect "$base" >/dev/null 2>&1 || make_base "$base"
fi

# ---- the wheelhouse (offline only) ----
wheelhouse="$CACHE_DIR/wheels/$variant"
fill_wheelhouse() {
  mkdir -p "$wheelhouse"
  local reqs="$wheelhouse/requirements.txt" cons="$wheelhouse/constraints.txt" stamp
  "$PYTHON" -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['kfp']))" >"$reqs.new"
  # Build requirements of the package itself: the builder installs it from source, offline too.
  printf 'setuptools>=68\nwheel\n' >>"$reqs.new"
  if [ "$variant" = cpu ]; then echo "torch==$TORCH_VERSION+cpu" >"$cons.new"; else echo "torch==$TORCH_VERSION" >"$cons.new"; fi
  stamp="$(cat "$reqs.new" "$cons.new" | sha256sum | cut -c1-16)"
  mv "$reqs.new" "$reqs"; mv "$cons.new" "$cons"
  if [ "$(cat "$wheelhouse/.stamp" 2>/dev/null)" = "$stamp" ]; then
    say "wheelhouse $wheelhouse is current ($(ls "$wheelhouse"/*.whl | wc -l) wheels)"
    if [ "$variant" = cuda ]; then check_cuda_wheels; fi
    return
  fi
  say "filling the wheelhouse $wheelhouse"
  local t0=$SECONDS
  if [ "$variant" = cpu ]; then
    # The CPU build of torch: where pip finds it already (a local find-links), else PyTorch's CPU index.
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$wheelhouse" --find-links "$wheelhouse" "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || "$PYTHON" -m pip wheel --quiet --no-deps -w "$wheelhouse" --extra-index-url "$CPU_TORCH_INDEX" "torch==$TORCH_VERSION+cpu"
    "$PYTHON" -m pip wheel --quiet -w "$wheelhouse" --find-links "$wheelhouse" -c "$cons" -r "$reqs"
  else
    # PyPI's linux/amd64 torch is the CUDA build; no config files, so that no local CPU wheel (a find-links
    # of this machine's pip.conf) can stand in for it.
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="$wheelhouse" \
      "$PYTHON" -m pip wheel --quiet -w "$wheelhouse" -c "$cons" -r "$reqs"
    if ls "$wheelhouse"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
      say "the CUDA wheelhouse holds a CPU torch wheel; remove it from $wheelhouse"; exit 1
    fi
    check_cuda_wheels
  fi
  echo "$stamp" >"$wheelhouse/.stamp"
  say "wheelhouse filled in $((SECONDS - t0)) s: $(ls "$wheelhouse"/*.whl | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"
}

# Every wheel images/wheels-cuda.txt names (torch and the CUDA runtime it pins) is in the CUDA wheelhouse.
check_cuda_wheels() {
  local have want missing=()
  have="$(ls "$wheelhouse" | grep '\.whl$' | cut -d- -f1 | tr 'A-Z_' 'a-z-' | sort -u)"
  while read -r want; do
    want="${want%%==*}"
    grep -qx "$want" <<<"$have" || missing+=("$want")
  done < <(grep -v '^#' images/wheels-cuda.txt)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "the CUDA wheelhouse $wheelhouse lacks ${missing[*]} (images/wheels-cuda.txt); empty it and fill it again"
    exit 1
  fi
}

build_args=(--build-arg "INSTALL=online" --network host)
if [ "$offline" = 1 ]; then
  fill_wheelhouse
  [ "$wheels_only" = 1 ] && exit 0
  # Hard links (copies across file systems) into the build context; removed again however the build ends.
  trap 'find images/wheelhouse -maxdepth 1 -name "*.whl" -delete' EXIT
  find images/wheelhouse -maxdepth 1 -name "*.whl" -delete
  ln "$wheelhouse"/*.whl images/wheelhouse/ 2>/dev/null || cp "$wheelhouse"/*.whl images/wheelhouse/
  # --network none: the build proves that it needs nothing but the wheelhouse.
  build_args=(--build-arg "INSTALL=offline" --network none)
fi
[ -n "$base" ] && build_args+=(--build-arg "PYTHON_IMAGE=$base")

say "docker build -f $dockerfile -t $tag ${build_args[*]} ."
t0=$SECONDS
docker build -f "$dockerfile" -t "$tag" "${build_args[@]}" .
seconds=$((SECONDS - t0))
size="$(docker image inspect -f '{{.Size}}' "$tag")"
# The command every component runs, in the image as its own user, with no network.
docker run --rm --network none "$tag" polydistill --version >/dev/null
say "built $tag in ${seconds} s; runtime image $((size / 1000000)) MB ($size bytes)"
