//! Helpers shared by metricship's integration tests.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};

/// metricship running as a child process (the test build of the binary), publishing to
/// CloudWatch at `endpoint`. A process of its own per test: its `/metrics` counts only
/// its own work, so tests in this one binary can run side by side.
pub struct Running {
    /// Where it receives StatsD (UDP).
    pub statsd: SocketAddr,
    /// Its admin server (/readyz, /metrics).
    pub admin: SocketAddr,
    logged: Logged,
}

impl Running {
    /// Starts `metricship` with 1 s flushes, a 3 s freshness window, the namespace and
    /// `Run` dimension given, AWS at `endpoint`, and `extra` flags (a flag given in `extra`
    /// replaces the default one).
    pub async fn start(endpoint: &str, namespace: &str, run: &str, extra: &[&str]) -> Self {
        let mut cmd = daemon_command(
            std::path::Path::new(env!("CARGO_BIN_EXE_metricship")),
            endpoint,
            namespace,
            run,
            extra,
        );
        cmd.args(["--log-level", WARN_BUT_ADDRESSES])
            .stdout(std::process::Stdio::null());
        let logged = Logged::spawn(&mut cmd);
        let (statsd, admin) = (logged.statsd(), logged.admin());
        Self {
            statsd,
            admin,
            logged,
        }
    }

    /// Waits for /readyz to answer 200: the socket is bound and CloudWatch answered
    /// ListMetrics.
    pub async fn wait_ready(&self) {
        wait_ready_at(self.admin).await;
    }

    /// SIGTERM, and requires the daemon to exit 0 within 30 s.
    pub async fn stop(mut self) {
        self.logged.child.sigterm();
        let status = self
            .logged
            .child
            .wait_exit_async(Duration::from_secs(30))
            .await
            .expect("metricship stops within 30 s");
        assert!(status.success(), "{status}\n{}", self.logged.logs());
    }
}

/// What a test reads CloudWatch with: a client straight to `moto` (not through any
/// proxy the daemon is given), a namespace of its own and a `Run` dimension value of its
/// own (moto matches dimensions but not namespaces).
pub async fn verifier(moto: &airside_testkit::Moto) -> (Client, String, String) {
    let cw = Client::new(&moto.sdk_config().await);
    (
        cw,
        airside_testkit::unique_name("Airflow"),
        airside_testkit::unique_name("run"),
    )
}

/// Sends each packet as one UDP datagram.
pub fn send(to: SocketAddr, packets: &[String]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in packets {
        s.send_to(p.as_bytes(), to).unwrap();
    }
}

