//! An API key as the store keeps it: who it is for, what it may do, its limits.

use serde::{Deserialize, Serialize};

use crate::job::Priority;
use utoipa::ToSchema;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits jobs and sees its own.
    User,
    /// Sees every job, manages keys.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// What a key may use. `None` is no limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyLimits {
    /// Requests per second (sustained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests allowed at once beyond the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Jobs it may have waiting at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// Jobs it may have running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Its share of the GPUs against other keys with work waiting (1–1000).
    #[serde(default = "one")]
    pub weight: u32,
    /// The highest priority its jobs may ask for.
    #[serde(default)]
    pub max_priority: Priority,
    /// It may publish workflows (`POST /api/workflows`); admins always may.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
    /// It may run raw graphs (`graph` in a submission, ComfyUI's `POST /prompt`);
    /// admins always may.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub graphs: bool,
    /// GPU-seconds its jobs may use per UTC day; over it, submissions are
    /// refused (`429 budget-exhausted`) until the day turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_seconds_per_day: Option<u64>,
    /// The same per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_seconds_per_month: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            rate: None,
            burst: None,
            max_queued: None,
            max_running: None,
            weight: 1,
            max_priority: Priority::Normal,
            publish: false,
            graphs: false,
            gpu_seconds_per_day: None,
            gpu_seconds_per_month: None,
        }
    }
}

impl KeyLimits {
    /// The burst in force: the given one, or one second of the rate (at least 1).
    pub fn burst_or_default(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.rate.map_or(1, |r| r.ceil().max(1.0) as u32))
    }

    /// Checks the values a person gave; `Err` names the setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(r) = self.rate
            && !(r.is_finite() && (0.001..=1_000_000.0).contains(&r))
        {
            return Err((
                "rate",
                "must be from 0.001 to 1000000 requests per second".into(),
            ));
        }
        if self.burst == Some(0) {
            return Err(("burst", "must be at least 1".into()));
        }
        if self.max_queued == Some(0) || self.max_running == Some(0) {
            let which = if self.max_queued == Some(0) {
                "max_queued"
            } else {
                "max_running"
            };
            return Err((
                which,
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        for (name, v) in [
            ("gpu_seconds_per_day", self.gpu_seconds_per_day),
            ("gpu_seconds_per_month", self.gpu_seconds_per_month),
        ] {
            if v.is_some_and(|v| v == 0 || v > 1_000_000_000) {
                return Err((
                    name,
                    "must be from 1 to 1000000000 (leave it out for no budget)".into(),
                ));
            }
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(("weight", "must be from 1 to 1000".into()));
        }
        Ok(())
    }
}

/// An API key as stored. The secret itself is never stored, only its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_at: String,
    /// When it was revoked; empty while it is valid.
    #[serde(default)]
    pub revoked_at: String,
    #[serde(default)]
    pub limits: KeyLimits,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        !self.revoked_at.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key always serializes")
    }

    pub fn from_json(s: &str) -> Option<ApiKey> {
        serde_json::from_str(s).ok()
    }
}

/// A change to a key's name, role or limits. `Some(None)` clears a limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub rate: Option<Option<f64>>,
    pub burst: Option<Option<u32>>,
    pub max_queued: Option<Option<u32>>,
    pub max_running: Option<Option<u32>>,
    pub weight: Option<u32>,
    pub max_priority: Option<Priority>,
    pub publish: Option<bool>,
    pub graphs: Option<bool>,
    pub gpu_seconds_per_day: Option<Option<u64>>,
    pub gpu_seconds_per_month: Option<Option<u64>>,
}

