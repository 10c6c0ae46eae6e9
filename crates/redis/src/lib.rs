//! edgesync-redis (work in progress).
