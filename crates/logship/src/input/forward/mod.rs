//! The Fluentd forward protocol, as FireLens speaks it to its log router: logship as
//! the router of an ECS task (issue 16).
//!
//! The data flows one way:
//! [`server`] (sockets, frames by [`frame`], events to records by [`event`], acks) →
//! [`buffer`] (the disk buffer: written, then acknowledged to the sender) → this module's
//! reader loop (blocks → [`Chunk`]s, routed by tag) → the outputs, which acknowledge
//! into the buffer's ledger, and delivered segments are deleted.
//!
//! Routing: with a FireLens configuration ([`firelens`]), a record goes to the outputs
//! of every `[OUTPUT]` its tag matches (none: dropped, as the health check's `null`);
//! a tag no output matches, or every tag without that file, goes to the outputs given
//! as flags that take records (not `airflow-s3`, which takes task log files only).
//! Every output sees every block, as an empty chunk when the block is not its, so that
//! its acknowledgements stay in order.

pub mod buffer;
pub mod event;
pub mod firelens;
pub mod frame;
pub mod server;
pub mod value;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airside_core::shutdown::Shutdown;
use tokio::sync::{Semaphore, mpsc};

use crate::checkpoint::Ledger;
use crate::chunk::Chunk;
use crate::record::FileMeta;
pub use buffer::{Buffer, BufferError};
pub use server::{ListenError, Listeners};

/// Chunks cut from the buffer hold about this much.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// How the forward input runs.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Frame bounds.
    pub limits: frame::Limits,
    /// Joins (split lines, tracebacks) wait at most this for their next part.
    pub multiline_timeout: Duration,
    /// After SIGTERM, inputs close once nothing arrived for this long...
    pub quiet: Duration,
    /// ... or after this, whichever comes first.
    pub linger_max: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Fields every record carries (the task's ECS fields).
    pub fields: Vec<(String, String)>,
}

/// Which outputs take the records of a tag.
pub struct Router {
    outputs: usize,
    default: Vec<bool>,
    firelens: Option<(firelens::Firelens, Vec<Option<usize>>)>,
    cache: HashMap<String, Arc<RouteOf>>,
}

/// The route of one tag.
struct RouteOf {
    to: Vec<bool>,
    meta: Arc<FileMeta>,
}

impl Router {
    /// A router over `outputs` outputs: tags without a FireLens route go to the outputs
    /// `default` marks; FireLens routes go to the output index `targets` gives for each
    /// of `config`'s routes (`None` for `null`).
    pub fn new(
        outputs: usize,
        default: Vec<bool>,
        firelens: Option<(firelens::Firelens, Vec<Option<usize>>)>,
    ) -> Self {
        Self {
            outputs,
            default,
            firelens,
            cache: HashMap::new(),
        }
    }

    fn route(&mut self, tag: &str) -> Arc<RouteOf> {
        if let Some(r) = self.cache.get(tag) {
            return r.clone();
        }
        let to = match &self.firelens {
            Some((config, targets)) => {
                let mut to = vec![false; self.outputs];
                let mut matched = false;
                for (i, route) in config.routes.iter().enumerate() {
                    if firelens::matches(&route.pattern, tag) {
                        matched = true;
                        if let Some(index) = targets[i] {
                            to[index] = true;
                        }
                    }
                }
                if matched { to } else { self.default.clone() }
            }
            None => self.default.clone(),
        };
        if to.iter().all(|t| !t) {
            tracing::info!(
                tag,
                "records of this tag go to no output (a null output, or no output takes records)"
            );
        }
        let r = Arc::new(RouteOf {
            to,
            meta: Arc::new(FileMeta::with_members(tag, 0, &[])),
        });
        if self.cache.len() >= 4096 {
            self.cache.clear();
        }
        self.cache.insert(tag.to_string(), r.clone());
        r
    }
}

