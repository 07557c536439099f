//! Receiving StatsD datagrams: UDP (or a unix datagram socket), batched with
//! `recvmmsg` into a set of buffers, on one dedicated thread.
//!
//! One thread does receive, parse and aggregate: the work per line is small,
//! and handing packets to another thread would cost more than it saves on the
//! one core a Fargate sidecar gets. The socket gets a large receive buffer so
//! that bursts (and flushes, which briefly hold the aggregation lock) are
//! absorbed by the kernel; what the kernel still drops is read back from
//! `/proc/net/udp` and exported.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::aggregate::Aggregator;

/// Datagrams fetched per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Bytes per datagram buffer; longer datagrams are truncated (and counted).
pub const DATAGRAM_BUFFER: usize = 16 * 1024;

/// Where StatsD arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A UDP address.
    Udp(SocketAddr),
    /// A unix datagram socket path.
    Unix(PathBuf),
}

/// A bound StatsD socket.
pub struct StatsdSocket {
    socket: Socket,
    local: Listen,
    recv_buffer: usize,
}

impl StatsdSocket {
    /// Binds `listen` with a receive buffer of (at least trying) `recv_buffer` bytes.
    pub fn bind(listen: &Listen, recv_buffer: usize) -> io::Result<Self> {
        let (socket, addr) = match listen {
            Listen::Udp(addr) => (
                Socket::new(Domain::for_address(*addr), Type::DGRAM, Some(Protocol::UDP))?,
                SockAddr::from(*addr),
            ),
            Listen::Unix(path) => {
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(path);
                }
                (
                    Socket::new(Domain::UNIX, Type::DGRAM, None)?,
                    SockAddr::unix(path)?,
                )
            }
        };
        // Try the privileged variant first (root in a container may have CAP_NET_ADMIN),
        // then the ordinary one, which the kernel caps at net.core.rmem_max.
        if nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &recv_buffer,
        )
        .is_err()
        {
            let _ = socket.set_recv_buffer_size(recv_buffer);
        }
        socket.bind(&addr)?;
        // Wake up regularly to notice shutdown.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let local = match listen {
            Listen::Udp(_) => Listen::Udp(
                socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("bound UDP socket has no IP address"))?,
            ),
            Listen::Unix(p) => Listen::Unix(p.clone()),
        };
        let recv_buffer = socket.recv_buffer_size().unwrap_or(0);
        Ok(Self {
            socket,
            local,
            recv_buffer,
        })
    }

    /// The address actually bound.
    pub fn local(&self) -> &Listen {
        &self.local
    }

    /// The receive buffer the kernel granted (Linux reports twice the requested size).
    pub fn recv_buffer(&self) -> usize {
        self.recv_buffer
    }

    /// A reader of the kernel's drop counter for this socket, when there is one.
    pub fn kernel_drops(&self) -> Option<KernelDrops> {
        let Listen::Udp(addr) = self.local else {
            return None;
        };
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", self.socket.as_raw_fd()))
            .ok()?
            .ino();
        Some(KernelDrops {
            inode,
            table: if addr.is_ipv4() {
                "/proc/net/udp"
            } else {
                "/proc/net/udp6"
            },
        })
    }
}

/// Reads the `drops` column of `/proc/net/udp` for one socket inode.
#[derive(Debug, Clone)]
pub struct KernelDrops {
    inode: u64,
    table: &'static str,
}

impl KernelDrops {
    /// Datagrams the kernel dropped because the receive buffer was full, if readable.
    pub fn read(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.table).ok()?;
        parse_proc_udp_drops(&text, self.inode)
    }
}

/// Finds the drops of `inode` in the text of `/proc/net/udp`.
pub fn parse_proc_udp_drops(text: &str, inode: u64) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if cols.len() >= 13 && cols[9].parse::<u64>().ok()? == inode {
            cols[12].parse().ok()
        } else {
            None
        }
    })
}

/// Counters the receiver thread keeps (exported by the daemon).
#[derive(Debug, Default)]
pub struct ReceiveCounters {
    /// Datagrams received.
    pub packets: std::sync::atomic::AtomicU64,
    /// Bytes received.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Datagrams longer than the buffer (their tail was lost).
    pub truncated: std::sync::atomic::AtomicU64,
    /// Receive errors other than timeouts.
    pub errors: std::sync::atomic::AtomicU64,
}

