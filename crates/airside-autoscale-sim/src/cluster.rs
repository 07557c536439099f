//! The worker service: ECS tasks that start after a latency, Celery workers with
//! `worker_concurrency` slots taking queued task instances, and the warm shutdown that
//! a stopped worker gets before SIGKILL.
//!
//! What is modelled, and how:
//! * The ECS service starts tasks until it has `desired` that are not stopping; a new
//!   task takes Celery tasks after a start latency drawn uniformly from the configured
//!   range. It is billed from its launch (Fargate bills from the image pull).
//! * When `desired` falls, ECS stops tasks that have not started first, then picks among
//!   the running ones. ECS does not know which are busy, so the pick is random (seeded);
//!   with scale-in protection (workerguard) a worker running tasks, or idle for less than
//!   the idle grace, is never picked, and the service waits until one is unprotected.
//! * A stopped worker takes no new task; its running tasks continue until ECS's
//!   `stopTimeout`, then the task is SIGKILLed: what still runs is killed, counted, and
//!   queued again (Airflow retries it from the start).
//! * Celery hands a queued task to the worker with the fewest running (`-O fair`).

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One worker task.
#[derive(Debug, Clone)]
struct Worker {
    /// When it takes tasks.
    ready_at: f64,
    /// When ECS told it to stop.
    stopping_since: Option<f64>,
    /// Running task instances: (index in the trace, end time).
    slots: Vec<(usize, f64)>,
    /// When it last had a running task (or was ready, if never).
    last_busy: f64,
}

/// What the cluster reports to the simulation each second.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Gauges {
    /// Tasks waiting in the Celery queue.
    pub queued: usize,
    /// Tasks running on a worker.
    pub running: usize,
    /// Worker tasks that exist (launched and not yet stopped), billed.
    pub workers: usize,
    /// Worker tasks taking tasks.
    pub ready_workers: usize,
}

/// The settings of the worker service.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Celery `worker_concurrency`.
    pub concurrency: usize,
    /// ECS `stopTimeout`, seconds.
    pub stop_timeout: f64,
    /// Start latency range, seconds.
    pub start_latency: (f64, f64),
    /// Scale-in protection while busy (workerguard).
    pub protection: bool,
    /// Protection's idle grace, seconds.
    pub idle_grace: f64,
}

/// The worker service and its Celery queue.
#[derive(Debug)]
pub struct Cluster {
    settings: ClusterSettings,
    workers: Vec<Worker>,
    queue: VecDeque<usize>,
    desired: u32,
    rng: ChaCha8Rng,
    /// When each task instance (last) started; `None` until it has.
    pub started_at: Vec<Option<f64>>,
    /// Task instances killed by a scale-in (each is queued again).
    pub killed: u64,
    /// Task instances that finished.
    pub finished: u64,
}

