//! edgesync-spin-harness (work in progress).
