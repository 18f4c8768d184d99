//! Signed picture URLs: with auth on, an owner's image URLs carry an expiry and an
//! HMAC-SHA256 of the job, the file and the expiry, made with a secret every API
//! process reads from the store. `<img src>` works without headers; a URL leaks
//! only one file, for a while.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::job::UrlSigning;

type HmacSha256 = Hmac<Sha256>;

/// Signs URLs for one server secret.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

impl UrlSigner {
    pub fn new(secret: &[u8]) -> Self {
        UrlSigner {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, job: &str, file: &str, exp: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(job.as_bytes());
        mac.update(b"/");
        mac.update(file.as_bytes());
        mac.update(b"?");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    /// The query to append to `/images/<job>/<file>`: `exp=<unix seconds>&sig=<hex>`.
    pub fn query(&self, job: &str, file: &str, exp: u64) -> String {
        let sig = super::hex(&self.mac(job, file, exp).finalize().into_bytes());
        format!("exp={exp}&sig={sig}")
    }

    /// Whether `sig` signs this job, file and expiry, and the expiry is after `now`.
    pub fn verify(&self, job: &str, file: &str, exp: u64, sig: &str, now: u64) -> bool {
        if exp < now || sig.len() != 64 {
            return false;
        }
        let Some(bytes) = unhex(sig) else {
            return false;
        };
        self.mac(job, file, exp).verify_slice(&bytes).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Signs picture URLs for one answer (one expiry for all of them).
pub struct Signing<'a> {
    pub signer: &'a UrlSigner,
    pub exp: u64,
}

impl UrlSigning for Signing<'_> {
    fn sign(&self, job_id: &str, file: &str, url: &str) -> String {
        format!("{url}?{}", self.signer.query(job_id, file, self.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_until_they_expire_and_only_for_their_file() {
        let s = UrlSigner::new(b"secret");
        let q = s.query("job-1", "a.png", 1000);
        let sig = q.split("sig=").nth(1).unwrap();
        assert!(s.verify("job-1", "a.png", 1000, sig, 999));
        assert!(s.verify("job-1", "a.png", 1000, sig, 1000));
        assert!(!s.verify("job-1", "a.png", 1000, sig, 1001), "expired");
        assert!(!s.verify("job-1", "b.png", 1000, sig, 0), "another file");
        assert!(!s.verify("job-2", "a.png", 1000, sig, 0), "another job");
        assert!(!s.verify("job-1", "a.png", 2000, sig, 0), "another expiry");
        assert!(!UrlSigner::new(b"other").verify("job-1", "a.png", 1000, sig, 0));
        assert!(!s.verify("job-1", "a.png", 1000, "zz", 0));
    }
}
