//! Sandbox SMTP server (work in progress).
