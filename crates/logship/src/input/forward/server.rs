//! Connections in, appends to the disk buffer out: listens where FireLens expects its
//! router (a unix socket and a loopback TCP port, with UDP heartbeats on the same
//! port), answers the health check port, and runs one task per connection that reads
//! frames, converts their events ([`super::event`]) and hands the records to the buffer
//! writer. A frame with a `chunk` option is answered `{"ack": chunk}` once its records
//! are written to the buffer, never before.
//!
//! Bounded: at most `max_connections` connections (more wait in the kernel's backlog),
//! each reading into [`BASE_BUFFER`] bytes, of which at most [`LARGE_FRAMES`] at a time
//! grow theirs to hold a larger frame (up to [`Limits::max_frame_bytes`]); the records
//! waiting for the writer are limited in bytes by a semaphore. A frame the decoder
//! refuses (garbage, a hostile size, too deep) closes its connection with a counted
//! error; nothing else notices.
//!
//! At SIGTERM the listeners stay open: ECS stops the application containers at the same
//! time as the router, and their last lines arrive after the router's SIGTERM. They
//! close once nothing arrived for `quiet`, or at `linger_max`, whichever comes first.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airside_core::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::buffer::Append;
use super::event::{Batch, Converter};
use super::frame::{self, FrameError, Limits};

/// Bytes of records waiting for the buffer writer, all connections together: enough to
/// keep the writer busy (it writes everything queued at once), small beside the 64 MiB
/// of the task definition.
pub const QUEUE_BYTES: usize = 2 << 20;

/// Each connection's read buffer; a frame that does not fit grows it, once it has one of
/// the [`LARGE_FRAMES`] slots.
pub const BASE_BUFFER: usize = 64 * 1024;

/// A read buffer with less room than this is grown before the next read.
const MIN_READ: usize = 16 * 1024;

/// Connections that may hold a frame larger than [`BASE_BUFFER`] at once (a holder
/// whose frame stalls is closed after [`STALLED_FRAME`]). Frames are
/// decoded one at a time, so more buffered whole frames are only memory: measured with 8
/// connections of 640 KB frames (bench/logship/RESULTS.md), their read buffers were 8.4
/// MiB of a 24 MiB heap, each grown to fit its frame and never given back. The Docker
/// fluentd driver's frames (one event each) fit the base buffer and never wait for a slot.
pub const LARGE_FRAMES: usize = 2;

/// A connection holding a large-frame slot whose frame stops arriving for this long is
/// closed, so that a sender stalled halfway (or a hostile one) cannot keep the slots
/// from the others. A sender on the same host never pauses that long within a frame.
pub const STALLED_FRAME: Duration = Duration::from_secs(20);

/// How a connection's bytes became records.
pub(super) struct Context {
    pub limits: Limits,
    pub boot: u64,
    pub ecs: Arc<Vec<(String, String)>>,
    pub multiline_timeout: Duration,
    pub queue: Arc<Semaphore>,
    /// Frames being decoded and converted at once: a decoded frame of 2,000 events
    /// holds a few MiB until its records are queued, and on one or two cores decoding
    /// more at once is not faster, only larger (measured, 8 connections of such frames:
    /// unbounded 44.0 MiB peak, two at once 39.8 MiB, one at once 38.2 MiB and the
    /// fastest, bench/logship/RESULTS.md).
    pub decoding: Arc<Semaphore>,
    /// Slots for connections receiving a frame larger than [`BASE_BUFFER`].
    pub large_frames: Arc<Semaphore>,
    pub appends: mpsc::Sender<Append>,
    /// When the last byte arrived on any connection (milliseconds since `epoch`).
    pub last_activity: AtomicU64,
    pub epoch: Instant,
    /// Closed when the listeners close: open connections finish what they hold.
    pub closing: Shutdown,
}

