//! A real S3 server for tests: `s3s-fs` (crates.io), which checks SigV4 signatures.
//! `scripts/test` installs it (`cargo install s3s-fs --version 0.14.1 --features
//! binary --locked`); `STUDIO_S3S_FS` may name another binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

pub const ACCESS_KEY: &str = "studio-test-access";
pub const SECRET_KEY: &str = "studio-test-secret-0123456789";

pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("STUDIO_S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let p = home.join("bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs must be installed (scripts/test does it: cargo install s3s-fs --version 0.14.1 --features binary --locked)"
    );
    p
}

/// A running s3s-fs with one bucket.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub root: TempDir,
    _child: super::KillOnDrop,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = TempDir::new();
        let bucket = "studio-test".to_owned();
        std::fs::create_dir_all(root.path().join(&bucket)).unwrap();
        let port = super::free_port();
        let child = super::KillOnDrop(
            Command::new(binary())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("s3s-fs starts"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket,
            root,
            _child: child,
        }
    }

    /// The file s3s-fs keeps for an object.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// Settings for the app: this server, this bucket under `prefix`.
    pub fn configure(&self, a: &mut studio_core::config::ServerArgs, prefix: &str, secret: &str) {
        a.storage = studio_core::config::StorageChoice::S3 {
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
        };
        a.s3_endpoint = Some(self.endpoint.clone());
        a.s3_region = Some("us-east-1".into());
        a.s3_access_key_id = Some(ACCESS_KEY.into());
        a.s3_secret_access_key = Some(secret.into());
    }
}
