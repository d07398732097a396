//! Which IP addresses the proxy connects to. Only globally routable unicast addresses by default:
//! a sandbox must not reach the host, the operator's private networks or a cloud metadata service,
//! whatever name it uses to get there. The host's own interface addresses are refused too, public
//! ones included, as they lead to whatever listens on the host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

/// What kind of address an IP is, as far as egress cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressClass {
    /// Globally routable unicast: allowed.
    Public,
    /// 0.0.0.0/8, `::`.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT, also used by some clouds for internal services).
    SharedCgnat,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// Cloud instance metadata: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// Multicast and broadcast.
    Multicast,
    /// Documentation, benchmarking, IETF-reserved and other special-purpose ranges.
    Reserved,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::Metadata => "cloud metadata",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Classifies `ip`. IPv6 forms that embed an IPv4 address (v4-mapped, v4-compatible, NAT64
/// 64:ff9b::/96, 6to4 2002::/16) are classified by the IPv4 address they lead to.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip == METADATA_V4 {
        AddressClass::Metadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if a == 127 {
        AddressClass::Loopback
    } else if a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168) {
        AddressClass::Private
    } else if a == 100 && (64..=127).contains(&b) {
        AddressClass::SharedCgnat
    } else if a == 169 && b == 254 {
        AddressClass::LinkLocal
    } else if (224..=239).contains(&a) || ip == Ipv4Addr::BROADCAST {
        AddressClass::Multicast
    } else if a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 192 && b == 88 && c == 99)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip == METADATA_V6 {
        return AddressClass::Metadata;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddressClass::UniqueLocal
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        // fec0::/10 (deprecated site-local) is as internal as link-local.
        AddressClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if s[0] & 0xe000 != 0x2000
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x2001 && s[1] < 0x200)
    {
        // Outside 2000::/3 (global unicast), documentation, and 2001::/23 (IETF protocol
        // assignments, including Teredo).
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // v4-compatible ::a.b.c.d (but not :: or ::1, classified as themselves).
    if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
        return Some(tail(s[6], s[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(tail(s[6], s[7]));
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2]));
    }
    None
}

/// `ip`, or the IPv4 address an IPv6 form leads to (mapped, compatible, NAT64, 6to4).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Where the host's own addresses come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostAddresses {
    /// The host's interfaces (getifaddrs), listed again at every check, so an address the host
    /// gains later (DHCP, a new interface) is refused as soon as it is configured.
    #[default]
    System,
    /// A fixed list (tests, or a host whose addresses are known).
    Fixed(Vec<IpAddr>),
}

/// The host's interface addresses could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot list this host's own addresses (getifaddrs): {0}")]
pub struct HostAddressError(pub String);

impl HostAddresses {
    /// Every address of the host's interfaces, loopback and link-local included.
    pub fn list(&self) -> Result<Vec<IpAddr>, HostAddressError> {
        match self {
            Self::Fixed(list) => Ok(list.clone()),
            Self::System => {
                let interfaces = nix::ifaddrs::getifaddrs()
                    .map_err(|errno| HostAddressError(errno.desc().to_string()))?;
                Ok(interfaces
                    .filter_map(|interface| {
                        let address = interface.address?;
                        if let Some(v4) = address.as_sockaddr_in() {
                            Some(IpAddr::V4(v4.ip()))
                        } else {
                            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                        }
                    })
                    .collect())
            }
        }
    }
}

/// Why the proxy does not connect to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not public, and no allowed network contains it.
    Class(AddressClass),
    /// One of the host's own interface addresses (or an IPv6 form of one).
    OwnAddress,
    /// The host's own addresses could not be listed, so no address can be judged: fail closed.
    HostUnknown(HostAddressError),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Class(class) => write!(f, "a {class} address"),
            Self::OwnAddress => f.write_str("one of this host's own addresses"),
            Self::HostUnknown(err) => write!(f, "refused because {err}"),
        }
    }
}

/// Which non-public addresses the operator allows anyway (e.g. an internal package mirror), and
/// which addresses are the host's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed_networks: Vec<IpNet>,
    host: HostAddresses,
}

impl AddressPolicy {
    /// A policy that lists the host's own addresses from its interfaces at every check.
    pub fn new(allowed_networks: Vec<IpNet>) -> Self {
        Self {
            allowed_networks,
            host: HostAddresses::System,
        }
    }

