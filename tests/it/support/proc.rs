//! `studio` as a real child process: started with a clean environment, its log in a
//! file, killed when dropped; and what the kernel says about a process (resident
//! memory, open file descriptors).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, studio_bin};

/// A `studio` child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, String)], log: PathBuf) -> Proc {
        Self::spawn_cmd(Command::new(studio_bin()), args, envs, log)
    }

    /// `studio` with `args`, run through `cmd` (e.g. `ip netns exec <host> studio`,
    /// which becomes the studio process itself).
    pub fn spawn_cmd(
        mut cmd: Command,
        args: &[&str],
        envs: &[(&str, String)],
        log: PathBuf,
    ) -> Proc {
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("STUDIO_LOG_FILE", &log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("studio starts"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The base URL it listens on (`http://host:port`), from its log.
    pub fn wait_listening(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(i) = text.find("listening on http://") {
                let rest = &text[i + "listening on ".len()..];
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "studio did not start; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits a job to a server over HTTP; its id.
pub async fn submit(base: &str, body: serde_json::Value) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/generate"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("not accepted: {v}"))
        .to_owned()
}

pub async fn get(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

pub async fn wait_status(
    base: &str,
    id: &str,
    limit: Duration,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(res) = reqwest::get(format!("{base}/api/status/{id}")).await
            && let Ok(v) = res.json::<serde_json::Value>().await
        {
            if want(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not in the expected state: {v}"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id}: no answer from {base}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Waits for a final status (`finished` or `failed`) of a job on a server.
pub async fn wait_final(base: &str, id: &str, limit: Duration) -> serde_json::Value {
    wait_status(base, id, limit, |v| {
        v["status"] == "finished" || v["status"] == "failed"
    })
    .await
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A private `redis-server` on a free loopback port, with AOF, in its own directory.
pub struct PrivateRedis {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = crate::support::free_port();
        let mut r = PrivateRedis {
            child: None,
            port,
            dir: TempDir::new(),
        };
        r.boot();
        r
    }

    pub fn boot(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the outage test (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