impl Context {
    fn touch(&self) {
        self.last_activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The bound listeners.
pub struct Listeners {
    pub(super) unix: Option<(UnixListener, PathBuf)>,
    pub(super) tcp: Option<TcpListener>,
    pub(super) udp: Option<UdpSocket>,
    pub(super) health: Option<TcpListener>,
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {what}: {source}")]
pub struct ListenError {
    /// Which address.
    pub what: String,
    /// Why.
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds what is configured (`None` turns one off). A stale socket file from an
    /// earlier run is replaced.
    pub async fn bind(
        socket: Option<&std::path::Path>,
        tcp: Option<std::net::SocketAddr>,
        health: Option<std::net::SocketAddr>,
    ) -> Result<Self, ListenError> {
        let unix = match socket {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                // Only a socket is replaced, never a file someone else put there.
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(|source| ListenError {
                    what: path.display().to_string(),
                    source,
                })?;
                // Every container of the task writes to it, whatever its user.
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
                Some((l, path.to_path_buf()))
            }
            None => None,
        };
        let (tcp, udp) = match tcp {
            Some(addr) => {
                let t = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError {
                        what: format!("tcp {addr}"),
                        source,
                    })?;
                let addr = t.local_addr().unwrap_or(addr);
                let u = UdpSocket::bind(addr).await.map_err(|source| ListenError {
                    what: format!("udp {addr} (heartbeats)"),
                    source,
                })?;
                (Some(t), Some(u))
            }
            None => (None, None),
        };
        let health = match health {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError {
                        what: format!("health check tcp {addr}"),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            unix,
            tcp,
            udp,
            health,
        })
    }

    /// The TCP address, once bound (port 0 picks one).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// The health check address, once bound.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        self.health.as_ref().and_then(|t| t.local_addr().ok())
    }
}

/// Accepts and serves until `shutdown`, then lingers (see the module docs) and waits for
/// the open connections to finish. Dropping the context's sender afterwards ends the
/// buffer writer.
pub(super) async fn serve(
    listeners: Listeners,
    ctx: Arc<Context>,
    shutdown: Shutdown,
    quiet: Duration,
    linger_max: Duration,
    max_connections: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    let next_conn = AtomicU64::new(0);
    let Listeners {
        unix,
        tcp,
        udp,
        health,
    } = listeners;
    if let Some(udp) = udp {
        tasks.spawn(heartbeats(udp, ctx.closing.clone()));
    }
    if let Some(health) = health {
        tasks.spawn(health_checks(health, ctx.closing.clone()));
    }
    let linger = async {
        shutdown.cancelled().await;
        let started = Instant::now();
        ctx.touch();
        loop {
            let quiet_for = ctx.quiet_for();
            if quiet_for >= quiet || started.elapsed() >= linger_max {
                break;
            }
            let next = (quiet - quiet_for).min(linger_max.saturating_sub(started.elapsed()));
            tokio::time::sleep(next.max(Duration::from_millis(10))).await;
        }
        tracing::info!(
            lingered = ?started.elapsed(),
            "forward input closing: the senders went quiet or the drain needs the rest of its time"
        );
    };
    tokio::pin!(linger);
    loop {
        let permit = tokio::select! {
            _ = &mut linger => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        tokio::select! {
            _ = &mut linger => break,
            c = accept_unix(unix.as_ref().map(|u| &u.0)) => {
                if let Some(stream) = c {
                    let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(connection(stream, ctx.clone(), conn, permit));
                }
            }
            c = accept_tcp(tcp.as_ref()) => {
                if let Some(stream) = c {
                    let _ = stream.set_nodelay(true);
                    let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(connection(stream, ctx.clone(), conn, permit));
                }
            }
        }
    }
    drop(tcp);
    if let Some((l, path)) = unix {
        drop(l);
        let _ = std::fs::remove_file(path);
    }
    ctx.closing.cancel();
    while tasks.join_next().await.is_some() {}
}

async fn accept_unix(l: Option<&UnixListener>) -> Option<tokio::net::UnixStream> {
    let Some(l) = l else {
        return std::future::pending().await;
    };
    match l.accept().await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "accept on the forward socket failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

async fn accept_tcp(l: Option<&TcpListener>) -> Option<tokio::net::TcpStream> {
    let Some(l) = l else {
        return std::future::pending().await;
    };
    match l.accept().await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "accept on the forward port failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Fluentd's heartbeat: a UDP datagram to the forward port, answered with one byte.
async fn heartbeats(udp: UdpSocket, closing: Shutdown) {
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = closing.cancelled() => return,
            r = udp.recv_from(&mut buf) => {
                if let Ok((_, from)) = r {
                    let _ = udp.send_to(b"\0", from).await;
                }
            }
        }
    }
}

/// The port ECS's recommended router health check connects to (and writes a line to):
/// accepted, read, closed. Records sent there are not shipped (FireLens routes them to
/// its `null` output).
async fn health_checks(l: TcpListener, closing: Shutdown) {
    loop {
        tokio::select! {
            _ = closing.cancelled() => return,
            r = l.accept() => {
                if let Ok((mut s, _)) = r {
                    tokio::spawn(async move {
                        let mut sink = [0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Ok(n) = s.read(&mut sink).await {
                                if n == 0 { break; }
                            }
                        }).await;
                    });
                }
            }
        }
    }
}

