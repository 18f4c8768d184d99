//! Hosts made of Linux network namespaces: each host is a namespace with its own
//! loopback and one veth link to a bridge in the test's namespace, on a private
//! /24. Processes run on a host through `ip netns exec`; the test process reaches
//! every host over the bridge. A host's link can be cut and restored. Everything
//! is removed when the [`Net`] is dropped (and leftovers of an earlier run that
//! died are removed when the next one starts).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Names start with this, so a later run can find what a dead one left.
const TAG: &str = "scx";

/// One host: a namespace, its address, and the bridge end of its link.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    link: String,
}

impl Host {
    /// A command that runs `program` on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

/// A set of hosts on one bridge.
pub struct Net {
    bridge: String,
    pub hosts: Vec<Host>,
    /// The test process's own address on the bridge.
    pub gateway: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges a dead run of this test left behind.
fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name
            .strip_prefix(TAG)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            && !alive(pid)
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if let Some(pid) = name
                .strip_prefix(TAG)
                .and_then(|r| r.strip_suffix("br"))
                .and_then(|p| p.parse::<u32>().ok())
                && !alive(pid)
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Net {
    /// Makes `names.len()` hosts. Fails (never skips) when namespaces cannot be
    /// made here: the caller's test must not pass without them.
    pub fn new(names: &[&str]) -> Result<Net, String> {
        sweep();
        let pid = std::process::id();
        // A /24 of 10.213.0.0/16 for this run.
        let subnet = (pid % 250) as u8 + 1;
        let bridge = format!("{TAG}{pid}br");
        let mut net = Net {
            bridge: bridge.clone(),
            hosts: Vec::new(),
            gateway: Ipv4Addr::new(10, 213, subnet, 254),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])
            .map_err(|e| format!("cannot make a bridge (root and ip netns needed): {e}"))?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, n) in names.iter().enumerate() {
            let name = format!("{TAG}{pid}-{n}");
            let link = format!("{TAG}{pid}v{i}");
            let addr = Ipv4Addr::new(10, 213, subnet, i as u8 + 1);
            ip(&["netns", "add", &name])?;
            // Registered at once, so a failure below still cleans it up.
            net.hosts.push(Host {
                name: name.clone(),
                ip: addr,
                link: link.clone(),
            });
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ])?;
            ip(&["link", "set", &link, "master", &bridge, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn host(&self, name: &str) -> &Host {
        let full = format!("-{name}");
        self.hosts
            .iter()
            .find(|h| h.name.ends_with(&full))
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts a host off the network (its link goes down; its own loopback stays).
    pub fn cut(&self, host: &Host) {
        ip(&["link", "set", &host.link, "down"]).unwrap();
    }

    /// Reconnects a host that was cut off.
    pub fn restore(&self, host: &Host) {
        ip(&["link", "set", &host.link, "up"]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
