//! The upstream SMTP client (work in progress).
