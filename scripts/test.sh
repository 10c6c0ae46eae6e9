#!/usr/bin/env bash
# Run every test of the project.
#
#   1. make sure what the tests need is there: `redis-server` (the Redis
#      store's tests start one on a free loopback port) and a toolchain for
#      the Spin components (the rustup `wasm32-wasip2` target, or the Debian
#      fallback of scripts/install-wasm-toolchain.sh). As root on Debian this
#      installs what is missing; otherwise it says what to install.
#   2. build the Spin components (the end-to-end suite runs against them in
#      the Spin-faithful harness as well as against the native server);
#   3. `cargo test`: unit and property tests, the deterministic simulation
#      (1,200 seeds), KV conformance of every store, the client against a
#      real server, and the end-to-end suite against both hosts.
#
# Extra arguments are passed to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

can_install() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }

if ! command -v redis-server >/dev/null; then
    if can_install; then
        echo "test: installing redis-server"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
    else
        echo "test: redis-server is missing (Debian/Ubuntu: apt-get install redis-server)" >&2
        exit 1
    fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    if ! scripts/build-wasm.sh --check-toolchain >/dev/null 2>&1; then
        if can_install; then
            scripts/install-wasm-toolchain.sh
        else
            echo "test: no wasm32-wasip2 toolchain: run 'rustup target add wasm32-wasip2'," \
                "or scripts/install-wasm-toolchain.sh as root" >&2
            exit 1
        fi
    fi
fi

scripts/build-wasm.sh
cargo test "$@"
