//! What the stages of a running metricship share: where interval datums go
//! ([`Output`]) and the state the receive thread, the flush loop, the publisher, the
//! health exporter and `/metrics` all read (`Shared`). Built once by
//! [`crate::Running::start`]; the stages depend on this module, never on the crate root.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::aggregate::Aggregator;
use crate::cloudwatch::Backlog;
use crate::config::Config;
use crate::datum::Allowlist;
use crate::ingest::ReceiveCounters;
use crate::signal::{Input, Signal, SignalSettings};

/// Where interval datums go.
#[derive(Clone)]
pub enum Output {
    /// PutMetricData with this client.
    CloudWatch(aws_sdk_cloudwatch::Client),
    /// EMF lines on stdout.
    Emf,
    /// Nowhere (Prometheus only).
    None,
}

/// State shared by the daemon's tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) aggregator: Arc<Mutex<Aggregator>>,
    pub(crate) signal_settings: SignalSettings,
    pub(crate) allowlist: Allowlist,
    pub(crate) last_signal: Mutex<Option<Signal>>,
    pub(crate) missing_inputs: Mutex<Vec<Input>>,
    pub(crate) backlog: Arc<Mutex<Backlog>>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) output: Output,
    pub(crate) counters: Arc<ReceiveCounters>,
}