/// Runs the receive loop on the current thread until `stop` is set, then reads
/// what is still queued in the socket and returns.
pub fn receive_loop(
    socket: StatsdSocket,
    aggregator: Arc<Mutex<Aggregator>>,
    counters: Arc<ReceiveCounters>,
    stop: Arc<AtomicBool>,
) {
    let fd: RawFd = socket.socket.as_raw_fd();
    let mut buffers = vec![[0u8; DATAGRAM_BUFFER]; BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut lens = Vec::with_capacity(BATCH);
    let mut draining = false;
    loop {
        if !draining && stop.load(Ordering::Relaxed) {
            draining = true;
        }
        let flags = if draining {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_WAITFORONE
        };
        lens.clear();
        {
            let mut iovs: Vec<[io::IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|b| [io::IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(fd, &mut headers, iovs.iter_mut(), flags, None) {
                Ok(results) => {
                    for r in results {
                        let truncated = r.flags.contains(MsgFlags::MSG_TRUNC);
                        lens.push((r.bytes, truncated));
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    if draining {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "StatsD receive failed");
                    if draining {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        if lens.is_empty() {
            if draining {
                return;
            }
            continue;
        }
        let now = Instant::now();
        let mut bytes = 0u64;
        let mut truncated = 0u64;
        {
            let mut agg = aggregator.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (len, trunc)) in lens.iter().enumerate() {
                let len = (*len).min(DATAGRAM_BUFFER);
                bytes += len as u64;
                truncated += u64::from(*trunc);
                agg.ingest_packet(&buffers[i][..len], now);
            }
        }
        counters
            .packets
            .fetch_add(lens.len() as u64, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        if truncated > 0 {
            counters.truncated.fetch_add(truncated, Ordering::Relaxed);
        }
    }
}

/// Parses `--statsd-addr`: `IP:PORT` for UDP, or `unix:///path` / `unix:/path` for a unix
/// datagram socket.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text
        .strip_prefix("unix://")
        .or_else(|| text.strip_prefix("unix:"))
    {
        if path.is_empty() {
            return Err("unix socket path is empty (use unix:///run/statsd.sock)".into());
        }
        return Ok(Listen::Unix(Path::new(path).to_path_buf()));
    }
    airside_core::config::parse_socket_addr(text).map(Listen::Udp)
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Udp(a) => write!(f, "udp://{a}"),
            Listen::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorSettings;
    use crate::datum::Allowlist;

    #[test]
    fn proc_net_udp_drops_column() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  124: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n";
        assert_eq!(parse_proc_udp_drops(text, 4242), Some(17));
        assert_eq!(parse_proc_udp_drops(text, 4343), Some(0));
        assert_eq!(parse_proc_udp_drops(text, 1), None);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:8125").unwrap(),
            Listen::Udp("127.0.0.1:8125".parse().unwrap())
        );
        assert_eq!(
            parse_listen("unix:///tmp/s.sock").unwrap(),
            Listen::Unix("/tmp/s.sock".into())
        );
        assert!(parse_listen("unix://").is_err());
        assert!(parse_listen("nonsense").is_err());
    }

    fn aggregator() -> Arc<Mutex<Aggregator>> {
        Arc::new(Mutex::new(Aggregator::new(
            Arc::new(crate::mapping::Mapper::default()),
            AggregatorSettings {
                max_series: 1000,
                ttl: Duration::from_secs(60),
                prefix: "airflow".into(),
                allowlist: Allowlist::new(&[]).unwrap(),
                max_bytes: 64 << 20,
            },
        )))
    }

    #[test]
    fn udp_and_unix_sockets_receive_batches_and_drain_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        for listen in [
            Listen::Udp("127.0.0.1:0".parse().unwrap()),
            Listen::Unix(dir.path().join("statsd.sock")),
        ] {
            let socket = StatsdSocket::bind(&listen, 1 << 20).unwrap();
            let local = socket.local().clone();
            if let Listen::Udp(_) = local {
                let drops = socket
                    .kernel_drops()
                    .expect("a UDP socket has a /proc entry");
                assert_eq!(drops.read(), Some(0));
            }
            let agg = aggregator();
            let counters = Arc::new(ReceiveCounters::default());
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (agg, counters, stop) = (agg.clone(), counters.clone(), stop.clone());
                std::thread::spawn(move || receive_loop(socket, agg, counters, stop))
            };
            let send = |payload: &[u8]| match &local {
                Listen::Udp(a) => {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.send_to(payload, a).unwrap();
                }
                Listen::Unix(p) => {
                    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
                    s.send_to(payload, p).unwrap();
                }
            };
            for _ in 0..100 {
                send(b"a:1|c\nb:2|g");
            }
            send(b"\xff\xff garbage");
            // Stop right away: what is queued is still read.
            stop.store(true, Ordering::Relaxed);
            thread.join().unwrap();
            let agg = agg.lock().unwrap();
            assert_eq!(counters.packets.load(Ordering::Relaxed), 101, "{local}");
            assert_eq!(agg.stats.lines, 200, "{local}");
            assert_eq!(agg.stats.malformed, 1, "{local}");
        }
    }
}
