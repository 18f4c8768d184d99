//! Studio Core: an HTTP API, a reliable job queue and workers that run image
//! generation jobs on ComfyUI servers.
//!
//! The map is in `docs/architecture.md`; `main.rs` shows how the parts start.

pub mod api;
pub mod app;
pub mod auth;
pub mod backends;
pub mod capabilities;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod comfy;
pub mod config;
pub mod job;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod picture;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod transport;
pub mod units;
pub mod uploads;
pub mod webhooks;
pub mod worker;
pub mod workflow;
