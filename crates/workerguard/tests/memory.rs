//! workerguard, the static binary the image ships, in a memory cgroup limited as the
//! worker task definition limits its container, through a busy worker's life: a process
//! table of 400 processes, 64 task instances starting and ending, protection renewed
//! many times, then idle. Nothing is OOM-killed and it keeps protecting.

use std::process::Command;
use std::time::{Duration, Instant};

use airside_testkit::{EcsAgent, MemoryCap, dist_binary};

#[test]
fn a_busy_worker_s_life_stays_inside_the_task_definition_limit() {
    assert!(
        MemoryCap::available(),
        "memory-capped tests need root and the cgroup v1 memory controller"
    );
    let agent = EcsAgent::start_with_minute(Duration::from_millis(500));
    let proc = tempfile::tempdir().unwrap();
    let write = |pid: u32, cmdline: &str| {
        let dir = proc.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    };
    for pid in 1..400 {
        write(pid, "[celeryd: celery@worker:ForkPoolWorker-1]\0");
    }
    let cap = MemoryCap::for_container("worker", "workerguard");
    let mut cmd = Command::new(dist_binary("workerguard"));
    cmd.env_clear()
        .env("ECS_AGENT_URI", agent.agent_uri())
        .args(["--proc-dir", proc.path().to_str().unwrap()])
        .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
        .args(["--check-interval", "50ms", "--idle-grace", "1s"])
        .args(["--protection-minutes", "2"]);
    let daemon = cap.spawn_daemon("workerguard", &mut cmd);

    // 64 task instances, 16 at a time, over about 8 s: renewals every half second.
    for wave in 0..4u32 {
        for n in 0..16u32 {
            let id = wave * 16 + n;
            write(
                1000 + id,
                &format!("airflow worker -- 0199a3f2-7c4e-7d1a-9b2e-{id:012x}\0"),
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        for n in 0..16u32 {
            std::fs::remove_dir_all(proc.path().join((1000 + wave * 16 + n).to_string())).unwrap();
        }
        assert!(
            agent.protected_now(),
            "protected while tasks run: {}",
            daemon.logs()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.protected_now() {
        assert!(
            Instant::now() < deadline,
            "not unprotected: {}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let puts = agent
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(puts >= 15, "{puts} PUTs: renewals happened throughout");
    let report = cap.assert_no_oom("workerguard");
    let rss = MemoryCap::peak_rss(daemon.pid).unwrap();
    eprintln!(
        "workerguard: group peak {:.1} MiB, VmHWM {:.1} MiB, limit {} MiB",
        report.peak as f64 / 1048576.0,
        rss as f64 / 1048576.0,
        report.limit >> 20
    );
    assert_eq!(
        agent.timeline().len(),
        2,
        "one protection, no lapse: {:?}",
        agent.timeline()
    );
}
