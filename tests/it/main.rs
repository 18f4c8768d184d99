//! The integration test binary (one binary: one link, shared harness).

#[macro_use]
mod support;

mod api;
mod batches;
mod browser;
mod capabilities;
mod cli;
mod cluster;
mod comfy_protocol;
mod comfyui_api;
mod events;
mod fairness;
mod faults;
mod idempotency;
mod images;
mod keys;
mod launch;
mod layers;
mod limits;
mod mcp;
mod metrics;
mod openai;
mod openapi;
mod previews;
mod redis_interop;
mod retention;
mod review3;
mod s3;
mod sentinel;
mod steering;
mod store_conformance;
mod ui_conversion;
mod upgrade;
mod uploads;
mod usage;
mod webhooks;
mod worker_e2e;
mod workflows;
