//! dagsync's integration tests, one test binary (`autotests = false` in Cargo.toml, as
//! ripgrep lays them out): each module is a room of tests, `support` their helpers.

// The deployment the task definitions ship: strict S3, memory limits, a shared folder.
mod deployment;
mod support;
mod sync;
