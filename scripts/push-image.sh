#!/usr/bin/env bash
# Push the built project images to your registry and record them by digest, so that the compiled pipeline
# names exactly what was pushed.
#
#   bash scripts/push-image.sh REGISTRY            # e.g. registry.example.com/team or 127.0.0.1:5000
#   set -a; . images/pushed.env; set +a            # POLYDISTILL_IMAGE(_CUDA)=REGISTRY/polydistill@sha256:...
#   polydistill compile --out compiled             # (or submit / schedule): every task names those digests
#
# Each local image (the tags in src/polydistill_kfp/components/IMAGE and src/polydistill_kfp/components/IMAGE_CUDA, as scripts/build-image.sh tags
# them) is tagged REGISTRY/<its last name component>:<its tag> and pushed; a variant that is not built here is
# left out with a note (the CUDA one is optional). The digest is the one the registry answered for the push
# (the image's RepoDigests entry for REGISTRY), never a local image id.
#
# Options:
#   --from-cpu TAG    push this local image as the CPU variant (default: src/polydistill_kfp/components/IMAGE's tag)
#   --from-cuda TAG   the same for the CUDA variant (default: src/polydistill_kfp/components/IMAGE_CUDA's tag)
#   --cpu-only        push only the CPU variant
#   --record FILE     where to write the references (default images/pushed.env; written only when every push
#                     succeeded, replacing the old file in one step)
#
# Log in first for a registry that needs it (docker login REGISTRY). The engine is the one DOCKER_HOST (or the
# default socket) points at (eval "$(bash scripts/docker-engine.sh env)" for the project's own).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "push-image: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

registry="" from_cpu="" from_cuda="" cpu_only=0 record="images/pushed.env"
while [ $# -gt 0 ]; do
  case "$1" in
    --from-cpu) from_cpu="${2:?--from-cpu needs a tag}"; shift ;;
    --from-cuda) from_cuda="${2:?--from-cuda needs a tag}"; shift ;;
    --cpu-only) cpu_only=1 ;;
    --record) record="${2:?--record needs a file}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) say "unknown option $1 (see --help)"; exit 2 ;;
    *) [ -z "$registry" ] || { say "one REGISTRY only, got '$registry' and '$1'"; exit 2; }; registry="$1" ;;
  esac
  shift
done
[ -n "$registry" ] || { say "usage: $0 REGISTRY [options] (see --help)"; exit 2; }
registry="${registry%/}"
# HOST[:PORT][/path], lower-case path: what a reference may start with (docker would reject the rest later).
if ! [[ "$registry" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]]; then
  say "REGISTRY '$registry' is not HOST[:PORT][/PATH] (e.g. 127.0.0.1:5000 or registry.example.com/team)"; exit 2
fi
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || { say "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); see scripts/docker-engine.sh"; exit 1; }

# push VARIANT SOURCE_TAG -> prints REGISTRY/name@sha256:... on stdout
push() {
  local variant="$1" source="$2" name tag target digest
  name="${source%%@*}"; tag="${name##*:}"
  [ "$tag" != "$name" ] && [[ "$tag" != */* ]] || tag=latest
  name="${name%:"$tag"}"; name="${name##*/}"
  target="$registry/$name:$tag"
  docker tag "$source" "$target"
  say "pushing $source as $target"
  docker push --quiet "$target" >&2
  # RepoDigests lists one REPO@sha256 per repository the image was pushed to (or pulled from).
  digest="$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$target" \
    | grep -F "$registry/$name@sha256:" | head -n 1)"
  [ -n "$digest" ] || { say "the registry returned no digest for $target"; exit 1; }
  say "$variant: $digest"
  echo "$digest"
}

lines=()
cpu_source="${from_cpu:-$(cat src/polydistill_kfp/components/IMAGE)}"
docker image inspect "$cpu_source" >/dev/null 2>&1 \
  || { say "$cpu_source is not built here: bash scripts/build-image.sh --offline (or --from-cpu TAG)"; exit 1; }
lines+=("POLYDISTILL_IMAGE=$(push cpu "$cpu_source")")
if [ "$cpu_only" = 0 ]; then
  cuda_source="${from_cuda:-$(cat src/polydistill_kfp/components/IMAGE_CUDA)}"
  if docker image inspect "$cuda_source" >/dev/null 2>&1; then
    lines+=("POLYDISTILL_IMAGE_CUDA=$(push cuda "$cuda_source")")
  elif [ -n "$from_cuda" ]; then
    say "$cuda_source is not built here"; exit 1
  else
    say "$cuda_source is not built here: the CUDA variant is left out (bash scripts/build-image.sh --offline --cuda)"
  fi
fi

mkdir -p "$(dirname "$record")"
printf '%s\n' "# written by scripts/push-image.sh $registry on $(date -u +%Y-%m-%dT%H:%M:%SZ)" "${lines[@]}" >"$record.tmp"
mv "$record.tmp" "$record"
say "recorded in $record; compile against it: set -a; . $record; set +a; polydistill compile --out compiled"
