//! The IP allow-list of a plaintext listener: CIDR blocks such as
//! `192.168.10.0/24` or `fd00::/8`. Parsed here rather than with a crate:
//! it is twenty lines of prefix arithmetic and nothing else needs CIDRs.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not an IP address or CIDR block; write it like \"192.168.10.0/24\", \"10.0.0.7\" or \"fd00::/8\""
)]
pub struct CidrError {
    pub text: String,
}

/// One CIDR block. A bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let error = || CidrError {
            text: text.to_string(),
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| error())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| error())?,
            None => width,
        };
        if prefix > width {
            return Err(error());
        }
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// Whether every address of `other` is in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.network)
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = width - u32::from(prefix);
    (a >> shift) == (b >> shift)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The addresses a listener serves; empty means everyone.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, CidrError> {
        entries
            .iter()
            .map(|entry| Cidr::parse(entry.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(AllowList)
    }

    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }

    /// A block that admits every address of its family (`0.0.0.0/0`,
    /// `::/0`): an allow-list holding one restricts nothing.
    pub fn admits_everyone(&self) -> Option<&Cidr> {
        self.0.iter().find(|cidr| cidr.prefix == 0)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// Whether `ip` is in one of the blocks (an empty list holds nothing).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The blocks of `other` that this list does not wholly allow.
    pub fn uncovered<'a>(&self, other: &'a AllowList) -> Vec<&'a Cidr> {
        if self.0.is_empty() {
            return Vec::new();
        }
        other
            .0
            .iter()
            .filter(|block| !self.0.iter().any(|mine| mine.covers(block)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn v4_blocks() {
        let lan = Cidr::parse("192.168.10.0/24").expect("cidr");
        assert!(lan.contains(ip("192.168.10.77")));
        assert!(!lan.contains(ip("192.168.11.1")));
        assert!(lan.contains(ip("::ffff:192.168.10.5")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("any")
                .contains(ip("8.8.8.8"))
        );
        let single = Cidr::parse("10.0.0.7").expect("single");
        assert!(single.contains(ip("10.0.0.7")));
        assert!(!single.contains(ip("10.0.0.8")));
    }

    #[test]
    fn v6_blocks() {
        let ula = Cidr::parse("fd00::/8").expect("cidr");
        assert!(ula.contains(ip("fd12:3456::1")));
        assert!(!ula.contains(ip("fe80::1")));
        assert!(!ula.contains(ip("10.0.0.1")));
    }

    #[test]
    fn bad_entries_say_how_to_write_them() {
        for bad in ["192.168.10.0/33", "lan", "10.0.0.0/x", "::/129"] {
            let err = Cidr::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("192.168.10.0/24"), "{err}");
        }
    }

    #[test]
    fn blocks_cover_smaller_blocks_of_the_same_family() {
        let lan = AllowList::parse(&["192.168.10.0/24", "fd00::/8"]).expect("lan");
        let printers = AllowList::parse(&["192.168.10.0/28", "192.168.10.200", "fd00:1::/32"])
            .expect("printers");
        assert!(lan.uncovered(&printers).is_empty());
        let wider = AllowList::parse(&["192.168.0.0/16", "10.0.0.1"]).expect("wider");
        let left: Vec<String> = lan
            .uncovered(&wider)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(left, ["192.168.0.0/16", "10.0.0.1/32"]);
        assert!(!AllowList::default().holds(ip("10.0.0.1")));
    }

    #[test]
    fn list() {
        let list = AllowList::parse(&["127.0.0.1", "10.0.0.0/8"]).expect("list");
        assert!(list.is_restricted());
        assert!(list.allows(ip("10.1.2.3")));
        assert!(!list.allows(ip("192.168.1.1")));
    }
}
