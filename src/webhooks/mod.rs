//! Webhooks, per the Standard Webhooks spec (<https://www.standardwebhooks.com>):
//! a job submitted with a `webhook_url` (or under a `--webhook-url` default) gets a
//! signed `POST` when it starts (if asked for), finishes or fails.
//!
//! Durable by construction: the API writes the job's webhook record into the store
//! (an outbox: the record, plus an entry due at some time) before the job is
//! queued. Worker processes claim due entries under a lease, read the job, and
//! deliver what its state calls for; a delivery that fails is due again on the
//! retry schedule. A job's change (any process, any path to a final state) wakes
//! its entry at once; a missed wake-up is caught by the entry's own recheck time.
//! A worker that dies mid-delivery leaves the entry leased; the lease runs out and
//! another worker delivers again, with the same `webhook-id` (at least once).
//!
//! Outbound requests go only to public addresses (IP literals checked as they are,
//! names by the connection's own resolver) unless `--webhook-allow-private`;
//! redirects are not followed; no proxy is used.

pub mod egress;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Every event a webhook can ask for.
pub const EVENTS: [&str; 3] = ["job.started", "job.finished", "job.failed"];
/// The one event of a batch's own webhook: its last job has ended.
pub const BATCH_FINISHED: &str = "batch.finished";
/// The events sent when a submission does not say.
pub const DEFAULT_EVENTS: [&str; 2] = ["job.finished", "job.failed"];
/// Longest `webhook_url`.
pub const MAX_URL_LEN: usize = 2048;
/// The spec's schedule: after the first attempt, retries 5 s, 5 min, 30 min, 2 h,
/// 5 h, 10 h and 10 h after each failure (about 27.5 h in all).
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
/// A record whose job is not found yet (the job is being queued) is looked at
/// again for this long before it is dropped.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);
/// How long a record is kept beyond its job's time to live (so the last retries of
/// a job that expired can still be seen and made).
pub const RECORD_EXTRA_TTL: Duration = Duration::from_secs(48 * 3600);
/// Bytes of a receiver's answer kept for `last_error`.
pub const MAX_ERROR_BODY: usize = 200;

/// How webhooks are sent. Shared by the API (validation, the default URL) and the
/// workers (delivery).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Signing secrets (`whsec_…`); every one signs each message (rotation).
    pub secrets: Vec<Secret>,
    /// The URL used when a submission names none.
    pub default_url: Option<String>,
    /// Sends to loopback, private, link-local and other non-public addresses too.
    pub allow_private: bool,
    /// Longest one delivery attempt may take.
    pub timeout: Duration,
    /// Delays before each retry; its length bounds the attempts (one more).
    pub schedule: Vec<Duration>,
    /// Outbox entries at most (submissions with a webhook beyond are refused).
    pub max_pending: u64,
    /// Webhooks one key may have waiting (`--webhook-max-pending-per-key`).
    pub max_pending_per_key: u64,
    /// Deliveries in flight at once in one worker process.
    pub concurrency: usize,
    /// How long signed picture URLs in a body stay valid (jobs with an owner).
    pub image_url_ttl: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secrets: Vec::new(),
            default_url: None,
            allow_private: false,
            timeout: Duration::from_secs(15),
            schedule: parse_schedule(DEFAULT_SCHEDULE).expect("the default schedule parses"),
            max_pending: 100_000,
            max_pending_per_key: 1_000,
            concurrency: 16,
            image_url_ttl: Duration::from_secs(3600),
        }
    }
}

impl WebhookSettings {
    /// How long a claimed entry is held before another worker may take it: longer
    /// than one attempt can last.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}

/// Parses `5s,5m,30m,…` (each one a duration `parse_duration` reads).
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let delays: Vec<Duration> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(crate::units::parse_duration)
        .collect::<Result<_, _>>()?;
    if delays.len() > 20 {
        return Err("at most 20 retries".into());
    }
    if delays
        .iter()
        .any(|d| *d > Duration::from_secs(7 * 24 * 3600))
    {
        return Err("each retry delay must be at most 7 days".into());
    }
    Ok(delays)
}

/// A signing secret: `whsec_` and the base64 of 24–64 random bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(s: &str) -> Result<Secret, String> {
        let b64 = s
            .trim()
            .strip_prefix("whsec_")
            .ok_or("a webhook secret starts with whsec_ (make one with `studio webhook-secret`)")?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| "a webhook secret is whsec_ followed by base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "a webhook secret holds 24 to 64 bytes (this one {})",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    /// A fresh secret (32 random bytes), as `whsec_…`.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        format!("whsec_{}", B64.encode(bytes))
    }
}

