//! edgesync-kv-wasi (work in progress).
