//! JWT signing and JWKS (work in progress).
