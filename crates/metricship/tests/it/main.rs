//! metricship's integration tests: the real binary, one process per test, against moto
//! over real HTTP (and the test kit's strict-AWS proxy in front of it).
//!
//! One test binary with a module per concern; the memory flood is `tests/memory.rs`.
//! Every daemon under test is a process of its own, so that its `/metrics` counts only
//! its own work while the tests run side by side.

mod backlog;
mod binary;
mod common;
mod deployment;
mod emulator;
mod faults;
