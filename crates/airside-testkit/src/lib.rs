//! Test support shared by every airside crate's integration tests.
//!
//! * [`moto`]: one moto server per test process, on a free loopback port,
//!   started from the project's virtualenv and stopped when the process exits.
//! * [`FaultProxy`]: an HTTP proxy between a daemon and moto that answers a
//!   share of requests with 500 InternalError, 503 SlowDown or a throttling
//!   error, or drops the connection, and counts what it injected so a test can
//!   prove faults really happened.
//! * [`StrictS3`]: the proxy's strict-S3 mode, which enforces documented S3 behaviour
//!   that moto lacks (encrypted objects' ETags, checksums, conditional requests).
//! * [`StrictApi`]: with it ([`FaultProxy::start_strict_aws`]), CloudWatch PutMetricData
//!   and Firehose PutRecordBatch requests that break the documented limits are refused
//!   as the services refuse them, and what was accepted is kept for tests to read.
//! * [`MemoryCap`]: runs a daemon in a memory cgroup limited as its task definition
//!   limits its container, and reports OOM kills and the peak.
//! * [`FuseMount`]: a bindfs (FUSE) mount that stands in for the shared EFS folder.
//! * [`EmptyRoot`]: a chroot holding only a static binary, `/etc/hosts` and
//!   `/etc/resolv.conf`, to prove the binaries run in a FROM-scratch image.
//! * [`KillOnDrop`]: a daemon child process, killed when dropped, with SIGTERM and a
//!   bounded wait for its exit; [`logged_admin_addr`] reads back the address a daemon
//!   started on port 0 bound.
//! * [`s3`]: S3 clients for moto, buckets and objects, for the daemons' tests.
//! * [`metric_contract`]: the check that a daemon's README metrics table and its telemetry
//!   module name the same metrics, and that no code spells a name outside that module.
//! * [`EcsAgent`]: a stand-in for the ECS agent's task scale-in protection endpoint,
//!   with the documented rules and failure answers, and the protection's timeline.
//! * Small helpers: unique resource names, AWS environment for child processes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ecs_agent;
mod empty_root;
mod fault_proxy;
mod fuse_mount;
mod memory_cap;
pub mod metric_contract;
mod moto;
mod process;
pub mod s3;
mod server;
mod strict_api;
mod strict_s3;

pub use ecs_agent::{AgentMode, AgentRequest, EcsAgent, PROTECTION_PATH, agent_uri, protected_at};
pub use empty_root::{EmptyRoot, dist_binary, dist_dir};
pub use fault_proxy::{
    ExchangeRewrite, Fault, FaultPlan, FaultProxy, FaultStats, ResponseFix, ResponseRewrite,
};
pub use fuse_mount::FuseMount;
pub use memory_cap::{CapReport, CappedDaemon, MemoryCap, taskdef_memory_mib};
pub use moto::{Moto, moto, unique_name, workspace_root};
pub use process::{KillOnDrop, free_addr, logged_admin_addr, logged_field};
pub use strict_api::{AcceptedDatum, Refusal, StrictApi};
pub use strict_s3::{Encryption, StrictS3};
