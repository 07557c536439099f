use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// A running moto server.
pub struct Moto {
    port: u16,
    // Kept open: moto_server.py exits when this pipe closes (i.e. when we exit).
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

/// The workspace root (where Cargo.toml with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/<name> has a workspace two levels up")
        .to_path_buf()
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("AIRSIDE_PYTHON") {
        return PathBuf::from(p);
    }
    workspace_root().join(".venv/bin/python")
}

/// The process-wide moto server, started on first use.
///
/// Panics with instructions when the virtualenv is missing: run `scripts/test`
/// (or `scripts/setup-venv`) first.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let python = python();
        assert!(
            python.exists(),
            "{} not found: run scripts/setup-venv (scripts/test does it for you) to install moto[server]",
            python.display()
        );
        let script = workspace_root().join("tests/support/moto_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read moto port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto_server.py printed {line:?} instead of a port"));
        let stdin = child.stdin.take().expect("piped stdin");
        Moto {
            port,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        }
    })
}

impl Moto {
    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://localhost:PORT`: the endpoint for a binary in an [`crate::EmptyRoot`], which
    /// can only reach moto by name through the root's `/etc/hosts`.
    pub fn localhost_endpoint(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    /// An SDK config pointing at moto with static test credentials (no process env touched).
    pub async fn sdk_config(&self) -> SdkConfig {
        self.sdk_config_for(&self.endpoint()).await
    }

    /// An SDK config for another endpoint in front of moto (a [`crate::FaultProxy`]).
    pub async fn sdk_config_for(&self, endpoint: &str) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(airside_core::aws::http_client().expect("http client"))
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url(endpoint)
            .load()
            .await
    }

    /// Environment for a daemon child process talking to `endpoint` (moto or a proxy).
    pub fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Environment for a daemon child process talking to this moto directly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        Self::env_for(&self.endpoint())
    }
}

/// A name unique within this test process and across runs: lower-case, valid as a bucket name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{}-{n}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
    .to_lowercase()
}
