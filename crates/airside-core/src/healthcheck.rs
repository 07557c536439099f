//! The `healthcheck` subcommand every daemon offers, for ECS container health
//! checks in images that have no shell and no curl: `CMD ["/dagsync","healthcheck"]`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ExitCode;

/// Issues a plain HTTP/1.0 GET to the admin server and returns `(status, body)`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Asks the running daemon's `/readyz`; exit 0 when ready, 1 otherwise. Prints why to stderr.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> ExitCode {
    match tokio::time::timeout(timeout, get(addr, "/readyz")).await {
        Ok(Ok((200, _))) => ExitCode::Ok,
        Ok(Ok((status, body))) => {
            eprintln!("not ready ({status}): {}", body.trim());
            ExitCode::Other
        }
        Ok(Err(e)) => {
            eprintln!("cannot reach the admin server at {addr}: {e}");
            ExitCode::Other
        }
        Err(_) => {
            eprintln!("the admin server at {addr} did not answer within {timeout:?}");
            ExitCode::Other
        }
    }
}
