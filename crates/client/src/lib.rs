//! edgesync-client (work in progress).
