//! logship's integration tests: the real binary against moto, over real HTTP.
//!
//! One test binary (one moto server) with a module per concern.

mod airflow_layout;
mod common;
mod delivery;
mod deployment;
mod faults;
mod forward;
mod lifecycle;
mod rotation;
