#!/usr/bin/env bash
# Makes a local stand-in for the Dockerfile's RUST_IMAGE (rust:1.95-bookworm) where no registry
# can be reached: the debootstrapped base, Debian's C/C++ compilers (torch-sys builds a C++
# wrapper) and this host's Rust toolchain. With it, `make docker-image-from-source` builds the
# whole Dockerfile, build stage included, as a user with network access would.
#
# The stand-in also trusts the extra CA certificates this host trusts
# (/usr/local/share/ca-certificates): where registries are reached through an HTTPS-inspecting
# proxy, pip and cargo inside the build fail without them. They stay in this builder image; the
# runtime image takes only the gathered files.
#
#   rust-standin.sh IMAGE BASE_IMAGE
set -euo pipefail

image=${1:?usage: rust-standin.sh IMAGE BASE_IMAGE}
base=${2:?usage: rust-standin.sh IMAGE BASE_IMAGE}
docker=${DOCKER:-docker}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists; not rebuilding"
  exit 0
fi
sysroot=$(rustc --print sysroot)
version=$(rustc --version)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      ca-certificates gcc g++ libc6-dev make \\
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN cargo --version && rustc --version
LABEL smtrain.standin="rust image from the host's $version"
DOCKERFILE
mkdir "$ctx/ca"
cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
# The context: the Dockerfile, the CA certificates and the toolchain (without its HTML docs).
tar -c -C "$ctx" Dockerfile ca \
    -C "$sysroot" --exclude=./share/doc --transform 's,^\./,toolchain/,' . |
  "$docker" build -t "$image" -
