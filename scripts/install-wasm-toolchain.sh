#!/usr/bin/env bash
# Install the fallback toolchain scripts/build-wasm.sh uses to build the Spin
# components for wasm32-wasip2 where `rustup target add wasm32-wasip2` is not
# possible (Debian bookworm: machines whose rustup cannot download targets):
#
#   - rustc-web, cargo-web: Debian's Rust (1.96) at /usr/bin/{rustc,cargo}
#   - rust-web-src: its standard library source, for -Z build-std
#   - lld-19: wasm-ld; wasi-libc: libc.a for wasm32
#   - wasm-component-ld (cargo install): the linker rustc uses for wasip2
#   - /usr/local/lib/wasm-ld-bin/wasm-ld -> lld-19's wasm-ld
#
# Idempotent: skips whatever is already in place. Needs root (apt, /usr/local).
# Does not touch rustup or its toolchains.
set -euo pipefail

packages=(rustc-web cargo-web rust-web-src lld-19 wasi-libc)
wasm_ld=/usr/lib/llvm-19/bin/wasm-ld
link_dir=/usr/local/lib/wasm-ld-bin

if [[ $(id -u) -ne 0 ]]; then
    echo "install-wasm-toolchain: run as root (it installs apt packages and writes $link_dir)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    echo "install-wasm-toolchain: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install-wasm-toolchain: apt packages already installed"
fi

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
if [[ -x "$cargo_home/bin/wasm-component-ld" ]]; then
    echo "install-wasm-toolchain: wasm-component-ld already installed"
else
    # Any cargo will do for a native tool; prefer rustup's if present.
    cargo_bin="$(command -v cargo || echo /usr/bin/cargo)"
    echo "install-wasm-toolchain: cargo install wasm-component-ld (with $cargo_bin)"
    "$cargo_bin" install wasm-component-ld --locked --root "$cargo_home"
fi

if [[ ! -x "$wasm_ld" ]]; then
    echo "install-wasm-toolchain: $wasm_ld not found although lld-19 is installed" >&2
    exit 1
fi
if [[ "$(readlink "$link_dir/wasm-ld" 2>/dev/null)" == "$wasm_ld" ]]; then
    echo "install-wasm-toolchain: $link_dir/wasm-ld already links to $wasm_ld"
else
    mkdir -p "$link_dir"
    ln -sfn "$wasm_ld" "$link_dir/wasm-ld"
    echo "install-wasm-toolchain: linked $link_dir/wasm-ld -> $wasm_ld"
fi

echo "install-wasm-toolchain: done; build with scripts/build-wasm.sh"
