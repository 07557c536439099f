//! The ECS agent's task-protection stand-in ([`airside_testkit::EcsAgent`]) as a process,
//! for tests outside Rust: prints `ECS_AGENT_URI=<uri>` on its first line, serves until
//! its standard input closes (so it ends with the test that started it), and answers
//! `GET /_standin/state` and `PUT /_standin/mode` (see the module documentation).
//!
//! Usage: `ecs-agent-standin [MINUTE_SECONDS]`, the length in seconds of one of
//! `ExpiresInMinutes`' minutes (default 60).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let minute: f64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MINUTE_SECONDS is a number"))
        .unwrap_or(60.0);
    let agent = airside_testkit::EcsAgent::start_with_minute(Duration::from_secs_f64(minute));
    let mut out = std::io::stdout();
    writeln!(out, "ECS_AGENT_URI={}", agent.agent_uri()).expect("stdout");
    out.flush().expect("stdout");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
