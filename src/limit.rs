//! What a rate limit says about one request ([`RateDecision`]), and the check a
//! request carries to whoever counts it ([`RateCheck`]). A leaf: plain data, so
//! the job being submitted can carry its request's check down to the store.

use std::net::IpAddr;
use std::sync::OnceLock;

/// What a limit said about one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: f64,
    /// When refused: seconds until one request would be allowed.
    pub retry_after_secs: f64,
}

/// A rate limit one request is to be counted against: by the HTTP gate before
/// the handler runs, or, on the routes whose handler makes one store call of
/// its own (a submission, a status read), by the store in that same call, so the
/// count costs no round trip of its own. Whoever counts it records the decision
/// here; the gate reads it back for the answer's headers.
#[derive(Debug)]
pub struct RateCheck {
    /// The bucket: `key:<id>` or `addr:<hex>`.
    pub bucket: String,
    /// Requests per second.
    pub rate: f64,
    pub burst: u32,
    decided: OnceLock<RateDecision>,
}

impl RateCheck {
    pub fn new(bucket: String, rate: f64, burst: u32) -> Self {
        RateCheck {
            bucket,
            rate,
            burst,
            decided: OnceLock::new(),
        }
    }

    /// Records what the limit said (the first decision stands).
    pub fn decide(&self, d: RateDecision) {
        let _ = self.decided.set(d);
    }

    /// What the limit said, once counted.
    pub fn decision(&self) -> Option<RateDecision> {
        self.decided.get().copied()
    }
}

impl PartialEq for RateCheck {
    fn eq(&self, other: &Self) -> bool {
        self.bucket == other.bucket && self.rate == other.rate && self.burst == other.burst
    }
}

/// A client address as the per-client caps count it (event streams, uploads in
/// flight, the address rate limit's bucket): an IPv4 address, or an IPv6 /64
/// (one host gets a whole /64, so counting single IPv6 addresses would count
/// nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpKey(pub u128);

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(u32::from(v4) as u128),
                None => IpKey((u128::from(v6) & !((1u128 << 64) - 1)) | (1 << 127) | 1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(x), IpKey::of(y));
        assert_ne!(IpKey::of(x), IpKey::of(z));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(IpKey::of(v4), IpKey::of(mapped));
    }
}
