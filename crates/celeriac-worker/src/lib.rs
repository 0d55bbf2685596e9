//! The celeriac worker (in progress).
