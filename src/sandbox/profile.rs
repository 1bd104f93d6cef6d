//! Provider profiles: what the sandbox reproduces of a real provider, as
//! data (STYLE.md section 7: a provider quirk is a row, not a branch). The
//! SMTP server and the authorization server each read their part of the
//! profile; nothing else in the sandbox asks which provider it plays.
//!
//! - `strict`: the RFCs at their tightest. 512-octet command lines (RFC
//!   5321 section 4.5.3.1.4), long RS256 JWTs, every RFC 7628 exchange. The
//!   default: the sandbox must be at least as strict as any real provider.
//! - `microsoft`: Exchange Online and Entra ID: Entra-size JWTs with `scp`
//!   or `roles`, Exchange's replies and limits.
//! - `google`: Gmail and Google's authorization server: opaque `ya29.`
//!   tokens that only introspection can check, Gmail's replies and limits.

use std::fmt;

/// Which provider the sandbox plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProfileName {
    #[default]
    Strict,
    Microsoft,
    Google,
}

impl ProfileName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Strict => "strict",
            ProfileName::Microsoft => "microsoft",
            ProfileName::Google => "google",
        }
    }

    /// The shape of the access tokens the authorization server issues.
    pub fn token_shape(self) -> TokenShape {
        match self {
            // Common identity servers' RS256 JWTs are about 800 characters;
            // 2,000 keeps every AUTH line with an initial response well
            // past 512 octets.
            ProfileName::Strict => TokenShape::Jwt { min_len: 2000 },
            ProfileName::Microsoft => TokenShape::Entra,
            ProfileName::Google => TokenShape::Opaque,
        }
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an access token looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenShape {
    /// The sandbox's own RS256 JWT (RFC 9068 claims), padded to at least
    /// `min_len` characters.
    Jwt { min_len: usize },
    /// An Entra ID access token: RS256 JWT of at least 1,500 characters
    /// with `aud`, `scp` (delegated) or `roles` (app-only), `upn`/`email`,
    /// `tid`, `oid` and the other claims Entra puts in.
    Entra,
    /// Google's opaque `ya29.` token: no structure, checked only by
    /// introspection.
    Opaque,
}
