//! Sandbox certificates (work in progress).
