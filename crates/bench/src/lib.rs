//! edgesync-bench (work in progress).
