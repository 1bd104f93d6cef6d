//! The sandbox authorization server (work in progress).
