#!/usr/bin/env bash
# Lays out what an image variant adds to the Debian base, under OUT/<variant>/, as it will sit in
# the image: both routes use it (the Dockerfile's build stages, and `make docker-image` from what
# was built on the host), so the two cannot drift apart.
#
#   gather.sh cpu  OUT BIN TORCH_SITE DATA_DIR INIT
#       /opt/smtrain/train            the binary (debug info stripped); its run path is $ORIGIN/lib
#       /opt/smtrain/smtrain-init     INIT, the entry point in front of it: statically linked, or
#                                     refused (see src/bin/smtrain-init.rs)
#       /opt/smtrain/lib/             the libraries it loads, found by following DT_NEEDED from the
#                                     binary through TORCH_SITE (torch/lib, nvidia/*/lib)
#       /usr/local/bin/train          a link to it, for `--entrypoint train` and PATH
#       /usr/share/datasets/fashion-mnist/   the real data set, where the binary looks by default
#   gather.sh cuda OUT TORCH_SITE CPU_OUT
#       /opt/smtrain/lib/             libtorch_cuda.so, what it loads (DT_NEEDED) and what the
#                                     CUDA libraries open at run time (cuDNN's engine libraries,
#                                     NVRTC's builtins), minus what the cpu variant already has
#       /etc/ld.so.conf.d/smtrain.conf   the lib folder, for libraries that dlopen by bare name
#
# Only libraries found inside TORCH_SITE are copied; everything else (glibc, libstdc++, libgcc_s)
# must come from the base image, which the image tests check with ldd; the driver's libcuda and
# libnvidia-ml come from the host. libtorch's own libraries
# are stripped of their symbol tables (`--strip-unneeded`: dynamic symbols stay); NVIDIA's are
# copied as shipped.
set -euo pipefail

die() { echo "gather.sh: $*" >&2; exit 1; }

# The folders a wheel-installed libtorch finds its libraries in (its RPATH, made absolute).
lib_dirs() {
  local site=$1 d
  for d in "$site/torch/lib" "$site"/nvidia/*/lib; do
    [[ -d $d ]] && echo "$d"
  done
}

# Prints the absolute path of every library that FILE needs, directly or not, and that lives in
# one of the folders given; fails on a needed library found nowhere (neither there nor, by its
# name, in the system's linker cache, which is what the base image provides).
closure() {
  local -a dirs=() queue=() seen=()
  local f n d found system
  # The linker cache's names, read once (grep -q on a pipe would SIGPIPE ldconfig under pipefail).
  system=$(ldconfig -p)
  while [[ $1 != -- ]]; do dirs+=("$1"); shift; done
  shift
  queue=("$@")
  declare -A done_=()
  while ((${#queue[@]})); do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    for n in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      [[ -n ${done_[$n]:-} ]] && continue
      done_[$n]=1
      # The NVIDIA driver's own libraries come from the host (the NVIDIA container runtime
      # mounts them); an image must never carry them.
      case $n in libcuda.so.* | libnvidia-ml.so.*) continue ;; esac
      found=
      for d in "${dirs[@]}"; do
        if [[ -e $d/$n ]]; then found=$d/$n; break; fi
      done
      if [[ -n $found ]]; then
        seen+=("$found")
        queue+=("$found")
      elif [[ $system != *$'\t'"$n "* ]]; then
        die "$f needs $n, which is neither in ${dirs[*]} nor a system library"
      fi
    done
  done
  if ((${#seen[@]})); then printf "%s\n" "${seen[@]}" | sort -u; fi
}

copy_lib() {
  local src=$1 dst_dir=$2 name
  name=$(basename "$src")
  cp -L "$src" "$dst_dir/$name"
  chmod 0755 "$dst_dir/$name"
  case $name in
    libtorch*.so | libc10*.so | libcaffe2*.so) strip --strip-unneeded "$dst_dir/$name" ;;
  esac
}

variant=${1:?usage: gather.sh cpu|cuda ...}
case $variant in
  cpu)
    out=${2:?OUT} bin=${3:?BIN} site=${4:?TORCH_SITE} data=${5:?DATA_DIR} init=${6:?INIT}
    [[ -x $bin ]] || die "no binary at $bin"
    root=$out/cpu
    rm -rf "$root"
    mkdir -p "$root/opt/smtrain/lib" "$root/usr/local/bin" "$root/usr/share/datasets/fashion-mnist"
    mapfile -t dirs < <(lib_dirs "$site")
    found=$(closure "${dirs[@]}" -- "$bin") || exit 1
    mapfile -t libs <<<"$found"
    [[ -n $found ]] || die "$bin needs no library from $site: was it built against it?"
    for l in "${libs[@]}"; do copy_lib "$l" "$root/opt/smtrain/lib"; done
    [[ -x $init ]] || die "no entry point at $init"
    # A loader would run before the entry point blocks the stop signals, and PID 1 drops a
    # signal it has no handler for.
    if readelf -lW "$init" | grep -q INTERP; then
      die "$init is linked dynamically; link it statically (cargo rustc --bin smtrain-init -- -C target-feature=+crt-static -C relocation-model=static)"
    fi
    for b in "$bin:train" "$init:smtrain-init"; do
      cp "${b%%:*}" "$root/opt/smtrain/${b##*:}"
      strip --strip-debug "$root/opt/smtrain/${b##*:}"
      chmod 0755 "$root/opt/smtrain/${b##*:}"
    done
    ln -s /opt/smtrain/train "$root/usr/local/bin/train"
    for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
             t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
      [[ -s $data/$f ]] || die "no $data/$f (Debian package dataset-fashion-mnist)"
      cp "$data/$f" "$root/usr/share/datasets/fashion-mnist/$f"
      chmod 0644 "$root/usr/share/datasets/fashion-mnist/$f"
    done
    ;;
  cuda)
    out=${2:?OUT} site=${3:?TORCH_SITE} cpu_out=${4:?CPU_OUT}
    root=$out/cuda
    rm -rf "$root"
    mkdir -p "$root/opt/smtrain/lib" "$root/etc/ld.so.conf.d"
    mapfile -t dirs < <(lib_dirs "$site")
    tl=$site/torch/lib
    [[ -e $tl/libtorch_cuda.so ]] || die "no $tl/libtorch_cuda.so: is $site the CUDA wheel set?"
    # libtorch_cuda.so is what the binary opens; libtorch.so and libtorch_cuda_linalg.so and
    # libcaffe2_nvrtc.so are what libtorch opens in turn on a GPU (the last two lazily).
    roots=("$tl/libtorch_cuda.so" "$tl/libtorch.so" "$tl/libtorch_cuda_linalg.so" "$tl/libcaffe2_nvrtc.so")
    # Opened at run time by bare name: cuDNN's engine libraries, NVRTC's builtins.
    for d in "${dirs[@]}"; do
      for f in "$d"/libcudnn*.so.* "$d"/libnvrtc-builtins*.so*; do
        [[ -e $f ]] && roots+=("$f")
      done
    done
    found=$(closure "${dirs[@]}" -- "${roots[@]}") || exit 1
    mapfile -t libs < <(printf '%s\n' "${roots[@]}" $found | sort -u)
    for l in "${libs[@]}"; do
      name=$(basename "$l")
      [[ -e $cpu_out/opt/smtrain/lib/$name ]] && continue
      copy_lib "$l" "$root/opt/smtrain/lib"
    done
    echo /opt/smtrain/lib > "$root/etc/ld.so.conf.d/smtrain.conf"
    ;;
  *) die "unknown variant $variant (cpu or cuda)" ;;
esac
du -sh "$root"
