//! The exit-code contract across daemons: the same shared failure ends every daemon with
//! the same code (the README's exit-code table), decided once in `airside-core`. Runs the
//! static binaries of `dist/`, as the images do.
//!
//! metricship has no destination it writes to (its outputs are CloudWatch and stdout),
//! so "unwritable destination" covers dagsync's DAG folder and logship's state folder.
//! workerguard calls no AWS endpoint and resolves no name (its ECS agent is an address
//! ECS gives): bad flags and access denied cover it, access denied as the agent answers it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use airside_testkit::{EmptyRoot, Fault, FaultPlan, FaultProxy, Moto, dist_binary, moto};

const DAEMONS: [&str; 3] = ["dagsync", "logship", "metricship"];
/// Every daemon, for the failures that do not depend on AWS.
const ALL_DAEMONS: [&str; 4] = ["dagsync", "logship", "metricship", "workerguard"];

/// The flags that make `daemon` start against S3/CloudWatch, with its folders under `dir`
/// (as seen by the daemon).
fn start_flags(daemon: &str, dir: &str) -> Vec<String> {
    let flags: Vec<String> = match daemon {
        "dagsync" => vec![
            "--source".into(),
            "s3://shared-failures/dags/".into(),
            "--dest".into(),
            format!("{dir}/dags"),
        ],
        "logship" => vec![
            "--output".into(),
            "s3://shared-failures/logs".into(),
            "--state-dir".into(),
            format!("{dir}/state"),
            "--path".into(),
            format!("{dir}/logs/*.log"),
        ],
        "metricship" => vec!["--statsd-addr".into(), "127.0.0.1:0".into()],
        other => unreachable!("{other}"),
    };
    let mut all = flags;
    all.extend(["--admin-addr".into(), "127.0.0.1:0".into()]);
    all
}

fn prepare(dir: &Path) {
    for sub in ["dags", "state", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
}

/// Runs `cmd` to its end (at most 90 s; it is killed after that and the test fails).
fn finish(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn code_and_stderr(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_bad_flag_exits_2_in_every_daemon() {
    for daemon in ALL_DAEMONS {
        for bad in [
            vec!["--no-such-flag"],
            vec!["--admin-addr", "nowhere"],
            vec!["--drain-timeout", "soon"],
        ] {
            let mut cmd = Command::new(dist_binary(daemon));
            cmd.args(&bad).env_clear();
            let (code, err) = code_and_stderr(&finish(cmd));
            assert_eq!(code, Some(2), "{daemon} {bad:?}: {err}");
            assert!(
                err.contains(bad[0]) || err.contains(bad[1]),
                "{daemon}: {err}"
            );
        }
    }
}

#[test]
fn no_dns_configuration_exits_2_in_every_daemon() {
    for daemon in DAEMONS {
        let root = EmptyRoot::new(&dist_binary(daemon));
        prepare(&root.path().join("work"));
        // What a scratch image without /etc/resolv.conf gives the binary.
        std::fs::remove_file(root.path().join("etc/resolv.conf")).unwrap();
        let mut cmd = root.command();
        cmd.args(start_flags(daemon, "/work"))
            .envs(Moto::env_for("http://127.0.0.1:9"));
        let (code, err) = code_and_stderr(&finish(cmd));
        assert_eq!(code, Some(2), "{daemon}: {err}");
        assert!(err.contains("resolv.conf"), "{daemon}: {err}");
    }
}

#[test]
fn access_denied_at_start_exits_3_in_every_daemon() {
    let proxy = FaultProxy::start(
        &moto().endpoint(),
        FaultPlan::only(1.0, &[Fault::AccessDenied]),
    );
    let handles: Vec<_> = DAEMONS
        .into_iter()
        .map(|daemon| {
            let endpoint = proxy.endpoint();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                prepare(dir.path());
                let mut cmd = Command::new(dist_binary(daemon));
                cmd.args(start_flags(daemon, dir.path().to_str().unwrap()))
                    .env_clear()
                    .envs(Moto::env_for(&endpoint));
                let (code, err) = code_and_stderr(&finish(cmd));
                assert_eq!(code, Some(3), "{daemon}: {err}");
                assert!(err.contains("AccessDenied"), "{daemon}: {err}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Each daemon retried before it gave up (the shared policy: 5 consecutive denials).
    assert!(proxy.stats().injected(Fault::AccessDenied) >= 3 * 5);

    // workerguard: the agent answers 403 when the task has no task role.
    let agent = airside_testkit::EcsAgent::start();
    agent.set_mode(airside_testkit::AgentMode::NoCredentials);
    let mut cmd = Command::new(dist_binary("workerguard"));
    cmd.args(["--admin-addr", "127.0.0.1:0", "--retry-max", "1s"])
        .env_clear()
        .env("ECS_AGENT_URI", agent.agent_uri());
    let (code, err) = code_and_stderr(&finish(cmd));
    assert_eq!(code, Some(3), "workerguard: {err}");
    assert!(err.contains("AccessDenied"), "workerguard: {err}");
    assert_eq!(agent.requests().len(), 5);
}

#[test]
fn an_unwritable_destination_exits_4_in_dagsync_and_logship() {
    for daemon in ["dagsync", "logship"] {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        // A file where the folder should be: no write access helps (the tests run as root).
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let mut flags = start_flags(daemon, dir.path().to_str().unwrap());
        let folder_flag = if daemon == "dagsync" {
            "--dest"
        } else {
            "--state-dir"
        };
        let i = flags.iter().position(|f| f == folder_flag).unwrap();
        flags[i + 1] = blocked.join("sub").to_str().unwrap().to_string();
        let mut cmd = Command::new(dist_binary(daemon));
        cmd.args(flags).env_clear().envs(moto().env());
        let (code, err) = code_and_stderr(&finish(cmd));
        assert_eq!(code, Some(4), "{daemon}: {err}");
    }
}
