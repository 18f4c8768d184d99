//! The ComfyUI stand-in as a program that takes ComfyUI's `main.py` command line,
//! for the tests of `--comfyui-launch` (give it as `--comfyui-python`; the first
//! argument, the path of `main.py`, is ignored):
//!
//! `comfyui_standin main.py --listen 127.0.0.1 --port P --preview-method auto
//!  --output-directory D --temp-directory T [--cpu] [test flags]`
//!
//! Test flags: `--standin-exit-at-start` (prints a traceback and exits 1, like a
//! ComfyUI missing a module), `--standin-duration-ms N` (per prompt),
//! `--standin-ignore-sigterm`, `--standin-slow-start-ms N` (binds after N ms).
//! It prints what ComfyUI prints at start. A hang is made from outside, with
//! SIGSTOP.

#[path = "../tests/it/support/standin.rs"]
mod standin;

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut port: Option<u16> = None;
    let mut listen = "127.0.0.1".to_owned();
    let mut knobs = standin::Knobs::default();
    let mut exit_at_start = false;
    let mut slow_start = Duration::ZERO;
    let mut i = 0;
    let value = |i: usize| -> String {
        args.get(i + 1).cloned().unwrap_or_else(|| {
            eprintln!("main.py: error: argument {} expected one argument", args[i]);
            std::process::exit(2)
        })
    };
    while i < args.len() {
        match args[i].as_str() {
            "--port" => {
                port = value(i).parse().ok();
                i += 1;
            }
            "--listen" => {
                listen = value(i);
                i += 1;
            }
            "--preview-method" | "--output-directory" | "--temp-directory" => i += 1,
            "--standin-duration-ms" => {
                knobs.duration = Duration::from_millis(value(i).parse().unwrap_or(60));
                i += 1;
            }
            "--standin-slow-start-ms" => {
                slow_start = Duration::from_millis(value(i).parse().unwrap_or(0));
                i += 1;
            }
            "--standin-exit-at-start" => exit_at_start = true,
            "--standin-ignore-sigterm" => {
                // SAFETY: setting a signal disposition before any thread exists.
                unsafe {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                }
            }
            _ => {}
        }
        i += 1;
    }
    println!("Total VRAM 0 MB, total RAM 24000 MB");
    println!("Device: cpu");
    if exit_at_start {
        eprintln!("Traceback (most recent call last):");
        eprintln!("  File \"main.py\", line 1, in <module>");
        eprintln!("ModuleNotFoundError: No module named 'torch'");
        std::process::exit(1);
    }
    std::thread::sleep(slow_start);
    let Some(port) = port else {
        eprintln!("main.py: --port is required by this stand-in");
        std::process::exit(2);
    };
    let addr: SocketAddr = format!("{listen}:{port}").parse().unwrap_or_else(|e| {
        eprintln!("main.py: bad --listen/--port: {e}");
        std::process::exit(2)
    });
    let _server = standin::StandIn::start_on(addr, knobs);
    println!("Starting server\n");
    println!("To see the GUI go to: http://{addr}");
    loop {
        std::thread::park();
    }
}
