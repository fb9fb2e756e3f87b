//! IP allowlists, and who the client is behind proxies.
//!
//! A key's allowlist is a list of networks (`203.0.113.0/24`, `2001:db8::/32`, or a bare
//! address for one host). An IPv4 client that reaches us over IPv6 as an IPv4-mapped address
//! (`::ffff:203.0.113.9`) is the IPv4 client, and matches IPv4 rules; a rule written as a
//! mapped network (`::ffff:203.0.113.0/120`) is stored as the IPv4 network it means.
//!
//! The client's address is the socket peer, unless the peer is one of our trusted proxies:
//! then [`client_address`] reads `X-Forwarded-For` from the right (see there). A header value
//! is only believed when a trusted proxy wrote it, so a client cannot choose its address by
//! sending the header itself.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most entries in one allowlist (or in the trusted proxies).
pub const MAX_IP_ENTRIES: usize = 64;
/// Most `X-Forwarded-For` entries read; past that, the walk stops as at a malformed entry.
pub const MAX_PROXY_HOPS: usize = 32;
/// Longest `X-Forwarded-For` entry read (`[v6 address]:port` fits in 47 bytes).
const MAX_ENTRY_LEN: usize = 64;

/// Why an allowlist was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpError {
    /// Not an address or a network in CIDR notation.
    Address(String),
    /// A network with bits set past its prefix (`203.0.113.5/24`); the message suggests the
    /// network meant.
    HostBits {
        /// The entry as written.
        written: String,
        /// The network it would cover.
        network: String,
    },
    /// No entries: an empty allowlist would let nobody in; leave it out to allow everyone.
    Empty,
    /// More than [`MAX_IP_ENTRIES`] entries.
    TooMany,
}

impl fmt::Display for IpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(text) => write!(
                f,
                "{text:?} is not an IP address or network such as 203.0.113.0/24 or 2001:db8::/32"
            ),
            Self::HostBits { written, network } => {
                write!(
                    f,
                    "{written} has bits set past its prefix; did you mean {network}?"
                )
            }
            Self::Empty => f.write_str(
                "an empty IP allowlist would allow no address; leave it out to allow every address",
            ),
            Self::TooMany => write!(f, "at most {MAX_IP_ENTRIES} IP addresses or networks"),
        }
    }
}

impl std::error::Error for IpError {}

/// A non-empty list of IP networks (at most [`MAX_IP_ENTRIES`]): a key's allowed client
/// addresses, or the proxies whose `X-Forwarded-For` we believe. JSON: an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpAllowlist(Vec<IpNet>);

impl IpAllowlist {
    /// Parses entries such as `203.0.113.0/24`, `2001:db8::/32`, `198.51.100.7` (one host).
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, IpError> {
        let mut nets = Vec::new();
        for entry in entries {
            if nets.len() == MAX_IP_ENTRIES {
                return Err(IpError::TooMany);
            }
            nets.push(parse_net(entry)?);
        }
        if nets.is_empty() {
            return Err(IpError::Empty);
        }
        Ok(Self(nets))
    }

    /// Parses a comma-separated list.
    pub fn parse_list(text: &str) -> Result<Self, IpError> {
        Self::parse(text.split(',').filter(|e| !e.trim().is_empty()))
    }

    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address as its IPv4 self).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

/// One entry: a network, or a bare address as a /32 or /128.
fn parse_net(text: &str) -> Result<IpNet, IpError> {
    let text = text.trim();
    let bad = || IpError::Address(text.chars().take(64).collect());
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<IpAddr>().map_err(|_| bad())?),
    };
    if net.trunc() != net {
        return Err(IpError::HostBits {
            written: text.to_owned(),
            network: show(&net.trunc()),
        });
    }
    Ok(canonical_net(net))
}

/// `::ffff:a.b.c.d/96+n` is the IPv4 network `a.b.c.d/n`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("at most 32"));
    }
    net
}

/// A network as written back: a single host as its bare address.
fn show(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

impl fmt::Display for IpAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&show(net))?;
        }
        Ok(())
    }
}

impl Serialize for IpAllowlist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(show))
    }
}

