//! The integration test binary (one binary: one link, shared harness).

mod support;

mod store_conformance;
mod api;
mod redis_interop;
