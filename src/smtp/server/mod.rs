//! The SMTP server session (work in progress).
