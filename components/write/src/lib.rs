//! edgesync-write Spin component (work in progress).