impl<'de> Deserialize<'de> for IpAllowlist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = IpAllowlist;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "an array of 1 to {MAX_IP_ENTRIES} IP addresses or networks"
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IpAllowlist, A::Error> {
                let mut nets = Vec::new();
                while let Some(text) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    if nets.len() == MAX_IP_ENTRIES {
                        return Err(serde::de::Error::custom(IpError::TooMany));
                    }
                    nets.push(parse_net(&text).map_err(serde::de::Error::custom)?);
                }
                if nets.is_empty() {
                    return Err(serde::de::Error::custom(IpError::Empty));
                }
                Ok(IpAllowlist(nets))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The client's address: `peer` (the socket's), unless `peer` is a trusted proxy.
///
/// Behind trusted proxies, `X-Forwarded-For` is read from the right: every header line in
/// order (`forwarded_for`, as received), each a comma-separated list; each proxy appended the
/// address it was connected from. Walking from the right, an address that is a trusted proxy is
/// skipped (that proxy's own entry, to its left, is believed next); the first address that is
/// not a trusted proxy is the client. Anything to its left was written by the client or
/// proxies we do not know, and is never read — in particular not the leftmost entry just
/// because it is there.
///
/// When the walk cannot go on — an entry is not an address (`unknown`, an obfuscated name,
/// garbage, an IPv6 zone), the header is missing or runs out of entries, or
/// [`MAX_PROXY_HOPS`] entries were read — the client is the **last trusted hop reached**: the
/// peer, or the last trusted proxy address read. The entry that hop wrote is unreadable, so
/// nobody further left can be attributed; the hop's own address is the nearest address known
/// for sure, and since allowlists name client networks, not our proxies, a check against it
/// fails closed rather than trusting a guess. Empty list elements (`a,,b`) are skipped, as HTTP
/// list syntax says. Entries may carry a port (`203.0.113.9:4711`, `[2001:db8::1]:443`) or
/// brackets (`[2001:db8::1]`); IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_address<'a, I>(
    peer: IpAddr,
    forwarded_for: I,
    trusted_proxies: Option<&IpAllowlist>,
) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let peer = peer.to_canonical();
    let Some(trusted) = trusted_proxies else {
        return peer;
    };
    if !trusted.contains(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    let mut read = 0;
    for line in forwarded_for.into_iter().rev() {
        for entry in line.rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            read += 1;
            if read > MAX_PROXY_HOPS {
                return last_trusted;
            }
            if entry.is_empty() {
                continue;
            }
            let Some(address) = parse_forwarded(entry) else {
                return last_trusted;
            };
            if !trusted.contains(address) {
                return address;
            }
            last_trusted = address;
        }
    }
    last_trusted
}