impl Cluster {
    /// An empty service for a trace of `tasks` task instances.
    pub fn new(settings: ClusterSettings, tasks: usize, seed: u64) -> Self {
        Self {
            settings,
            workers: Vec::new(),
            queue: VecDeque::new(),
            desired: 0,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c1a5),
            started_at: vec![None; tasks],
            killed: 0,
            finished: 0,
        }
    }

    /// The service's desired count.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Sets the service's desired count at `now` (Application Auto Scaling does); ECS
    /// starts or stops tasks at once.
    pub fn set_desired(&mut self, n: u32, now: f64) {
        self.desired = n;
        self.reconcile(now);
    }

    /// The scheduler queues task instance `task`.
    pub fn enqueue(&mut self, task: usize) {
        self.queue.push_back(task);
    }

    fn protected(&self, w: &Worker, now: f64) -> bool {
        self.settings.protection
            && now >= w.ready_at
            && (!w.slots.is_empty() || now - w.last_busy < self.settings.idle_grace)
    }

    /// Advances to `now`: tasks finish, stopping workers exit or are killed, ECS
    /// reconciles the desired count, and queued tasks start. `durations[i]` is task
    /// instance `i`'s run time.
    pub fn step(&mut self, now: f64, durations: &[f64]) -> Gauges {
        // Tasks end.
        for w in &mut self.workers {
            let before = w.slots.len();
            w.slots.retain(|&(_, end)| end > now);
            self.finished += (before - w.slots.len()) as u64;
            if !w.slots.is_empty() || before > 0 {
                w.last_busy = now;
            }
        }
        // Stopping workers leave: cleanly once idle, killed at stopTimeout.
        let timeout = self.settings.stop_timeout;
        let mut requeue = Vec::new();
        let mut killed = 0;
        self.workers.retain(|w| match w.stopping_since {
            Some(since) if w.slots.is_empty() => {
                let _ = since;
                false
            }
            Some(since) if now - since >= timeout => {
                killed += w.slots.len() as u64;
                requeue.extend(w.slots.iter().map(|&(t, _)| t));
                false
            }
            _ => true,
        });
        self.killed += killed;
        for t in requeue {
            self.started_at[t] = None;
            self.queue.push_front(t);
        }
        self.reconcile(now);
        // Celery hands queued tasks to free slots.
        while !self.queue.is_empty() {
            let free = self
                .workers
                .iter_mut()
                .filter(|w| w.stopping_since.is_none() && now >= w.ready_at)
                .filter(|w| w.slots.len() < self.settings.concurrency)
                .min_by_key(|w| w.slots.len());
            let Some(w) = free else { break };
            let t = self.queue.pop_front().expect("not empty");
            w.slots.push((t, now + durations[t]));
            w.last_busy = now;
            self.started_at[t] = Some(now);
        }
        Gauges {
            queued: self.queue.len(),
            running: self.workers.iter().map(|w| w.slots.len()).sum(),
            workers: self.workers.len(),
            ready_workers: self
                .workers
                .iter()
                .filter(|w| w.stopping_since.is_none() && now >= w.ready_at)
                .count(),
        }
    }

    /// ECS: start or stop tasks until `desired` are not stopping.
    fn reconcile(&mut self, now: f64) {
        let active = self
            .workers
            .iter()
            .filter(|w| w.stopping_since.is_none())
            .count();
        let desired = self.desired as usize;
        if active < desired {
            for _ in active..desired {
                let (lo, hi) = self.settings.start_latency;
                let latency = if hi > lo {
                    self.rng.random_range(lo..=hi)
                } else {
                    lo
                };
                self.workers.push(Worker {
                    ready_at: now + latency.round(),
                    stopping_since: None,
                    slots: Vec::new(),
                    last_busy: now + latency.round(),
                });
            }
            return;
        }
        let mut excess = active - desired;
        // Tasks that have not started yet go first.
        while excess > 0 {
            let Some(i) = self
                .workers
                .iter()
                .position(|w| w.stopping_since.is_none() && now < w.ready_at)
            else {
                break;
            };
            self.workers.remove(i);
            excess -= 1;
        }
        while excess > 0 {
            let candidates: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    let w = &self.workers[i];
                    w.stopping_since.is_none() && !self.protected(w, now)
                })
                .collect();
            if candidates.is_empty() {
                break; // all protected: ECS waits
            }
            let pick = candidates[self.rng.random_range(0..candidates.len())];
            self.workers[pick].stopping_since = Some(now);
            excess -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(protection: bool, stop_timeout: f64) -> Cluster {
        Cluster::new(
            ClusterSettings {
                concurrency: 2,
                stop_timeout,
                start_latency: (10.0, 10.0),
                protection,
                idle_grace: 60.0,
            },
            4,
            1,
        )
    }

    #[test]
    fn a_worker_starts_after_its_latency_and_fills_its_slots() {
        let mut c = cluster(false, 30.0);
        let d = [100.0, 100.0, 100.0, 5.0];
        for t in 0..3 {
            c.enqueue(t);
        }
        c.set_desired(1, 0.0);
        let g = c.step(0.0, &d);
        assert_eq!((g.workers, g.ready_workers, g.queued), (1, 0, 3));
        let g = c.step(10.0, &d);
        assert_eq!((g.ready_workers, g.running, g.queued), (1, 2, 1));
        assert_eq!(c.started_at[0], Some(10.0));
    }

    #[test]
    fn a_warm_shutdown_that_finishes_within_stop_timeout_kills_nothing() {
        let mut c = cluster(false, 30.0);
        let d = [20.0, 20.0, 0.0, 0.0];
        c.enqueue(0);
        c.set_desired(1, 0.0);
        c.step(0.0, &d);
        c.step(10.0, &d); // task 0 runs until 30
        c.set_desired(0, 11.0);
        let g = c.step(11.0, &d);
        assert_eq!(g.workers, 1, "still draining");
        let g = c.step(30.0, &d);
        assert_eq!((g.workers, c.killed, c.finished), (0, 0, 1));
    }

    #[test]
    fn a_warm_shutdown_past_stop_timeout_kills_and_requeues() {
        let mut c = cluster(false, 30.0);
        let d = [600.0, 0.0, 0.0, 0.0];
        c.enqueue(0);
        c.set_desired(1, 0.0);
        c.step(0.0, &d);
        c.step(10.0, &d);
        c.set_desired(0, 11.0);
        c.step(11.0, &d);
        let g = c.step(41.0, &d);
        assert_eq!((g.workers, g.queued, c.killed), (0, 1, 1));
        assert_eq!(c.started_at[0], None);
    }

    #[test]
    fn protection_keeps_busy_workers_until_idle_grace() {
        let mut c = cluster(true, 30.0);
        let d = [100.0, 0.0, 0.0, 0.0];
        c.enqueue(0);
        c.set_desired(1, 0.0);
        c.step(0.0, &d);
        c.step(10.0, &d); // runs until 110
        c.set_desired(0, 10.0);
        assert_eq!(c.step(50.0, &d).workers, 1);
        // Finished at 110; protected for the 60 s grace, then stopped (idle: at once).
        assert_eq!(c.step(110.0, &d).workers, 1);
        assert_eq!(c.step(169.0, &d).workers, 1);
        assert_eq!(c.step(170.0, &d).workers, 1, "told to stop");
        assert_eq!(c.step(171.0, &d).workers, 0);
        assert_eq!(c.killed, 0);
    }
}
