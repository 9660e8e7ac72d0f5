//! IP networks, for `source_ip` (and, in the proxy, for its list of trusted proxies).

use std::fmt;
use std::net::IpAddr;

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(Network);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    V4 { network: u32, mask: u32 },
    V6 { network: u128, mask: u128 },
}

/// Why a network did not parse.
#[derive(Debug)]
#[non_exhaustive]
pub enum CidrError {
    /// The part before `/` is no IP address.
    Address,
    /// The prefix length is not a number up to `max` (32 or 128).
    Prefix {
        /// 32 or 128.
        max: u8,
    },
    /// The address has bits set past the prefix (`10.0.0.1/8`).
    HostBits {
        /// The network the text probably meant.
        suggestion: String,
    },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::Address => f.write_str("not an IP address"),
            CidrError::Prefix { max } => write!(f, "prefix length must be 0 to {max}"),
            CidrError::HostBits { suggestion } => {
                write!(f, "host bits are set (did you mean {suggestion:?}?)")
            }
        }
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Parses `address/prefix` or a bare address. An address with bits set past the prefix is
    /// refused: it is more often a typo than meant.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| CidrError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(len) if len <= max => len,
                _ => return Err(CidrError::Prefix { max }),
            },
        };
        let cidr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                let bits = u32::from(a);
                if bits & !mask != 0 {
                    let net = std::net::Ipv4Addr::from(bits & mask);
                    return Err(CidrError::HostBits {
                        suggestion: format!("{net}/{len}"),
                    });
                }
                Network::V4 {
                    network: bits,
                    mask,
                }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let bits = u128::from(a);
                if bits & !mask != 0 {
                    let net = std::net::Ipv6Addr::from(bits & mask);
                    return Err(CidrError::HostBits {
                        suggestion: format!("{net}/{len}"),
                    });
                }
                Network::V6 {
                    network: bits,
                    mask,
                }
            }
        };
        Ok(Cidr(cidr))
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) match
    /// IPv4 networks, and IPv4 addresses match IPv6 networks through their mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, ip) {
            (Network::V4 { network, mask }, IpAddr::V4(a)) => u32::from(a) & mask == network,
            (Network::V4 { network, mask }, IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| u32::from(a) & mask == network),
            (Network::V6 { network, mask }, IpAddr::V6(a)) => u128::from(a) & mask == network,
            (Network::V6 { network, mask }, IpAddr::V4(a)) => {
                u128::from(a.to_ipv6_mapped()) & mask == network
            }
        }
    }
}
