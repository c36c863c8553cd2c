//! End-to-end tests that start the real `phivault` binaries on
//! `127.0.0.1:0` and drive them as users would. The shared harness lives
//! here; the tests themselves live in `tests/tests/`.
//!
//! The crate is empty until the gRPC service lands; the vault core's own
//! tests are in `vault/tests/`.