impl KeyUpdate {
    /// The key with the change applied (checked by the caller).
    pub fn apply(&self, key: &ApiKey) -> ApiKey {
        let mut k = key.clone();
        if let Some(n) = &self.name {
            k.name = n.clone();
        }
        if let Some(r) = self.role {
            k.role = r;
        }
        let l = &mut k.limits;
        if let Some(v) = self.rate {
            l.rate = v;
        }
        if let Some(v) = self.burst {
            l.burst = v;
        }
        if let Some(v) = self.max_queued {
            l.max_queued = v;
        }
        if let Some(v) = self.max_running {
            l.max_running = v;
        }
        if let Some(v) = self.weight {
            l.weight = v;
        }
        if let Some(v) = self.publish {
            l.publish = v;
        }
        if let Some(v) = self.graphs {
            l.graphs = v;
        }
        if let Some(v) = self.gpu_seconds_per_day {
            l.gpu_seconds_per_day = v;
        }
        if let Some(v) = self.gpu_seconds_per_month {
            l.gpu_seconds_per_month = v;
        }
        if let Some(v) = self.max_priority {
            l.max_priority = v;
        }
        k
    }

    pub fn is_empty(&self) -> bool {
        *self == KeyUpdate::default()
    }
}

/// A key's name: 1–100 printable characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(char::is_control) || name.trim().is_empty() {
        return Err("must be 1 to 100 printable characters".into());
    }
    if let Some(c) = name.chars().find(|c| is_format_char(*c)) {
        return Err(format!(
            "must not hold invisible formatting characters (U+{:04X}): they make a name read as another in lists and logs",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode's format characters (category Cf) and the other invisible ones that
/// reorder or hide text: bidirectional overrides and isolates, zero-width
/// characters, the soft hyphen, the byte-order mark, interlinear annotations
/// (those of the Basic Multilingual Plane, which the API document's pattern for
/// names can state; `api/keys.rs` lists the same).
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB)
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_names_refuse_invisible_formatting() {
        assert!(check_name("render farm").is_ok());
        assert!(check_name("Zoë's studio 🎨").is_ok());
        for bad in [
            "admin\u{202E}nimda",
            "a\u{200B}b",
            "\u{FEFF}x",
            "",
            " ",
            "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn limits_are_checked_and_defaults_are_sensible() {
        assert!(KeyLimits::default().check().is_ok());
        let l = KeyLimits {
            rate: Some(2.5),
            ..KeyLimits::default()
        };
        assert_eq!(l.burst_or_default(), 3);
        for (bad, field) in [
            (
                KeyLimits {
                    rate: Some(0.0),
                    ..KeyLimits::default()
                },
                "rate",
            ),
            (
                KeyLimits {
                    rate: Some(f64::NAN),
                    ..KeyLimits::default()
                },
                "rate",
            ),
            (
                KeyLimits {
                    burst: Some(0),
                    ..KeyLimits::default()
                },
                "burst",
            ),
            (
                KeyLimits {
                    max_running: Some(0),
                    ..KeyLimits::default()
                },
                "max_running",
            ),
            (
                KeyLimits {
                    weight: 0,
                    ..KeyLimits::default()
                },
                "weight",
            ),
        ] {
            assert_eq!(bad.check().unwrap_err().0, field);
        }
    }

    #[test]
    fn a_key_round_trips_and_updates_apply() {
        let k = ApiKey {
            id: "0123456789ab".into(),
            name: "alice".into(),
            role: Role::User,
            hash: "00".into(),
            created_at: "t".into(),
            revoked_at: String::new(),
            limits: KeyLimits::default(),
        };
        assert_eq!(ApiKey::from_json(&k.to_json()).unwrap(), k);
        let u = KeyUpdate {
            weight: Some(3),
            max_running: Some(Some(2)),
            ..KeyUpdate::default()
        };
        let k2 = u.apply(&k);
        assert_eq!((k2.limits.weight, k2.limits.max_running), (3, Some(2)));
        let clear = KeyUpdate {
            max_running: Some(None),
            ..KeyUpdate::default()
        };
        assert_eq!(clear.apply(&k2).limits.max_running, None);
        assert!(Priority::High.rank() < Priority::Low.rank());
    }
}
