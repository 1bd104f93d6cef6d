//! The store (work in progress).