/// One connection: frames in, appends out, acks back.
async fn connection<S>(
    mut stream: S,
    ctx: Arc<Context>,
    conn: u64,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    crate::telemetry::forward_connection_opened();
    let mut conv = Converter::new(ctx.boot, conn, ctx.ecs.clone(), ctx.multiline_timeout);
    let mut buf: Vec<u8> = Vec::with_capacity(BASE_BUFFER);
    // Held while `buf` is larger than the base: a large frame is being received.
    let mut large: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut batches: Vec<Batch> = Vec::new();
    let mut tag: Option<Arc<str>> = None;
    // How far the frame being received was walked (see frame::Walker).
    let mut decoder = frame::Decoder::default();
    let outcome: Result<(), String> = 'conn: loop {
        // Every whole frame the buffer holds.
        let mut used = 0;
        loop {
            let permit = ctx
                .decoding
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            match decoder.decode(&buf[used..], &ctx.limits) {
                Ok(Some((frame, n))) => {
                    used += n;
                    // Converted here, while the frame borrows the buffer; what is
                    // awaited below owns its records.
                    let t = match &tag {
                        Some(t) if **t == *frame.tag => t.clone(),
                        _ => {
                            let t: Arc<str> = Arc::from(frame.tag);
                            tag = Some(t.clone());
                            t
                        }
                    };
                    crate::telemetry::forward_events_received(frame.events.len() as u64);
                    conv.push(&frame, &t, &mut batches);
                    let chunk = frame.chunk.map(str::to_owned);
                    drop(frame);
                    decoder.trim();
                    if large.is_some() && buf.len() - used <= BASE_BUFFER {
                        // The large frame is converted: back to the base buffer, and let
                        // another connection receive one while this one waits for the
                        // queue and its ack.
                        buf.drain(..used);
                        used = 0;
                        buf.shrink_to(BASE_BUFFER);
                        large = None;
                    }
                    if let Err(e) = handle(&mut stream, &ctx, &mut batches, chunk, permit).await {
                        break 'conn Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    crate::telemetry::forward_frame_refused(&e);
                    break 'conn Err(refused(&buf[used..], &e));
                }
            }
        }
        buf.drain(..used);
        // Room for more of the frame being received: as much again as it has (fewer,
        // larger reads), at least 64 KiB, within the frame limit.
        let room = buf.len().max(64 * 1024).min(
            ctx.limits
                .max_frame_bytes
                .saturating_sub(buf.len())
                .max(4096),
        );
        // Grown only when nearly full: a frame's tail left in the buffer is moved to its
        // front, and reads go on into the rest of it.
        if buf.capacity() - buf.len() < MIN_READ {
            if buf.len() + room > BASE_BUFFER && large.is_none() {
                // Growing beyond the base buffer takes one of the few large-frame
                // slots: the others wait (their senders with them) until a slot is free.
                // A slot's holder always finishes its frame without waiting for another
                // connection, so waiting here cannot deadlock.
                let slot = ctx.large_frames.clone().acquire_owned().await;
                large = Some(slot.expect("never closed"));
            }
            buf.reserve_exact(room);
        }
        let due = conv.next_due();
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => {
                    if !buf.is_empty() {
                        crate::telemetry::forward_frame_refused(&FrameError::Invalid("truncated".into()));
                        break 'conn Err(format!("the connection closed in the middle of a frame ({} bytes); they are dropped", buf.len()));
                    }
                    break 'conn Ok(());
                }
                Ok(_) => ctx.touch(),
                Err(e) => break 'conn Err(format!("read failed: {e}")),
            },
            _ = crate::sleep_until_some(due.map(tokio::time::Instant::from_std)) => {
                conv.flush_due(Instant::now(), &mut batches);
                if let Err(e) = send(&ctx, &mut batches, None).await {
                    break 'conn Err(e);
                }
            }
            _ = tokio::time::sleep(STALLED_FRAME), if large.is_some() => {
                // Half a large frame and then silence: the slot would be kept from the
                // senders that need it. Nothing of the frame was acknowledged, so its
                // sender sends it again when it reconnects.
                crate::telemetry::forward_frame_refused(&FrameError::Invalid("stalled".into()));
                break 'conn Err(format!(
                    "{} bytes of a frame, then nothing for {} s: closed so that its large-frame slot serves other connections",
                    buf.len(),
                    STALLED_FRAME.as_secs()
                ));
            }
            _ = ctx.closing.cancelled(), if buf.is_empty() => {
                // The listeners closed and nothing is half received: finish.
                break 'conn Ok(());
            }
        }
    };
    // What waits for a join goes out as it is.
    conv.flush_all(&mut batches);
    let _ = send(&ctx, &mut batches, None).await;
    if let Err(e) = outcome {
        tracing::warn!(connection = conn, error = %e, "forward connection closed");
    }
    crate::telemetry::forward_connection_closed();
}