    /// The same policy with the host's addresses taken from `host`.
    pub fn with_host_addresses(mut self, host: HostAddresses) -> Self {
        self.host = host;
        self
    }

    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed_networks
    }

    pub fn host_addresses(&self) -> &HostAddresses {
        &self.host
    }

    /// `Ok` when the proxy may connect to `ip`; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_all(&[ip]).map_err(|(_, refusal)| refusal)
    }

    /// `Ok` when the proxy may connect to every address in `ips`; otherwise the first refused
    /// one and why. The host's addresses are listed once for all of them.
    ///
    /// An address is allowed when it is public or inside an allowed network, and is not one of
    /// the host's own. A host address is allowed only when an allowed network names exactly that
    /// address (`/32`, `/128`): opening the network the host sits on (say `10.20.0.0/16` for a
    /// mirror) does not open the host itself.
    pub fn check_all(&self, ips: &[IpAddr]) -> Result<(), (IpAddr, Refusal)> {
        for &ip in ips {
            let class = classify(ip);
            if class != AddressClass::Public
                && !self.allowed_networks.iter().any(|net| net.contains(&ip))
            {
                return Err((ip, Refusal::Class(class)));
            }
        }
        let Some(&first) = ips.first() else {
            return Ok(());
        };
        let own: Vec<IpAddr> = match self.host.list() {
            Ok(list) => list.into_iter().map(canonical).collect(),
            Err(err) => return Err((first, Refusal::HostUnknown(err))),
        };
        for &ip in ips {
            let target = canonical(ip);
            let named = |net: &IpNet| {
                net.prefix_len() == net.max_prefix_len()
                    && (net.addr() == ip || net.addr() == target)
            };
            if own.contains(&target) && !self.allowed_networks.iter().any(named) {
                return Err((ip, Refusal::OwnAddress));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().unwrap())
    }

    #[test]
    fn known_addresses() {
        use AddressClass::*;
        for (ip, expected) in [
            ("93.184.216.34", Public),
            ("8.8.8.8", Public),
            ("2606:4700::1111", Public),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.1", Public),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("fd00:ec2::254", Metadata),
            ("fe80::1", LinkLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fc00::1", UniqueLocal),
            ("224.0.0.1", Multicast),
            ("255.255.255.255", Multicast),
            ("ff02::1", Multicast),
            ("192.0.2.1", Reserved),
            ("203.0.113.9", Reserved),
            ("240.0.0.1", Reserved),
            ("2001:db8::1", Reserved),
            // IPv4 hidden in IPv6 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("2002:c0a8:0101::1", Private),
            ("::ffff:8.8.8.8", Public),
        ] {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_open_exactly_their_range() {
        let policy = AddressPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            policy.check("127.0.0.2".parse().unwrap()),
            Err(Refusal::Class(AddressClass::Loopback))
        );
        assert!(policy.check("1.1.1.1".parse().unwrap()).is_ok());
        assert_eq!(
            AddressPolicy::default().check("169.254.169.254".parse().unwrap()),
            Err(Refusal::Class(AddressClass::Metadata))
        );
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_hosts_own_addresses_are_refused_public_ones_included() {
        let host = HostAddresses::Fixed(vec![
            ip("127.0.0.1"),
            ip("93.184.216.34"),
            ip("10.20.0.5"),
            ip("2606:4700::1111"),
        ]);
        let policy = AddressPolicy::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
        ])
        .with_host_addresses(host);
        for own in [
            "93.184.216.34",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2606:4700::1111",
            // Inside the allowed 10.20.0.0/16, but the host itself.
            "10.20.0.5",
        ] {
            assert_eq!(policy.check(ip(own)), Err(Refusal::OwnAddress), "{own}");
        }
        // Named exactly by an allowed network: the operator means it.
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        // Neighbours are not the host.
        assert!(policy.check(ip("93.184.216.35")).is_ok());
        assert!(policy.check(ip("10.20.0.6")).is_ok());
        // One own address among public answers refuses the lot, and says which.
        assert_eq!(
            policy.check_all(&[ip("8.8.8.8"), ip("93.184.216.34")]),
            Err((ip("93.184.216.34"), Refusal::OwnAddress))
        );
        // A non-public address keeps its class as the reason.
        assert_eq!(
            policy.check(ip("192.168.1.1")),
            Err(Refusal::Class(AddressClass::Private))
        );
        assert_eq!(
            Refusal::OwnAddress.to_string(),
            "one of this host's own addresses"
        );
    }

    #[test]
    fn this_machines_interfaces_are_listed() {
        // (A network namespace whose loopback is down may list nothing at all.)
        let own = HostAddresses::System.list().unwrap();
        let policy = AddressPolicy::default();
        for address in own {
            assert!(policy.check(address).is_err(), "{address}");
        }
    }

    proptest! {
        #[test]
        fn mapped_v6_is_classified_like_its_v4(raw in any::<u32>()) {
            let v4 = Ipv4Addr::from(raw);
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        }

        #[test]
        fn rfc1918_and_loopback_are_never_public(a in any::<u8>(), b in any::<u8>(), c in any::<u8>()) {
            for ip in [
                Ipv4Addr::new(10, a, b, c),
                Ipv4Addr::new(127, a, b, c),
                Ipv4Addr::new(192, 168, b, c),
                Ipv4Addr::new(172, 16 + (a % 16), b, c),
                Ipv4Addr::new(169, 254, b, c),
                Ipv4Addr::new(100, 64 + (a % 64), b, c),
            ] {
                prop_assert_ne!(classify(IpAddr::V4(ip)), AddressClass::Public, "{}", ip);
            }
        }

        #[test]
        fn unique_local_v6_is_never_public(segments in any::<[u16; 8]>()) {
            let mut s = segments;
            s[0] = 0xfc00 | (s[0] & 0x01ff);
            prop_assert_ne!(classify(IpAddr::V6(Ipv6Addr::from(s))), AddressClass::Public);
        }
    }
}
