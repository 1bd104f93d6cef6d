//! Bearer-token validation (work in progress).
