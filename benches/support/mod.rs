//! Shared by the benchmarks: the test Redis, free ports, the `studio` child process,
//! percentiles.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Redis the benchmarks use: `TEST_REDIS_URL` or 127.0.0.1:6379.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// Deletes every key under a benchmark's prefix.
pub fn cleanup_redis(prefix: &str) {
    if let Ok(mut c) = redis::Client::open(redis_url().as_str()).and_then(|c| c.get_connection()) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{prefix}*"))
            .query(&mut c)
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut c);
        }
    }
}

/// A unique Redis key prefix.
pub fn prefix(tag: &str) -> String {
    format!("{tag}{}:", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted values.
pub fn pct<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1])
}

/// A `studio` process (release build) with its own data directory; killed and
/// cleaned up when dropped.
pub struct Studio {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Studio {
    /// `studio <role>` on a free port with these extra environment variables; returns
    /// once it accepts connections.
    pub fn start(role: &str, envs: &[(&str, String)]) -> Studio {
        Self::start_bin(Path::new(env!("CARGO_BIN_EXE_studio")), role, envs)
    }

    /// Like `start`, with another `studio` binary (a baseline build to compare with).
    pub fn start_bin(bin: &Path, role: &str, envs: &[(&str, String)]) -> Studio {
        let dir =
            std::env::temp_dir().join(format!("studio-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(role)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("STUDIO_DATA_DIR", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("studio starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "studio did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Studio { child, port, dir }
    }

    /// `studio keys create --name bench <extra>` on this server's store (the
    /// same `envs` it started with): the key as an `Authorization` value.
    pub fn create_key(&self, bin: &Path, envs: &[(&str, String)], extra: &[&str]) -> String {
        let out = Command::new(bin)
            .args(["keys", "create", "--name", "bench"])
            .args(extra)
            .env_clear()
            .env("STUDIO_DATA_DIR", &self.dir)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("studio keys create runs");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let secret = stdout.lines().last().unwrap().trim();
        format!("Bearer {secret}")
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A figure from `/proc/<pid>/status` (`VmHWM:` peak, `VmRSS:` now), in MiB.
    pub fn memory_mib(&self, field: &str) -> f64 {
        memory_mib(self.child.id(), field)
    }
}

impl Drop for Studio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A figure from a process's `/proc/<pid>/status`, in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time a process has used so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count from after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15, in clock ticks (100 per second here).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
