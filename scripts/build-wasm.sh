#!/usr/bin/env bash
# Build the Spin components (edgesync-write, edgesync-read) for
# wasm32-wasip2 with the size-tuned `wasm-release` profile (Cargo.toml), into
# target/wasm32-wasip2/wasm-release/ where spin.toml expects
# them. Run from anywhere.
#
# Uses the rustup target when it is installed (`rustup target add
# wasm32-wasip2`). Otherwise falls back to Debian's Rust with -Z build-std
# (what it needs, and why, is in scripts/install-wasm-toolchain.sh); the
# fallback's environment is set for the cargo command only, so nothing leaks
# into native builds.
#
# Extra arguments are passed to cargo (e.g. --locked, -v).
# `--check-toolchain` only reports (exit status) whether a toolchain is there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

target=wasm32-wasip2
components=(edgesync-write edgesync-read)
max_bytes=$((1024 * 1024))

# Where `cargo install` (and so scripts/install-wasm-toolchain.sh) puts
# wasm-component-ld.
cargo_bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"

package_args=()
for c in "${components[@]}"; do package_args+=(-p "$c"); done

have_rustup_target() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$target"
}

# The fallback recipe's pieces, all of which must be present.
fallback_missing() {
    local missing=()
    [[ -x /usr/bin/cargo && -x /usr/bin/rustc ]] || missing+=("Debian rustc-web/cargo-web (/usr/bin/cargo, /usr/bin/rustc)")
    if [[ -x /usr/bin/rustc ]]; then
        local sysroot
        sysroot="$(/usr/bin/rustc --print sysroot 2>/dev/null || true)"
        [[ -d "$sysroot/lib/rustlib/src/rust/library" ]] || missing+=("rust-web-src (standard library source)")
    fi
    [[ -x "$cargo_bin_dir/wasm-component-ld" ]] || missing+=("wasm-component-ld in $cargo_bin_dir")
    [[ -x /usr/local/lib/wasm-ld-bin/wasm-ld ]] || missing+=("/usr/local/lib/wasm-ld-bin/wasm-ld (from lld-19)")
    [[ -f /usr/lib/wasm32-wasi/libc.a ]] || missing+=("wasi-libc (/usr/lib/wasm32-wasi/libc.a)")
    ((${#missing[@]} == 0)) || printf '  - %s\n' "${missing[@]}"
}

if [[ "${1:-}" == "--check-toolchain" ]]; then
    have_rustup_target || [[ -z "$(fallback_missing)" ]]
    exit
fi

if have_rustup_target; then
    echo "build-wasm: using the rustup target $target" >&2
    cargo build --profile wasm-release --target "$target" "${package_args[@]}" "$@"
else
    missing="$(fallback_missing)"
    if [[ -n "$missing" ]]; then
        cat >&2 <<EOF
build-wasm: no toolchain for $target.
Either install the rustup target:
    rustup target add $target
or, where rustup cannot download targets, install the fallback toolchain
(Debian, as root):
    scripts/install-wasm-toolchain.sh
Missing for the fallback:
$missing
EOF
        exit 1
    fi
    echo "build-wasm: no rustup $target; using Debian's Rust with -Z build-std" >&2
    # Debian's cargo/rustc must win over rustup's proxies, and wasm-component-ld
    # (rustc's linker for wasip2) must find wasm-ld. RUSTC_BOOTSTRAP unlocks
    # build-std on a stable compiler; -L finds wasi-libc's libc.a. Unsetting
    # RUSTUP_TOOLCHAIN/RUSTC/CARGO keeps a caller's rustup settings from
    # redirecting to the rustup toolchain, which has no wasm std.
    env -u RUSTUP_TOOLCHAIN -u RUSTC -u CARGO -u RUSTC_WRAPPER \
        PATH="/usr/bin:$cargo_bin_dir:/usr/local/lib/wasm-ld-bin:$PATH" \
        RUSTC_BOOTSTRAP=1 \
        CARGO_UNSTABLE_BUILD_STD=std,panic_abort \
        RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
        /usr/bin/cargo build --profile wasm-release --target "$target" "${package_args[@]}" "$@"
fi

# Where cargo put the artefacts (honours CARGO_TARGET_DIR like cargo does).
target_dir="${CARGO_TARGET_DIR:-$root/target}"
status=0
echo
for c in "${components[@]}"; do
    wasm="$target_dir/$target/wasm-release/${c//-/_}.wasm"
    if [[ ! -f "$wasm" ]]; then
        echo "build-wasm: $wasm was not produced" >&2
        status=1
        continue
    fi
    bytes=$(stat -c %s "$wasm")
    printf '%s  %d bytes (%d KiB)\n' "${wasm#"$root"/}" "$bytes" $(((bytes + 1023) / 1024))
    if ((bytes >= max_bytes)); then
        echo "build-wasm: $c is $bytes bytes, over the 1 MiB budget" >&2
        status=1
    fi
done
exit "$status"
