//! Sandbox inbox (work in progress).
