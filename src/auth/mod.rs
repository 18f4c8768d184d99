//! Who is asking: API keys, their roles and limits, the auth modes, and the
//! signatures that let `<img src>` fetch a picture without a header.
//!
//! A key is `sk_<id>_<secret>`: the id says which key (it is not secret), the secret
//! is 32 random bytes from the operating system. The store keeps only the SHA-256
//! of the secret (a high-entropy secret needs no password hashing), compared in
//! constant time. Keys live in the job store, so every API process sees the same
//! keys, limits and revocations.

pub mod keys;
pub mod rate;
pub mod signing;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keys::{ApiKey, KeyLimits, KeyUpdate, Role};

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No key needed (a key that is given is still checked and used).
    Off,
    /// Every API request needs a key.
    Keys,
    /// `off` when the server listens only on loopback, `keys` otherwise.
    Auto,
}

impl AuthMode {
    /// The mode in force for a server listening on `host` and reached at
    /// `public_url` by pages on `cors_origins`: `auto` is `off` only when all of
    /// them are this machine's (a same-host reverse proxy for a public name
    /// means keys).
    pub fn resolve(self, host: &str, public_url: &str, cors_origins: &str) -> AuthMode {
        let public_url = public_url.trim();
        let only_loopback = is_loopback_host(host)
            && (public_url.is_empty() || is_loopback_origin(public_url))
            && cors_origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .all(|o| o == "loopback" || is_loopback_origin(o));
        match self {
            AuthMode::Auto if only_loopback => AuthMode::Off,
            AuthMode::Auto => AuthMode::Keys,
            m => m,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Keys => "keys",
            AuthMode::Auto => "auto",
        }
    }
}

/// Whether a listen address reaches only this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a URL or origin (`http://localhost:5000/…`) names this machine.
pub fn is_loopback_origin(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    is_loopback_host(host_of(authority))
}

/// The host of an authority (`host:port`, `[::1]:port`), without its port.
pub fn host_of(authority: &str) -> &str {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether `host` (a Host header's host) is loopback: `localhost` (and its
/// subdomains, which resolve to loopback), 127.0.0.0/8, `::1`.
pub fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost") || is_loopback_host(&h)
}

/// The prefix of every secret, so a leaked one is recognisable (secret scanners,
/// logs, people).
pub const SECRET_PREFIX: &str = "sk_";

/// A freshly made key's secret, shown once.
pub struct NewSecret {
    pub id: String,
    /// The whole `sk_<id>_<secret>`.
    pub secret: String,
    /// What the store keeps.
    pub hash: String,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSecret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A new key id and secret from the operating system's random source.
pub fn new_secret() -> NewSecret {
    let mut raw = [0u8; 38];
    getrandom::fill(&mut raw).expect("the operating system provides randomness");
    let id = hex(&raw[..6]);
    let part = hex(&raw[6..]);
    NewSecret {
        hash: hash_secret(&part),
        secret: format!("{SECRET_PREFIX}{id}_{part}"),
        id,
    }
}

/// `sk_<id>_<secret>` → (id, secret), if it has that shape.
pub fn split_secret(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.trim().strip_prefix(SECRET_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id, 12) && ok(secret, 64)).then_some((id, secret))
}

/// What the store keeps of a secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a request comes from, once its key (if any) is checked.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The key, if the request carried one.
    pub key: Option<std::sync::Arc<ApiKey>>,
    /// Whether it may see every job: an admin key, or anyone when auth is off.
    pub sees_all: bool,
}

impl Identity {
    /// The owner recorded on the jobs it submits ("" for none).
    pub fn owner(&self) -> &str {
        self.key.as_ref().map_or("", |k| k.id.as_str())
    }

    /// The owner, or `none` when there is no key (for logs).
    pub fn owner_or<'a>(&'a self, none: &'a str) -> &'a str {
        self.key.as_ref().map_or(none, |k| k.id.as_str())
    }

    /// Whether a job with this owner is visible to it.
    pub fn may_see(&self, owner: &str) -> bool {
        self.sees_all || (!owner.is_empty() && owner == self.owner())
    }

    /// Whether it may publish and retire workflows: an admin key, a key made
    /// with `--publish`, or anyone with auth off.
    pub fn may_publish(&self) -> bool {
        self.sees_all || self.key.as_ref().is_some_and(|k| k.limits.publish)
    }

    /// Whether it may run a raw graph: an admin key, a key made with
    /// `--graphs`, or anyone with auth off.
    pub fn may_run_graphs(&self) -> bool {
        self.sees_all || self.key.as_ref().is_some_and(|k| k.limits.graphs)
    }

    /// Whether it holds an admin key.
    pub fn is_admin_key(&self) -> bool {
        self.key.as_ref().is_some_and(|k| k.role == Role::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_only_their_hash_is_kept() {
        let s = new_secret();
        assert!(s.secret.starts_with("sk_"));
        let (id, secret) = split_secret(&s.secret).unwrap();
        assert_eq!(id, s.id);
        assert_eq!(hash_secret(secret), s.hash);
        assert!(!s.hash.contains(secret));
        assert_ne!(new_secret().secret, s.secret);
        for bad in [
            "",
            "sk_",
            "sk_abc_def",
            "pk_0123456789ab_00",
            &s.secret.replace("sk_", ""),
        ] {
            assert!(split_secret(bad).is_none(), "{bad}");
        }
        assert!(
            format!("{s:?}").find(secret).is_none(),
            "Debug hides the secret"
        );
    }

    #[test]
    fn auto_means_off_on_loopback_only() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert_eq!(
                AuthMode::Auto.resolve(h, "", "loopback"),
                AuthMode::Off,
                "{h}"
            );
        }
        for h in ["0.0.0.0", "::", "192.168.1.5", "studio.example"] {
            assert_eq!(
                AuthMode::Auto.resolve(h, "", "loopback"),
                AuthMode::Keys,
                "{h}"
            );
        }
        assert_eq!(AuthMode::Off.resolve("0.0.0.0", "", ""), AuthMode::Off);
        // Behind a same-host proxy for a public name: keys.
        let proxied = AuthMode::Auto.resolve("127.0.0.1", "https://studio.example.com", "loopback");
        assert_eq!(proxied, AuthMode::Keys);
        let page = AuthMode::Auto.resolve("127.0.0.1", "", "loopback,https://app.example.com");
        assert_eq!(page, AuthMode::Keys);
        assert_eq!(AuthMode::Auto.resolve("127.0.0.1", "", "*"), AuthMode::Keys);
        let local =
            AuthMode::Auto.resolve("127.0.0.1", "http://localhost:5000", "http://[::1]:3000");
        assert_eq!(local, AuthMode::Off);
    }

    #[test]
    fn hosts_and_origins_are_read_without_their_ports() {
        assert_eq!(host_of("localhost:5000"), "localhost");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("evil.example"), "evil.example");
        assert!(is_loopback_name("app.localhost"));
        assert!(is_loopback_name("127.1.2.3"));
        assert!(!is_loopback_name("evil.example"));
        assert!(!is_loopback_name("localhost.evil.example"));
    }

    #[test]
    fn constant_time_comparison_is_still_a_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
