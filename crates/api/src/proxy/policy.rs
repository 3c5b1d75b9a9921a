//! Which addresses the gateway may open connections to for model servers.
//!
//! A version's `endpoint_url` is chosen by whoever registered it, and the gateway sends the
//! caller's body there and hands back the answer: without a policy any member could make it talk
//! to Redis on the gateway's loopback or to a cloud's metadata service. The policy is checked on
//! every address a connection would go to, after name resolution (see `client`), and on literal
//! addresses when a version is written.
//!
//! An address is allowed when it is in `upstream.allowed_networks`; else refused when it is in
//! `upstream.denied_networks`; else allowed. An IPv6 address that carries an IPv4 one
//! (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
//! `2002:aabb:ccdd::`) is also judged by that IPv4 address, whatever the lists say, so that no
//! spelling of a denied IPv4 address gets through.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    /// The network's first address (host bits cleared).
    address: IpAddr,
    /// Leading bits that name the network: at most 32 (IPv4) or 128 (IPv6).
    prefix: u8,
}

impl IpNetwork {
    /// `a.b.c.d/prefix`; `prefix` is at most 32 (larger ones are cut to 32).
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        let prefix = if prefix > 32 { 32 } else { prefix };
        let bits = u32::from_be_bytes([a, b, c, d]) & v4_mask(prefix);
        Self {
            address: IpAddr::V4(Ipv4Addr::from_bits(bits)),
            prefix,
        }
    }

    /// `address/prefix` of IPv6; `prefix` is at most 128 (larger ones are cut to 128).
    pub const fn v6(address: Ipv6Addr, prefix: u8) -> Self {
        let prefix = if prefix > 128 { 128 } else { prefix };
        let bits = address.to_bits() & v6_mask(prefix);
        Self {
            address: IpAddr::V6(Ipv6Addr::from_bits(bits)),
            prefix,
        }
    }

    /// Reads `address/prefix` or a bare `address` (surrounding spaces ignored). Bits past the
    /// prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    ///
    /// # Errors
    /// A message naming what is wrong, for the settings error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP network (a.b.c.d/n or x:y::z/n)"))?;
        let most: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {most}"))?,
        };
        Ok(match address {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                Self::v4(a, b, c, d, prefix)
            }
            IpAddr::V6(v6) => Self::v6(v6, prefix),
        })
    }

    /// Whether `ip` is in this network (an IPv4 network holds no IPv6 address, nor the reverse).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & v4_mask(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & v6_mask(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }
}

const fn v4_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

const fn v6_mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for IpNetwork {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A list of networks in the settings: a list of strings (TOML) or one string of them separated
/// by commas (an environment variable: `MAAS_UPSTREAM__ALLOWED_NETWORKS=127.0.0.1/32,10.0.0.0/8`;
/// empty means none).
pub fn deserialize_networks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNetwork>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    let texts: Vec<String> = match Given::deserialize(deserializer)? {
        Given::List(list) => list,
        Given::Text(text) => text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    };
    texts
        .iter()
        .map(|t| IpNetwork::parse(t).map_err(serde::de::Error::custom))
        .collect()
}

/// The networks refused unless allowed: loopback, unspecified ("this network"), link-local
/// (with the cloud metadata address 169.254.169.254), multicast and broadcast, IPv4 and IPv6,
/// and the AWS metadata service's IPv6 address.
pub const DEFAULT_DENIED_NETWORKS: [IpNetwork; 10] = [
    IpNetwork::v4(0, 0, 0, 0, 8),
    IpNetwork::v4(127, 0, 0, 0, 8),
    IpNetwork::v4(169, 254, 0, 0, 16),
    IpNetwork::v4(224, 0, 0, 0, 4),
    IpNetwork::v4(255, 255, 255, 255, 32),
    IpNetwork::v6(Ipv6Addr::UNSPECIFIED, 128),
    IpNetwork::v6(Ipv6Addr::LOCALHOST, 128),
    IpNetwork::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    IpNetwork::v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    IpNetwork::v6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), 128),
];

