#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test llmsim, and nothing else.
# Idempotent: when everything is present it only checks, in a few seconds.
# Every version is pinned so that a newer nightly or bpf-linker cannot break the build silently.
# With --bench it also installs the load generators and the reference server that
# `cargo xtask bench replay` drives (wrk, nginx and h2load from Debian, oha from crates.io,
# mitmproxy from PyPI in its own virtualenv).
set -euo pipefail

BENCH=false
for arg in "$@"; do
    case $arg in
        --bench) BENCH=true ;;
        *) printf 'usage: %s [--bench]\n' "$0" >&2; exit 2 ;;
    esac
done

STABLE_TOOLCHAIN=1.99.1            # aya 0.16 needs rustc >= 1.98
# The eBPF nightly is pinned in one place, ebpf/rust-toolchain.toml, which kernel/build.rs reads too.
EBPF_TOOLCHAIN_FILE=ebpf/rust-toolchain.toml
BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
APT_PACKAGES=(llvm-${LLVM_MAJOR}-dev libpolly-${LLVM_MAJOR}-dev libzstd-dev zlib1g-dev
              iproute2 curl openssl ca-certificates chromium)
# HTTP/2 tests and the h2 replay benchmark: nghttpx fronts the fake provider with TLS
# (ALPN h2), h2load opens many concurrent streams on one connection.
APT_PACKAGES+=(nghttp2-proxy nghttp2-client)
# replayd's allocator: tikv-jemalloc-sys builds jemalloc from source with make and cc.
APT_PACKAGES+=(make gcc)
# Go crypto/tls capture tests: the test builds a standard-library Go client (Go 1.19 on
# bookworm).
APT_PACKAGES+=(golang-go)
# Kernel matrix (`cargo xtask kernels`): QEMU with KVM boots Debian's kernels through
# virtme-ng (PyPI), which shares the host's root filesystem with the guest over 9p;
# busybox gives virtme-ng's initramfs its shell tools, kmod (depmod, modprobe) the
# Debian kernels' modules (9p, overlayfs, virtio).
APT_PACKAGES+=(qemu-system-x86 busybox-static kmod)
# `replayd trust install` tests: p11-kit's `trust` is Arch's and Fedora's trust-store tool.
APT_PACKAGES+=(p11-kit)
# JVM replay trust tests: a Java HttpClient program run by the single-file source
# launcher; keytool (in the JDK) writes the truststore replayd hands the JVM.
APT_PACKAGES+=(default-jdk-headless)
# Release artifacts (`cargo xtask dist`): the static binaries are built for musl, whose C
# compiler wrapper (musl-gcc) builds ring's and zstd's C parts; dpkg-deb packs the .deb.
DIST_APT_PACKAGES=(musl-tools dpkg)
DIST_TARGET=x86_64-unknown-linux-musl
PYTHON_PACKAGES=(openai==3.57.0 anthropic==2.14.0 google-genai==3.6.1)
# HTTP/2 tests: httpx (and the SDKs through it) speaks h2 once h2 is installed; grpcio is
# a real gRPC client for replayed trailers.
PYTHON_PACKAGES+=(httpx==0.28.1 h2==4.4.1 grpcio==1.85.1)
# Plain-HTTP tests: the official Ollama client (NDJSON streaming from /api/chat).
PYTHON_PACKAGES+=(ollama==0.6.3)
# Kernel matrix: virtme-ng boots a kernel over the host's root filesystem.
PYTHON_PACKAGES+=(virtme-ng==1.42)
# `llmsim-agent export --locust` test: the exported locustfile run by Locust's own
# distributed master and workers.
PYTHON_PACKAGES+=(locust==2.47.0)
# `cargo xtask fuzz`: libFuzzer targets under fuzz/, built with the eBPF nightly above.
CARGO_FUZZ_VERSION=0.13.2
BENCH_APT_PACKAGES=(wrk nginx)
# oha sends requests at a fixed rate and measures latency from each request's scheduled
# start (--latency-correction), which wrk cannot; its JSON report's layout is per version.
OHA_VERSION=1.16.0
# `cargo xtask bench replay --only mitmproxy`: mitmproxy's server replay. Its h2 pin
# conflicts with the SDKs' above, so it lives in its own virtualenv, where the bench looks.
MITMPROXY_VERSION=11.0.2
MITMPROXY_VENV=${HOME}/.local/share/llmsim/mitmproxy-${MITMPROXY_VERSION}

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "installing Debian packages needs root: run this script with sudo"
        exit 2
    fi
}

