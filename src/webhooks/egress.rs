//! Where webhooks may go: public addresses only (unless `--webhook-allow-private`),
//! judged after DNS resolution, so a name that resolves to loopback or to the
//! cloud's metadata address is refused like the address itself. The check is the
//! HTTP client's resolver ([`GuardedResolver`]), so the address connected to is
//! the one that was checked (a name that changes its answer gains nothing), with
//! one lookup per connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What the refusal tells the user to do.
pub const ADVICE: &str = "webhooks go only to public addresses (the server's --webhook-allow-private lifts this, for receivers on a private network)";

/// Why `ip` is not a public address, or `None` if it is.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// Why a URL's host, when it is an IP literal, is not a public address (names are
/// judged when they are resolved).
pub fn check_literal(host: Option<url::Host<&str>>) -> Result<(), String> {
    let ip: IpAddr = match host {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    match forbidden(ip) {
        Some(why) => Err(format!("{ip} is {why}; {ADVICE}")),
        None => Ok(()),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        // 169.254.169.254 is the cloud metadata service.
        "a link-local address (cloud metadata lives there)"
    } else if a == 0 {
        "an unspecified address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (carrier-grade NAT) address"
    } else if a == 192 && b == 0 && c == 0 {
        "an IETF protocol address"
    } else if a == 198 && (18..20).contains(&b) {
        "a benchmarking address"
    } else if (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        "a documentation address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a >= 240 {
        "a reserved address"
    } else {
        return None;
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        // IPv4-translated (::ffff:0:a.b.c.d, SIIT): judged by its IPv4 address.
        let o = ip.octets();
        return forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Local-use NAT64 (64:ff9b:1::/48): translates into a network of its own.
        return Some("a local-use NAT64 address");
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo (2001::/32) tunnels to an IPv4 host it hides.
        return Some("a Teredo address");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64: the IPv4 address is the last 32 bits.
        let o = ip.octets();
        return forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address follows the prefix.
        return forbidden_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a private (unique local) address"
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        "a link-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "a documentation address"
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) and the rest of ::/96.
        "a reserved address"
    } else {
        return None;
    })
}

/// A webhook's host resolved to an address it may not go to.
#[derive(Debug)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves to {}, {}; {ADVICE}",
            self.host, self.ip, self.why
        )
    }
}

impl std::error::Error for Refused {}

/// Resolves `host` and checks every address it gives: all must be allowed.
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address").into());
    }
    if !allow_private
        && let Some((ip, why)) = addrs
            .iter()
            .find_map(|a| forbidden(a.ip()).map(|w| (a.ip(), w)))
    {
        return Err(Box::new(Refused {
            host: host.to_owned(),
            ip,
            why,
        }));
    }
    Ok(addrs)
}

/// The HTTP client's resolver: [`resolve`], so a connection only ever goes to a
/// checked address.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve(&host, 0, allow).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(s: &str) -> Option<&'static str> {
        forbidden(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "100.128.0.1",
        ] {
            assert_eq!(why(ok), None, "{ok}");
        }
    }

    #[test]
    fn the_rest_is_refused() {
        for (ip, word) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("::127.0.0.1", "reserved"),
            ("::ffff:0:7f00:1", "loopback"),
            ("::ffff:0:a00:1", "private"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ] {
            let w = why(ip).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(w.contains(word), "{ip}: {w}");
        }
    }

    #[tokio::test]
    async fn a_name_for_loopback_is_refused_after_resolution() {
        let e = resolve("localhost", 80, false).await.unwrap_err();
        let r = e.downcast_ref::<Refused>().expect("a refusal");
        assert!(r.ip.is_loopback(), "{r}");
        assert!(r.to_string().contains("localhost resolves to"));
        assert!(resolve("localhost", 80, true).await.is_ok());
    }
}