/// Parses a comma-separated list of secrets (`--webhook-secret a,b`).
pub fn parse_secrets(s: &str) -> Result<Vec<Secret>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Secret::parse)
        .collect()
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`
/// for each secret, separated by spaces.
pub fn signature(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&s.0).expect("HMAC takes any key");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A job's webhook: where to, which events, and how delivery is going. Kept in
/// the store beside the job; `GET /api/jobs/<id>` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct WebhookRecord {
    pub url: String,
    /// Of `job.started`, `job.finished`, `job.failed`.
    pub events: Vec<String>,
    /// `waiting` (for the job), `retrying`, `delivered`, `failed` (out of
    /// retries), `gone` (the receiver answered 410: nothing more is sent),
    /// `refused` (the address is not public).
    pub state: String,
    /// The `job.started` message is behind us (sent, or not wanted).
    pub started_done: bool,
    /// Attempts at the message being sent now.
    pub attempts: u32,
    /// Messages delivered.
    pub delivered: u32,
    /// Why the last attempt failed; empty after a success.
    pub last_error: String,
    /// The HTTP status of the last answer (0: none came).
    pub last_status: u16,
    /// The `webhook-id` of the last message attempted.
    pub last_message_id: String,
    /// When the next attempt is due (ms since the epoch; 0: none planned).
    pub next_attempt_ms: u64,
    /// When the last message was delivered (ms since the epoch; 0: never).
    pub delivered_ms: u64,
    pub created_ms: u64,
    /// The API key whose job it is ("" for none): its pending webhooks are
    /// capped, and deliveries are shared fairly between keys.
    #[serde(default)]
    pub owner: String,
    /// A batch's webhook (keyed by the batch id; sends `batch.finished`), not a
    /// job's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl WebhookRecord {
    pub fn new(url: String, events: Vec<String>, now_ms: u64) -> Self {
        WebhookRecord {
            started_done: !events.iter().any(|e| e == "job.started"),
            url,
            events,
            state: "waiting".into(),
            created_ms: now_ms,
            ..WebhookRecord::default()
        }
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// Nothing more will be sent.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state.as_str(),
            "delivered" | "failed" | "gone" | "refused"
        )
    }
}

/// Why a `webhook_url` or `webhook_events` is refused.
pub fn check_url(s: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if s.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let url = reqwest::Url::parse(s).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials (user:password@); the signature authenticates the sender"
                .into(),
        );
    }
    match url.host() {
        None => return Err("must name a host".into()),
        Some(url::Host::Domain("")) => return Err("must name a host".into()),
        Some(host) if !allow_private => egress::check_literal(Some(host))?,
        Some(_) => {}
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url)
}

/// The `webhook-id` of a job's message: the same on every attempt, so a receiver
/// can drop repeats.
pub fn message_id(job_id: &str, event: &str) -> String {
    format!("msg_{job_id}_{}", event.trim_start_matches("job."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks spec's reference libraries.
    #[test]
    fn signs_as_the_spec_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs() {
        let a = Secret::parse(&Secret::generate()).unwrap();
        let b = Secret::parse(&Secret::generate()).unwrap();
        let sig = signature(&[a.clone(), b], "msg_1", 1, b"{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[a], "msg_1", 1, b"{}"));
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err(), "5 bytes");
        assert_eq!(parse_secrets(" , ").unwrap().len(), 0);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/studio?x=1", false).is_ok());
        for (bad, why) in [
            ("ftp://example.com/", "http or https"),
            ("https://user:pw@example.com/", "credentials"),
            ("http://127.0.0.1:9/", "loopback"),
            ("http://10.1.2.3/", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::1]/", "loopback"),
            ("http://[fd00:ec2::254]/", "private"),
            ("http://0x7f.1/", "loopback"),
            ("not a url", "not a URL"),
            ("https://example.com/#x", "fragment"),
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)), false).is_err());
    }

    /// The longest, oddest URLs the OpenAPI document's pattern allows are taken
    /// (the fuzzer counts on it).
    #[test]
    fn what_the_documented_pattern_allows_is_taken() {
        let label = format!("a{}", "-b".repeat(30));
        let digits = format!("0{}", "-9".repeat(30));
        for url in [
            format!("https://{digits}.{label}.{label}.{label}:9999/a/./~x/..//-_"),
            "http://x".to_owned(),
            "http://0.0.0.a".to_owned(),
            "http://0x1.xn-a:1/".to_owned(),
        ] {
            assert!(
                check_url(&url, false).is_ok(),
                "{url}: {:?}",
                check_url(&url, false)
            );
        }
    }

    #[test]
    fn the_default_schedule_is_the_specs() {
        let s = parse_schedule(DEFAULT_SCHEDULE).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s[0], Duration::from_secs(5));
        assert_eq!(s[6], Duration::from_secs(36_000));
        assert!(parse_schedule("5s,soon").is_err());
    }
}
