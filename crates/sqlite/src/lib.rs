//! edgesync-sqlite (work in progress).
