//! edgesync-sim (work in progress).
