//! edgesync-read Spin component (work in progress).