/// The IPv4 address an IPv6 one carries, in the forms that reach it: IPv4-mapped, IPv4-compatible
/// (not `::` and `::1`, which are IPv6's own), NAT64's well-known prefix, 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    let low = Ipv4Addr::from_bits(bits as u32);
    let segments = ip.segments();
    if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) {
        return Some(low);
    }
    if bits >> 32 == 0x0064_ff9b_u128 << 64 {
        return Some(low);
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::from_bits(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    None
}

/// `upstream.allowed_networks` and `upstream.denied_networks`, as one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNetwork>,
    denied: Vec<IpNetwork>,
}

impl AddressPolicy {
    /// Allowed is allowed even inside a denied network; what neither list holds is allowed.
    pub fn new(allowed: &[IpNetwork], denied: &[IpNetwork]) -> Self {
        Self {
            allowed: allowed.to_vec(),
            denied: denied.to_vec(),
        }
    }

    /// Whether the gateway may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let forms = std::iter::once(ip).chain(embedded);
        let within = |list: &[IpNetwork]| forms.clone().any(|f| list.iter().any(|n| n.contains(f)));
        within(&self.allowed) || !within(&self.denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn defaults() -> AddressPolicy {
        AddressPolicy::new(&[], &DEFAULT_DENIED_NETWORKS)
    }

    #[test]
    fn networks_parse_in_cidr_notation_and_bare_addresses_are_hosts() {
        let net = IpNetwork::parse(" 10.1.2.3/8 ").expect("valid");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")), "families stay apart");
        let host = IpNetwork::parse("192.168.1.7").expect("valid");
        assert!(host.contains(ip("192.168.1.7")) && !host.contains(ip("192.168.1.8")));
        let v6 = IpNetwork::parse("fd00::/8").expect("valid");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(
            IpNetwork::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        assert!(
            IpNetwork::parse("::/0")
                .expect("all")
                .contains(ip("2001:db8::1"))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "localhost",
            "10.0.0.0/x",
            "1.2.3.4/-1",
        ] {
            assert!(IpNetwork::parse(bad).is_err(), "{bad}");
        }
        for text in ["127.0.0.0/8", "::1/128", "fe80::/10", "255.255.255.255/32"] {
            assert_eq!(IpNetwork::parse(text).expect(text).to_string(), text);
        }
    }

    #[test]
    fn the_defaults_refuse_the_gateway_s_own_host_and_metadata_services_in_every_form() {
        let policy = defaults();
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(!policy.allows(ip(refused)), "{refused}");
        }
        for allowed in [
            "10.0.0.5",
            "172.18.0.3",
            "192.168.1.10",
            "8.8.8.8",
            "100.64.0.1",
            "fd12:3456::1",
            "2001:db8::1",
            "::ffff:10.0.0.5",
            "64:ff9b::808:808",
        ] {
            assert!(policy.allows(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn an_allowed_address_is_allowed_even_inside_a_denied_network() {
        let allowed = [IpNetwork::v4(127, 0, 0, 1, 32)];
        let policy = AddressPolicy::new(&allowed, &DEFAULT_DENIED_NETWORKS);
        assert!(policy.allows(ip("127.0.0.1")));
        assert!(policy.allows(ip("::ffff:127.0.0.1")), "its mapped form too");
        assert!(!policy.allows(ip("127.0.0.2")));
        assert!(!policy.allows(ip("::1")));
        // Denied lists that leave out the IPv6 forms still catch them.
        let only_v4 = AddressPolicy::new(&[], &[IpNetwork::v4(127, 0, 0, 0, 8)]);
        assert!(!only_v4.allows(ip("::ffff:127.0.0.1")));
        assert!(only_v4.allows(ip("::1")), "what no list names is allowed");
        assert!(AddressPolicy::default().allows(ip("127.0.0.1")));
    }
}
