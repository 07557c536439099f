//! Shared test support: running the daemon, reading what arrived, checking it.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airside_testkit::{KillOnDrop, Moto, moto, unique_name};
use serde_json::Value;

/// The logship binary under test, killed when dropped.
pub struct Daemon {
    pub child: KillOnDrop,
    pub stderr: PathBuf,
    pub stdout_lines: Option<Arc<Mutex<Vec<String>>>>,
}

impl Daemon {
    /// Starts logship with `args` talking to `endpoint`, its admin server on port 0 (read
    /// back with [`Daemon::admin`]).
    pub fn start(args: &[String], endpoint: &str, log_dir: &Path, capture_stdout: bool) -> Self {
        Self::start_as(args, endpoint, log_dir, capture_stdout, None)
    }

    /// Like [`Daemon::start`], as user `uid` (group the same) when given: the images run
    /// logship as 65532, and only a non-root process meets file permissions.
    pub fn start_as(
        args: &[String],
        endpoint: &str,
        log_dir: &Path,
        capture_stdout: bool,
        uid: Option<u32>,
    ) -> Self {
        let stderr = log_dir.join(format!("logship-{}.stderr", unique_name("run")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logship"));
        cmd.args(args)
            .arg("--admin-addr")
            .arg("127.0.0.1:0")
            .arg("--log-format")
            .arg("json")
            .env_remove("ECS_CONTAINER_METADATA_URI_V4")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in Moto::env_for(endpoint) {
            cmd.env(k, v);
        }
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        cmd.stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn logship");
        let stdout_lines = capture_stdout.then(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let mut out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    match out.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=nl).collect();
                                sink.lock()
                                    .unwrap()
                                    .push(String::from_utf8(line).unwrap().trim_end().to_string());
                            }
                        }
                    }
                }
            });
            lines
        });
        Self {
            child: KillOnDrop::new(child),
            stderr,
            stdout_lines,
        }
    }

    /// The address its admin server bound.
    pub fn admin(&self) -> SocketAddr {
        airside_testkit::logged_admin_addr(&self.stderr)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for /readyz to answer 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = self.admin();
        loop {
            if let Ok((200, _)) = airside_core::healthcheck::get(admin, "/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "logship exited with {status} before ready:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "logship not ready in 30s:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        metrics(self.admin()).await
    }

    pub fn sigterm(&self) {
        self.child.sigterm();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.child.wait_exit_async(timeout).await {
            Some(status) => status,
            None => panic!(
                "logship did not exit within {timeout:?}:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// SIGTERM, then requires a clean exit (status 0) within `timeout`.
    pub async fn stop(&mut self, timeout: Duration) {
        self.sigterm();
        let status = self.wait_exit(timeout).await;
        assert!(status.success(), "exit {status}:\n{}", self.stderr_text());
    }

    /// Polls the captured stdout lines every 200 ms until `check` holds (see [`eventually`]).
    pub async fn eventually_on_stdout(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) {
        let lines = self.stdout_lines.clone().expect("stdout captured");
        eventually(timeout, what, || {
            let done = check(&lines.lock().unwrap());
            async move { done }
        })
        .await;
    }

    /// Every captured stdout line, parsed as a JSON record.
    pub fn stdout_records(&self) -> Vec<Value> {
        self.stdout_lines
            .as_ref()
            .expect("stdout captured")
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// `/metrics` of the daemon whose admin server is at `admin`; empty when it does not answer.
pub async fn metrics(admin: SocketAddr) -> String {
    airside_core::healthcheck::get(admin, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Sum of every sample of a metric (any labels); 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub use airside_testkit::s3::s3_client;

pub async fn firehose_client() -> aws_sdk_firehose::Client {
    aws_sdk_firehose::Client::new(&moto().sdk_config().await)
}

/// Creates a bucket, and a Firehose stream delivering into it under `fh/`. Returns (bucket, stream).
pub async fn firehose_to_bucket() -> (String, String) {
    let bucket = create_bucket().await;
    let stream = unique_name("logs");
    firehose_client()
        .await
        .create_delivery_stream()
        .delivery_stream_name(&stream)
        .extended_s3_destination_configuration(
            aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .prefix("fh/")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    (bucket, stream)
}

pub async fn create_bucket() -> String {
    airside_testkit::s3::create_bucket(&s3_client().await, "logship").await
}

pub async fn list_keys(bucket: &str, prefix: &str) -> Vec<String> {
    airside_testkit::s3::list_keys(&s3_client().await, bucket, prefix).await
}

/// Every record in one object (gunzipped when the key ends in .gz), in object order.
pub async fn object_records(bucket: &str, key: &str) -> Vec<Value> {
    let body = airside_testkit::s3::get_object(&s3_client().await, bucket, key).await;
    let text = if key.ends_with(".gz") {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(body).unwrap()
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}

/// Every record of every object under `prefix`, object after object.
pub async fn all_records(bucket: &str, prefix: &str) -> Vec<Value> {
    all_objects(bucket, prefix)
        .await
        .into_iter()
        .flat_map(|(_, r)| r)
        .collect()
}

/// Every object under `prefix` with its records.
pub async fn all_objects(bucket: &str, prefix: &str) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for k in list_keys(bucket, prefix).await {
        let recs = object_records(bucket, &k).await;
        out.push((k, recs));
    }
    out
}

/// Checks that within each delivery unit (object, or the stdout stream) the records of
/// each file come in increasing offset order.
pub fn assert_ordered_within(unit: &str, records: &[Value]) {
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    for r in records {
        let file = r["id"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        let offset = r["offset"].as_u64().unwrap();
        let part = r["part"].as_u64().unwrap_or(0);
        if let Some(&(o, p)) = last.get(&file) {
            assert!(
                (offset, part) > (o, p),
                "{unit}: record at offset {offset} part {part} after offset {o} part {p} of the same file"
            );
        }
        last.insert(file, (offset, part));
    }
}

/// Result of matching delivered records against the files.
#[derive(Debug, Default)]
pub struct Reconstructed {
    pub records: usize,
    pub duplicates: usize,
}

/// Rebuilds each file from its delivered records and compares byte for byte (JSON
/// lines field by field): every line arrived, once, with the right content.
/// `files` maps path → content.
pub fn reconstruct(
    files: &HashMap<String, String>,
    records: &[Value],
) -> Result<Reconstructed, String> {
    let mut by_path: HashMap<&str, HashMap<u64, Vec<&Value>>> = HashMap::new();
    let mut seen: HashMap<(String, u64, u64), usize> = HashMap::new();
    let mut result = Reconstructed::default();
    for r in records {
        let path = r["path"].as_str().ok_or("record without path")?;
        let offset = r["offset"].as_u64().ok_or("record without offset")?;
        let part = r["part"].as_u64().unwrap_or(1);
        let n = seen.entry((path.to_string(), offset, part)).or_default();
        *n += 1;
        if *n > 1 {
            result.duplicates += 1;
            continue;
        }
        result.records += 1;
        by_path
            .entry(path)
            .or_default()
            .entry(offset)
            .or_default()
            .push(r);
    }
    for (path, content) in files {
        let Some(recs) = by_path.get(path.as_str()) else {
            return Err(format!("nothing arrived from {path}"));
        };
        let mut offsets: Vec<u64> = recs.keys().copied().collect();
        offsets.sort();
        let mut pos = 0usize;
        for off in offsets {
            if off as usize != pos {
                return Err(format!(
                    "{path}: expected a record at offset {pos}, next is at {off}"
                ));
            }
            let mut parts = recs[&off].clone();
            parts.sort_by_key(|v| v["part"].as_u64().unwrap_or(1));
            let r = parts[0];
            let message: String = parts
                .iter()
                .map(|p| p["message"].as_str().unwrap_or(""))
                .collect();
            let rest = &content[pos..];
            let first_line = rest.split('\n').next().unwrap();
            if first_line.starts_with('{') && r.get("source").is_none() {
                let orig: serde_json::Map<String, Value> =
                    serde_json::from_str(first_line).map_err(|e| format!("{path}@{pos}: {e}"))?;
                let mut rest_fields = orig.clone();
                let ts = rest_fields.remove("timestamp");
                let level = rest_fields.remove("level");
                let event = rest_fields.remove("event");
                if ts.as_ref() != Some(&r["timestamp"])
                    || level.as_ref() != Some(&r["level"])
                    || event.as_ref().and_then(|e| e.as_str()) != Some(message.as_str())
                    || (!rest_fields.is_empty()
                        && r["fields"] != Value::Object(rest_fields.clone()))
                {
                    return Err(format!(
                        "{path}@{pos}: JSON line {first_line} arrived as {r}"
                    ));
                }
                pos += first_line.len() + 1;
                continue;
            }
            let text = match r.get("source") {
                Some(src) => format!(
                    "[{}] {{{}}} {} - {}",
                    r["timestamp"].as_str().unwrap(),
                    src.as_str().unwrap(),
                    r["level"].as_str().unwrap(),
                    message
                ),
                None => message,
            };
            let want: String = rest
                .split_inclusive('\n')
                .take(text.split('\n').count())
                .collect();
            if want.trim_end_matches('\n') != text {
                return Err(format!("{path}@{pos}: expected {want:?}, got {text:?}"));
            }
            pos += want.len();
        }
        if pos != content.len() {
            return Err(format!("{path}: records end at {pos} of {}", content.len()));
        }
    }
    Ok(result)
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Every `*.log` file under `root`: path → content.
pub fn read_logs(root: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.insert(
                    p.to_string_lossy().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                );
            }
        }
    }
    out
}

pub fn examples_dir() -> PathBuf {
    airside_testkit::workspace_root().join("examples/logs")
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn s(v: &str) -> String {
    v.to_string()
}
