#!/usr/bin/env bash
# Runs `docker build ARGS...` with BuildKit, which builds only the stages a target needs (the
# classic builder runs every stage above it, including build stages that need a registry):
# `docker buildx build --load` where buildx is installed, else a docker client older than 23,
# which has BuildKit built in (Debian bookworm's docker.io installs one as /usr/bin/docker).
#   buildkit.sh --check   exits 0 when such a client exists, and says which
set -euo pipefail

docker=${DOCKER:-docker}
cmd=()
if "$docker" buildx version >/dev/null 2>&1; then
  cmd=("$docker" buildx build --load)
else
  for c in "$docker" /usr/bin/docker; do
    v=$("$c" version --format '{{.Client.Version}}' 2>/dev/null) || continue
    case $v in
      1[789].* | 2[0-2].*) cmd=(env DOCKER_BUILDKIT=1 "$c" build); break ;;
    esac
  done
fi
if ((${#cmd[@]} == 0)); then
  echo "buildkit.sh: no BuildKit-capable docker client: install buildx (Debian: docker-buildx)," \
    "or use a docker client older than 23" >&2
  exit 1
fi
if [[ ${1:-} == --check ]]; then
  echo "BuildKit: ${cmd[*]}"
  exit 0
fi
exec "${cmd[@]}" "$@"
