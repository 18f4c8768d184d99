//! Schemathesis (from PyPI) against `/openapi.json` on both stores. A binary of its
//! own so that the fuzzer's requests, with their per-request timeout, do not compete
//! with the rest of the suite for the two cores.

#[allow(unused_macros, unused_imports)]
#[path = "../it/support/mod.rs"]
#[macro_use]
mod support;

mod schemathesis;