/// The values of one statistic over the last hour, one period covering it all.
pub async fn stat(
    cw: &Client,
    namespace: &str,
    name: &str,
    dims: &[(&str, &str)],
    stat: &str,
    period: i32,
) -> Vec<f64> {
    let now = SystemTime::now();
    let mut metric = Metric::builder().namespace(namespace).metric_name(name);
    for (k, v) in dims {
        metric = metric.dimensions(Dimension::builder().name(*k).value(*v).build());
    }
    let out = cw
        .get_metric_data()
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("q")
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric.build())
                        .period(period)
                        .stat(stat)
                        .build(),
                )
                .build(),
        )
        .start_time(DateTime::from(now - Duration::from_secs(1800)))
        .end_time(DateTime::from(now + Duration::from_secs(600)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetMetricData {name} {stat}: {e:?}"));
    out.metric_data_results()
        .first()
        .map(|r| r.values().to_vec())
        .unwrap_or_default()
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/metrics` of a running daemon.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = airside_core::healthcheck::get(admin, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    body
}

/// The value of one sample line (`name{labels} value`) on `/metrics`, if present.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// Sets gauge `airflow.executor.open_slots` to `value` and returns once a flush has
/// taken it: first waits until the aggregator holds the value (it shows on
/// `/metrics`), then for the next flush. Waiting only for the flush count to move
/// races: a flush that starts before the datagram is read moves the count, and the
/// next value would then overwrite this one within one interval.
pub async fn set_gauge_and_await_flush(statsd: SocketAddr, admin: SocketAddr, value: u32) {
    send(statsd, &[format!("airflow.executor.open_slots:{value}|g")]);
    eventually("the gauge on /metrics", Duration::from_secs(5), || async {
        let body = scrape(admin).await;
        (sample(&body, "airflow_executor_open_slots") == Some(f64::from(value))).then_some(())
    })
    .await;
    let before = sample(&scrape(admin).await, "metricship_flushes_total").unwrap_or(0.0);
    eventually("a flush", Duration::from_secs(5), || async {
        let now = sample(&scrape(admin).await, "metricship_flushes_total").unwrap_or(0.0);
        (now > before).then_some(())
    })
    .await;
}

/// Every value of `airflow_executor_open_slots` CloudWatch holds for this run, by
/// one-second period. Both Minimum and Maximum are read: two flushes that a stalled
/// machine ran within one wall-clock second share a period, and Maximum alone would
/// hide the smaller value.
pub async fn open_slots_values(
    cw: &Client,
    namespace: &str,
    run: &str,
) -> std::collections::BTreeSet<u32> {
    let dims = [("Run", run)];
    let mut got = std::collections::BTreeSet::new();
    for s in ["Minimum", "Maximum"] {
        for v in stat(cw, namespace, "airflow_executor_open_slots", &dims, s, 1).await {
            got.insert(v as u32);
        }
    }
    got
}

/// The datums of this run (by its `Run` dimension) that CloudWatch accepted.
pub fn accepted(
    proxy: &airside_testkit::FaultProxy,
    run: &str,
) -> Vec<airside_testkit::AcceptedDatum> {
    proxy
        .strict_api()
        .accepted()
        .into_iter()
        .filter(|d| d.dimensions.iter().any(|(k, v)| k == "Run" && v == run))
        .collect()
}

/// What a healthy scheduler sends between flushes: heartbeat, two pools, executor gauges.
pub fn healthy_scheduler() -> Vec<String> {
    vec![
        "airflow.scheduler_heartbeat:1|c".into(),
        "airflow.pool.queued_slots.default_pool:30|g".into(),
        "airflow.pool.queued_slots.etl:12|g".into(),
        "airflow.executor.queued_tasks:20|g".into(),
        "airflow.executor.running_tasks:50|g".into(),
    ]
}

/// A metricship command for a separate process: `binary` (the test build or the static
/// one), its StatsD and admin on port 0 (read back from its log, [`Logged`] or
/// `CappedDaemon`), JSON logs, the per-run `Run` dimension, AWS through `endpoint`, 1 s
/// flushes and a 3 s freshness window unless `extra` sets them; `extra` is appended.
pub fn daemon_command(
    binary: &std::path::Path,
    endpoint: &str,
    namespace: &str,
    run: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.args([
        "--statsd-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--namespace",
        namespace,
        "--dimension",
        &format!("Run={run}"),
        "--log-format",
        "json",
    ]);
    for (flag, default) in [("--flush-interval", "1s"), ("--freshness-window", "3s")] {
        if !extra.contains(&flag) {
            cmd.args([flag, default]);
        }
    }
    cmd.args(extra)
        .envs(airside_testkit::Moto::env_for(endpoint));
    cmd
}

/// The log level for a test that wants only warnings, but the two lines that say where
/// the daemon listens.
pub const WARN_BUT_ADDRESSES: &str = "warn,airside_core::admin=info,metricship=info";

/// The StatsD address a metricship child bound, from its "StatsD socket bound" line in
/// the JSON log at `log`.
pub fn logged_statsd_addr(log: &std::path::Path) -> SocketAddr {
    let listen = airside_testkit::logged_field(
        log,
        "StatsD socket bound",
        "statsd",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|| {
        panic!(
            "no StatsD address logged:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    listen
        .trim_start_matches("udp://")
        .parse()
        .expect("a UDP address")
}

/// A metricship child whose stderr (JSON) goes to a temporary file, so that the
/// addresses it bound on port 0 can be read back.
pub struct Logged {
    /// The process, killed when dropped.
    pub child: airside_testkit::KillOnDrop,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    /// Spawns `cmd` (which should log JSON) with its stderr in a temporary file.
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        cmd.stderr(std::fs::File::create(&log).unwrap());
        let child = airside_testkit::KillOnDrop::new(cmd.spawn().expect("spawn metricship"));
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// The admin server's bound address.
    pub fn admin(&self) -> SocketAddr {
        airside_testkit::logged_admin_addr(&self.log)
    }

    /// The StatsD socket's bound address.
    pub fn statsd(&self) -> SocketAddr {
        logged_statsd_addr(&self.log)
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits (20 s at most) until the daemon at `admin` answers /readyz with 200.
pub async fn wait_ready_at(admin: SocketAddr) {
    eventually("readiness", Duration::from_secs(20), || async {
        let (status, _) = airside_core::healthcheck::get(admin, "/readyz")
            .await
            .ok()?;
        (status == 200).then_some(())
    })
    .await;
}
