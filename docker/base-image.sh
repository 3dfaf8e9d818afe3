#!/usr/bin/env bash
# Builds a Debian bookworm base image without a registry: debootstrap (minbase) from Debian's
# mirror, trimmed the way the official `debian:bookworm-slim` is (no docs, man pages, locales or
# apt lists; dpkg told to keep it so), then `docker import`. Used where `docker pull` cannot work;
# with a registry, `debian:bookworm-slim` is the same thing.
#
#   docker/base-image.sh IMAGE[:TAG] [MIRROR]
set -euo pipefail

image=${1:?usage: base-image.sh IMAGE[:TAG] [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
suite=bookworm

docker=${DOCKER:-docker}
if "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image exists; not rebuilding"
  exit 0
fi

root=$(mktemp -d /var/tmp/smtrain-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --arch=amd64 "$suite" "$root" "$mirror"

# As debian:bookworm-slim (debuerreotype's slimify): keep dpkg from installing docs and locales.
cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
CFG
cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"

find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{groff,info,linda,lintian,man}/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
# The host's resolver and hostname are the engine's business at run time.
: > "$root/etc/resolv.conf"
echo localhost > "$root/etc/hostname"
epoch=$(date -u +%s)

tar --numeric-owner --xattrs -C "$root" -c . |
  "$docker" import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL smtrain.base=\"debootstrap --variant=minbase $suite, $(date -u -d "@$epoch" +%Y-%m-%d)\"" \
    -m "debootstrap --variant=minbase $suite from $mirror" \
    - "$image"
"$docker" image inspect --format '{{.Id}} {{.Size}}' "$image"