/// One `X-Forwarded-For` entry: an address, optionally bracketed (IPv6) and with a port.
fn parse_forwarded(entry: &[u8]) -> Option<IpAddr> {
    if entry.len() > MAX_ENTRY_LEN {
        return None;
    }
    let text = std::str::from_utf8(entry).ok()?;
    let address = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = text.parse::<SocketAddr>() {
        socket.ip()
    } else {
        let inner = text.strip_prefix('[')?.strip_suffix(']')?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn list(text: &str) -> IpAllowlist {
        IpAllowlist::parse_list(text).unwrap()
    }

    #[test]
    fn allowlists_for_ipv4_and_ipv6() {
        let allow = list("203.0.113.0/24, 2001:db8::/32, 198.51.100.7");
        assert!(allow.contains(ip("203.0.113.0")));
        assert!(allow.contains(ip("203.0.113.255")));
        assert!(!allow.contains(ip("203.0.114.1")));
        assert!(allow.contains(ip("2001:db8:ffff::1")));
        assert!(!allow.contains(ip("2001:db9::1")));
        assert!(allow.contains(ip("198.51.100.7")));
        assert!(!allow.contains(ip("198.51.100.8")));
        // An IPv4 client seen over IPv6 is the IPv4 client.
        assert!(allow.contains(ip("::ffff:203.0.113.9")));
        assert!(!allow.contains(ip("::ffff:203.0.114.9")));
        // A mapped rule is the IPv4 rule.
        let mapped = list("::ffff:192.0.2.0/120");
        assert_eq!(mapped.to_string(), "192.0.2.0/24");
        assert!(mapped.contains(ip("192.0.2.77")));
        assert!(mapped.contains(ip("::ffff:192.0.2.77")));
        assert_eq!(
            allow.to_string(),
            "203.0.113.0/24, 2001:db8::/32, 198.51.100.7"
        );
        assert!(list("::/0").contains(ip("2001:db8::1")));
        assert!(
            !list("::/0").contains(ip("192.0.2.1")),
            "IPv6 rules do not cover IPv4"
        );
    }

    #[test]
    fn bad_allowlists_say_what_is_wrong() {
        assert_eq!(
            IpAllowlist::parse_list("203.0.113.5/24"),
            Err(IpError::HostBits {
                written: "203.0.113.5/24".into(),
                network: "203.0.113.0/24".into()
            })
        );
        for bad in [
            "example.com",
            "203.0.113.0/33",
            "2001:db8::/129",
            "1.2.3",
            "fe80::1%eth0",
        ] {
            assert_eq!(
                IpAllowlist::parse_list(bad),
                Err(IpError::Address(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(IpAllowlist::parse_list(""), Err(IpError::Empty));
        assert_eq!(IpAllowlist::parse_list(" , "), Err(IpError::Empty));
        let many = (0..65).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>();
        assert_eq!(
            IpAllowlist::parse(many.iter().map(String::as_str)),
            Err(IpError::TooMany)
        );
        assert!(IpAllowlist::parse(many[..64].iter().map(String::as_str)).is_ok());
    }

    #[test]
    fn allowlists_in_json() {
        let allow = list("203.0.113.0/24, 2001:db8::/32, 198.51.100.7, 2001:db8::1");
        let json = serde_json::to_value(&allow).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                "203.0.113.0/24",
                "2001:db8::/32",
                "198.51.100.7",
                "2001:db8::1"
            ])
        );
        assert_eq!(serde_json::from_value::<IpAllowlist>(json).unwrap(), allow);
        for bad in [
            r#"[]"#,
            r#"["nope"]"#,
            r#"["10.0.0.1/8"]"#,
            r#""10.0.0.0/8""#,
            r#"[1]"#,
        ] {
            assert!(serde_json::from_str::<IpAllowlist>(bad).is_err(), "{bad}");
        }
    }

    fn client(peer: &str, headers: &[&str], trusted: Option<&IpAllowlist>) -> IpAddr {
        client_address(ip(peer), headers.iter().map(|h| h.as_bytes()), trusted)
    }

    #[test]
    fn the_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        let proxies = list("10.0.0.0/8, fd00::/8");
        // No trusted proxies: the header is ignored whatever it says.
        assert_eq!(
            client("198.51.100.1", &["203.0.113.9"], None),
            ip("198.51.100.1")
        );
        // An untrusted peer forging the header: ignored.
        assert_eq!(
            client("198.51.100.1", &["10.0.0.1, 203.0.113.9"], Some(&proxies)),
            ip("198.51.100.1")
        );
        // Behind one trusted proxy: its entry is the client.
        assert_eq!(
            client("10.0.0.2", &["203.0.113.9"], Some(&proxies)),
            ip("203.0.113.9")
        );
        // IPv6 peer and mapped peers.
        assert_eq!(
            client("fd00::5", &["2001:db8::9"], Some(&proxies)),
            ip("2001:db8::9")
        );
        assert_eq!(
            client("::ffff:10.0.0.2", &["203.0.113.9"], Some(&proxies)),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("::ffff:198.51.100.1", &[], Some(&proxies)),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_over_trusted_hops() {
        let proxies = list("10.0.0.0/8");
        // client → 10.1.1.1 → 10.2.2.2 → us; the client prepended a forged address.
        assert_eq!(
            client(
                "10.2.2.2",
                &["1.1.1.1, 203.0.113.9, 10.1.1.1"],
                Some(&proxies)
            ),
            ip("203.0.113.9")
        );
        // The same chain split over several header lines, in order.
        assert_eq!(
            client(
                "10.2.2.2",
                &["1.1.1.1", "203.0.113.9", "10.1.1.1"],
                Some(&proxies)
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(
                "10.2.2.2",
                &["1.1.1.1, 203.0.113.9", "10.1.1.1"],
                Some(&proxies)
            ),
            ip("203.0.113.9")
        );
        // A client forging a trusted address to the left is still not believed past the first
        // untrusted entry.
        assert_eq!(
            client(
                "10.2.2.2",
                &["10.9.9.9, 203.0.113.9, 10.1.1.1"],
                Some(&proxies)
            ),
            ip("203.0.113.9")
        );
        // Ports and brackets.
        assert_eq!(
            client("10.0.0.1", &["203.0.113.9:4711"], Some(&proxies)),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("10.0.0.1", &["[2001:db8::9]:443"], Some(&proxies)),
            ip("2001:db8::9")
        );
        assert_eq!(
            client("10.0.0.1", &["[2001:db8::9]"], Some(&proxies)),
            ip("2001:db8::9")
        );
        // Empty list elements are skipped.
        assert_eq!(
            client("10.0.0.1", &["203.0.113.9, ,", ""], Some(&proxies)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn an_unreadable_entry_stops_at_the_last_trusted_hop() {
        let proxies = list("10.0.0.0/8");
        // Rightmost entry unreadable: the peer itself.
        assert_eq!(
            client("10.2.2.2", &["203.0.113.9, unknown"], Some(&proxies)),
            ip("10.2.2.2")
        );
        // Unreadable after one trusted hop: that hop.
        assert_eq!(
            client(
                "10.2.2.2",
                &["203.0.113.9, _hidden, 10.1.1.1"],
                Some(&proxies)
            ),
            ip("10.1.1.1")
        );
        for garbage in [
            "fe80::1%eth0",
            "203.0.113.9:port",
            "2001:db8::1:443]",
            "\u{ff}",
        ] {
            assert_eq!(
                client("10.2.2.2", &[garbage], Some(&proxies)),
                ip("10.2.2.2"),
                "{garbage:?}"
            );
        }
        let non_utf8: &[u8] = b"\xff\xfe";
        assert_eq!(
            client_address(ip("10.2.2.2"), [non_utf8], Some(&proxies)),
            ip("10.2.2.2")
        );
        // No header, or only trusted hops: the leftmost trusted hop reached.
        assert_eq!(client("10.2.2.2", &[], Some(&proxies)), ip("10.2.2.2"));
        assert_eq!(
            client("10.2.2.2", &["10.3.3.3, 10.1.1.1"], Some(&proxies)),
            ip("10.3.3.3")
        );
        // Too many hops: stop at the bound.
        let chain = std::iter::repeat_n("10.0.0.1", 40)
            .collect::<Vec<_>>()
            .join(",");
        let long = format!("203.0.113.9,{chain}");
        assert_eq!(client("10.2.2.2", &[&long], Some(&proxies)), ip("10.0.0.1"));
    }

    proptest! {
        #[test]
        fn never_an_address_left_of_the_first_untrusted_one(
            forged in proptest::collection::vec(any::<[u8; 4]>(), 0..5),
            real in any::<[u8; 4]>(),
            hops in proptest::collection::vec(any::<u8>(), 0..5),
        ) {
            let proxies = list("10.0.0.0/8");
            let real = IpAddr::from(real);
            prop_assume!(!proxies.contains(real));
            let mut entries: Vec<String> =
                forged.iter().map(|a| IpAddr::from(*a).to_string()).collect();
            entries.push(real.to_string());
            entries.extend(hops.iter().map(|h| format!("10.0.{h}.1")));
            let header = entries.join(", ");
            prop_assert_eq!(
                client_address(ip("10.255.0.1"), [header.as_bytes()], Some(&proxies)),
                real
            );
        }

        #[test]
        fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let proxies = list("10.0.0.0/8");
            let _ = client_address(ip("10.0.0.1"), [bytes.as_slice()], Some(&proxies));
        }
    }
}