install_apt_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    need_root
    log "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_toolchain() {
    local toolchain=$1; shift
    local installed
    installed=$(rustup toolchain list)
    if ! grep -q "^${toolchain}-" <<<"$installed"; then
        log "installing Rust toolchain $toolchain"
        rustup toolchain install "$toolchain" --profile minimal --no-self-update "$@"
        return
    fi
    # Components may be missing from a toolchain installed by hand.
    local components=()
    while [ $# -gt 0 ]; do
        [ "$1" = --component ] && { components+=("$2"); shift; }
        shift
    done
    local present
    present=$(rustup component list --toolchain "$toolchain" --installed)
    for c in "${components[@]}"; do
        grep -q "^$c" <<<"$present" || rustup component add --toolchain "$toolchain" "$c"
    done
}

install_target() {
    local toolchain=$1 target=$2
    rustup target list --toolchain "$toolchain" --installed | grep -qx "$target" && return
    log "installing the Rust standard library for $target ($toolchain)"
    rustup target add --toolchain "$toolchain" "$target"
}

install_bpf_linker() {
    if command -v bpf-linker >/dev/null && [ "$(bpf-linker --version 2>/dev/null | awk '{print $2}')" = "$BPF_LINKER_VERSION" ]; then
        return
    fi
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR"
    LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} LLVM_SYS_221_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} \
        cargo +"$STABLE_TOOLCHAIN" install bpf-linker --version "=$BPF_LINKER_VERSION" --locked \
        --no-default-features --features llvm-${LLVM_MAJOR}
}

install_oha() {
    if command -v oha >/dev/null && [ "$(oha --version 2>/dev/null | awk '{print $2}')" = "$OHA_VERSION" ]; then
        return
    fi
    log "building oha $OHA_VERSION"
    cargo +"$STABLE_TOOLCHAIN" install oha --version "=$OHA_VERSION" --locked
}

install_mitmproxy() {
    [ -x "$MITMPROXY_VENV/bin/mitmdump" ] && return
    log "installing mitmproxy $MITMPROXY_VERSION into $MITMPROXY_VENV"
    python3 -m venv "$MITMPROXY_VENV"
    "$MITMPROXY_VENV/bin/python" -m pip install -q --disable-pip-version-check "mitmproxy==$MITMPROXY_VERSION"
}

install_cargo_fuzz() {
    if command -v cargo-fuzz >/dev/null && [ "$(cargo-fuzz --version 2>/dev/null | awk '{print $2}')" = "$CARGO_FUZZ_VERSION" ]; then
        return
    fi
    log "building cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo +"$STABLE_TOOLCHAIN" install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
}

install_python_packages() {
    if python3 - "${PYTHON_PACKAGES[@]}" <<'PY' 2>/dev/null; then return; fi
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
    log "installing Python SDKs: ${PYTHON_PACKAGES[*]}"
    python3 -m pip install -q --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
}

install_node_clients() {
    local dir=tests/clients
    # npm ci wipes node_modules, so it runs only when the lock file changed
    # since the last install (a copy of it is kept as a stamp).
    if cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"; then
        return
    fi
    log "installing the Node test clients (npm ci)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
}

cd "$(dirname "$0")/.."
EBPF_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"$/\1/p' "$EBPF_TOOLCHAIN_FILE")
if [ -z "$EBPF_TOOLCHAIN" ]; then
    log "no toolchain channel in $EBPF_TOOLCHAIN_FILE"
    exit 1
fi
APT_PACKAGES+=("${DIST_APT_PACKAGES[@]}")
if $BENCH; then
    APT_PACKAGES+=("${BENCH_APT_PACKAGES[@]}")
fi
install_apt_packages
install_toolchain "$STABLE_TOOLCHAIN" --component clippy --component rustfmt
install_target "$STABLE_TOOLCHAIN" "$DIST_TARGET"
install_toolchain "$EBPF_TOOLCHAIN" --component rust-src
install_bpf_linker
install_cargo_fuzz
install_python_packages
install_node_clients
if $BENCH; then
    install_oha
    install_mitmproxy
fi
log "ready"
