//! edgesync-server (work in progress).
