//! Addresses and CIDRs as the kernel maps key them: the one place IP addresses are converted to and from the
//! 16-byte form of [`proxy_common::Addr`] (IPv4 as `::ffff:a.b.c.d`).

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use proxy_common::{Addr, V4_MAPPED_PREFIX_BITS, v4_mapped};

use crate::Error;

/// Converts an address to the kernel's key form.
#[must_use]
pub fn to_key(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Converts a kernel key back to an address; IPv4-mapped keys become IPv4 addresses.
#[must_use]
pub fn from_key(key: Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Folds an IPv4-mapped IPv6 address (as a dual-stack socket reports an IPv4 peer) to IPv4.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    from_key(to_key(ip))
}

/// Parses an address given on the command line or in a config file.
pub fn parse_addr(input: &str) -> Result<IpAddr, Error> {
    IpAddr::from_str(input.trim())
        .map(canonical)
        .map_err(|_| Error::InvalidAddress {
            input: input.to_owned(),
        })
}

/// A CIDR block, normalised (host bits cleared), as stored in the allowlist and blocklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// The LPM-trie key: prefix length in the 16-byte form, and the masked address.
    #[must_use]
    pub fn key(self) -> (u32, Addr) {
        match self.0 {
            IpNet::V4(n) => (
                V4_MAPPED_PREFIX_BITS + u32::from(n.prefix_len()),
                v4_mapped(n.network().octets()),
            ),
            IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
        }
    }

    /// Rebuilds a CIDR from an LPM-trie key.
    #[must_use]
    pub fn from_key(prefix_len: u32, key: Addr) -> Option<Self> {
        let net = match from_key(key) {
            IpAddr::V4(v4) if prefix_len >= V4_MAPPED_PREFIX_BITS => IpNet::new(
                IpAddr::V4(v4),
                u8::try_from(prefix_len - V4_MAPPED_PREFIX_BITS).ok()?,
            )
            .ok()?,
            ip => IpNet::new(IpAddr::V6(to_v6(ip)), u8::try_from(prefix_len).ok()?).ok()?,
        };
        Some(Self(net.trunc()))
    }

    #[must_use]
    pub fn contains(self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }

    #[must_use]
    pub fn net(self) -> IpNet {
        self.0
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl From<IpAddr> for Cidr {
    /// The single-host block of an address (`/32` or `/128`).
    fn from(ip: IpAddr) -> Self {
        Self(IpNet::from(canonical(ip)))
    }
}

impl FromStr for Cidr {
    type Err = Error;

    /// Accepts `ADDR/PREFIX`, or a bare address as a single-host block (`/32` or `/128`).
    fn from_str(input: &str) -> Result<Self, Error> {
        let s = input.trim();
        let invalid = || Error::InvalidCidr {
            input: input.to_owned(),
        };
        let net = if s.contains('/') {
            IpNet::from_str(s).map_err(|_| invalid())?
        } else {
            IpNet::from(IpAddr::from_str(s).map_err(|_| invalid())?)
        };
        // An IPv4-mapped IPv6 block is the IPv4 block it names.
        let net = match net {
            IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).map_err(|_| invalid())?,
                None => net,
            },
            _ => net,
        };
        Ok(Self(net.trunc()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_through_the_key() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let key = to_key(ip);
        assert_eq!(&key[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(from_key(key), ip);
    }

    #[test]
    fn v6_round_trips_through_the_key() {
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(from_key(to_key(ip)), ip);
    }

    #[test]
    fn mapped_addresses_fold_to_v4() {
        assert_eq!(
            parse_addr("::ffff:192.0.2.1").unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn cidr_keys_offset_v4_prefixes_by_96() {
        let c: Cidr = "192.0.2.77/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.0/24");
        let (len, key) = c.key();
        assert_eq!(len, 120);
        assert_eq!(Cidr::from_key(len, key), Some(c));
        let c6: Cidr = "2001:db8:1::9/48".parse().unwrap();
        assert_eq!(c6.key().0, 48);
        assert_eq!(Cidr::from_key(48, c6.key().1), Some(c6));
    }

    #[test]
    fn bare_address_is_a_host_block() {
        assert_eq!("192.0.2.1".parse::<Cidr>().unwrap().key().0, 128);
        assert_eq!(
            "::ffff:192.0.2.0/120".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn malformed_input_is_rejected() {
        for bad in [
            "",
            "300.1.1.1",
            "192.0.2.0/33",
            "2001:db8::/129",
            "abc/8",
            "1.2.3.4/",
            "/24",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(Error::InvalidCidr { .. })),
                "{bad}"
            );
        }
        assert!(matches!(parse_addr("1.2.3"), Err(Error::InvalidAddress { .. })));
    }
}