fn refused(rest: &[u8], e: &FrameError) -> String {
    // A client that expects Fluentd's authentication sends PING after a HELO it will
    // never get; say so rather than "invalid frame".
    if rest.windows(4).take(16).any(|w| w == b"PING") {
        return "the client tries Fluentd's shared-key authentication (PING), which logship does not offer; turn it off in the client (the socket is only reachable inside the task)".into();
    }
    format!("{e}; the connection is closed")
}

/// Queues a frame's records and, if it asked for one (`chunk`), acknowledges it once
/// they are written.
async fn handle<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &Context,
    batches: &mut Vec<Batch>,
    chunk: Option<String>,
    decoding: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let Some(chunk) = chunk else {
        let sent = send(ctx, batches, None).await;
        drop(decoding);
        return sent;
    };
    let (done_tx, done_rx) = oneshot::channel();
    send(ctx, batches, Some(done_tx)).await?;
    // Queued: the next frame may be decoded while this one is written.
    drop(decoding);
    // Written to the buffer (or delivered): only now is the sender told.
    done_rx
        .await
        .map_err(|_| "the buffer writer stopped before the records were written".to_string())?;
    let mut ack = Vec::with_capacity(chunk.len() + 8);
    rmp::encode::write_map_len(&mut ack, 1).expect("writing to a Vec");
    rmp::encode::write_str(&mut ack, "ack").expect("writing to a Vec");
    rmp::encode::write_str(&mut ack, &chunk).expect("writing to a Vec");
    stream
        .write_all(&ack)
        .await
        .map_err(|e| format!("cannot send the ack: {e}"))?;
    crate::telemetry::forward_acks_sent();
    Ok(())
}

/// Hands `batches` to the buffer writer, in order; `done` (if any) is answered once the
/// last of them is written (an empty append carries it when there are none).
async fn send(
    ctx: &Context,
    batches: &mut Vec<Batch>,
    mut done: Option<oneshot::Sender<()>>,
) -> Result<(), String> {
    let n = batches.len();
    if n == 0 && done.is_none() {
        return Ok(());
    }
    let mut items: Vec<Batch> = std::mem::take(batches);
    if items.is_empty() {
        items.push((Arc::from(""), Vec::new()));
    }
    let last = items.len() - 1;
    for (i, (tag, records)) in items.into_iter().enumerate() {
        // Bytes waiting for the writer are bounded; a full queue stops this
        // connection's reading (backpressure to its sender).
        let want = records.len().clamp(1, QUEUE_BYTES) as u32;
        let started = Instant::now();
        let permit = ctx
            .queue
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| "closing".to_string())?;
        let waited = started.elapsed();
        if waited > Duration::from_millis(100) {
            crate::telemetry::forward_backpressure(waited);
        }
        let append = Append {
            tag,
            records,
            done: if i == last { done.take() } else { None },
            hold: Some(permit),
        };
        ctx.appends
            .send(append)
            .await
            .map_err(|_| "the buffer writer stopped".to_string())?;
    }
    Ok(())
}