/// Runs the forward input: serves `listeners` until `shutdown` (and the linger after it),
/// ships everything the buffer holds to `senders` (one per output, in output order),
/// and returns once the buffer was read to its end. Dropping the senders then lets the
/// outputs finish.
pub async fn run(
    settings: ForwardSettings,
    listeners: Listeners,
    buffer: Buffer,
    mut router: Router,
    senders: Vec<mpsc::Sender<Arc<Chunk>>>,
    shutdown: Shutdown,
) -> Result<(), BufferError> {
    let (appends_tx, appends_rx) = mpsc::channel(1024);
    let mut reader = buffer.start(appends_rx)?;
    let sweeper = reader.sweeper();
    let sweep_stop = Shutdown::new();
    let sweeping = tokio::spawn(buffer::sweep_loop(
        sweeper.clone(),
        sweep_stop.clone(),
        Duration::from_millis(100),
    ));
    let ctx = Arc::new(server::Context {
        limits: settings.limits,
        boot: rand::random(),
        ecs: Arc::new(settings.fields.clone()),
        multiline_timeout: settings.multiline_timeout,
        queue: Arc::new(Semaphore::new(server::QUEUE_BYTES)),
        // One frame decoded at a time (see server::Context::decoding).
        decoding: Arc::new(Semaphore::new(1)),
        large_frames: Arc::new(Semaphore::new(server::LARGE_FRAMES)),
        appends: appends_tx,
        last_activity: Default::default(),
        epoch: Instant::now(),
        closing: Shutdown::new(),
    });
    let serving = tokio::spawn(server::serve(
        listeners,
        ctx,
        shutdown,
        settings.quiet,
        settings.linger_max,
        settings.max_connections,
    ));

    let result = async {
        let mut released = false;
        loop {
            // Quiet for a while: a burst is over, give back its heap and code pages (as
            // the files input does), so an idle router stays small. Waiting for the
            // writer is cancel-safe (a watch channel).
            let next = tokio::time::timeout(
                crate::input::files::RELEASE_AFTER_IDLE,
                reader.next(CHUNK_BYTES),
            );
            let Ok(blocks) = next.await else {
                if !released {
                    airside_core::memory::release();
                    released = true;
                }
                continue;
            };
            let blocks = blocks?;
            if blocks.is_empty() {
                return Ok(());
            }
            released = false;
            ship(&mut router, blocks, &senders).await;
        }
    }
    .await;
    let _ = serving.await;
    sweep_stop.cancel();
    let _ = sweeping.await;
    result
}

/// Cuts blocks (of one segment) into chunks of one route each and hands every output
/// its chunk, or an empty one with the same range.
async fn ship(
    router: &mut Router,
    mut blocks: Vec<buffer::Block>,
    senders: &[mpsc::Sender<Arc<Chunk>>],
) {
    let mut i = 0;
    while i < blocks.len() {
        let route = router.route(&blocks[i].tag);
        let mut j = i + 1;
        let mut size = blocks[i].records.len();
        while j < blocks.len() && size < CHUNK_BYTES {
            let next = router.route(&blocks[j].tag);
            if next.to != route.to {
                break;
            }
            size += blocks[j].records.len();
            j += 1;
        }
        // One block (the common case: a frame's records): its bytes move, not copied.
        let mut data = if j == i + 1 {
            std::mem::take(&mut blocks[i].records)
        } else {
            let mut d = Vec::with_capacity(size);
            for b in &blocks[i..j] {
                d.extend_from_slice(&b.records);
            }
            d
        };
        let mut ends = Vec::with_capacity(data.len() / 256);
        for nl in memchr::memchr_iter(b'\n', &data) {
            ends.push((nl + 1) as u32);
        }
        data.shrink_to_fit();
        let file = buffer::segment_id(blocks[i].seq);
        let (start, end) = (blocks[i].start, blocks[j - 1].end);
        crate::telemetry::forward_records_buffered(ends.len() as u64);
        let full = Arc::new(Chunk {
            data,
            ends,
            file,
            start,
            end,
            raw: Vec::new(),
            meta: route.meta.clone(),
            forwarded: true,
        });
        let empty = Arc::new(Chunk {
            data: Vec::new(),
            ends: Vec::new(),
            file,
            start,
            end,
            raw: Vec::new(),
            meta: route.meta.clone(),
            forwarded: true,
        });
        for (k, tx) in senders.iter().enumerate() {
            let c = if route.to.get(k).copied().unwrap_or(false) {
                full.clone()
            } else {
                empty.clone()
            };
            // A closed output ended with an error; run() reports it.
            let _ = tx.send(c).await;
        }
        i = j;
    }
}

/// The forward input's flags, once bound: what [`crate::run`] needs before it starts.
pub struct Bound {
    /// Listeners.
    pub listeners: Listeners,
    /// The buffer, with what earlier runs left.
    pub buffer: Buffer,
    /// The buffer's ledger (outputs acknowledge segments into it).
    pub ledger: Arc<Ledger>,
}

impl Bound {
    /// Opens the buffer in `dir` (for `outputs` outputs, capped at `max_bytes`) and binds
    /// the listeners.
    pub async fn open(
        dir: &std::path::Path,
        outputs: usize,
        max_bytes: u64,
        socket: Option<&std::path::Path>,
        tcp: Option<std::net::SocketAddr>,
        health: Option<std::net::SocketAddr>,
    ) -> Result<Self, ForwardError> {
        let buffer = Buffer::open(dir, outputs, max_bytes)?;
        let ledger = buffer.ledger();
        let listeners = Listeners::bind(socket, tcp, health).await?;
        Ok(Self {
            listeners,
            buffer,
            ledger,
        })
    }
}

/// The forward input cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The buffer.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// A listener.
    #[error(transparent)]
    Listen(#[from] ListenError),
}
