//! Synthetic demand, generated reproducibly from a seed (ChaCha8: the same seed gives the
//! same trace everywhere).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::trace::Task;

const HOUR: f64 = 3600.0;
const DAY: f64 = 24.0 * HOUR;

/// The bundled workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Hourly DAG runs from 06:00 to 20:00 fanning out 40 tasks of 2–15 min each, a
    /// 300-task backfill at 01:00, quiet otherwise.
    DailyBatch,
    /// Bursts of 20–200 tasks of 1–20 min, on average every 3 hours, at random times.
    Bursts,
    /// Sparse sensors: one task of 1–3 min on average every 20 minutes.
    Sensors,
    /// Steady random arrivals of 1–10 min tasks, about 600 an hour (the benchmark's load).
    Steady,
}

impl Workload {
    /// Every bundled workload, in report order (`Steady` is the benchmark's, not a
    /// scenario).
    pub const SCENARIOS: [Workload; 3] =
        [Workload::DailyBatch, Workload::Bursts, Workload::Sensors];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::DailyBatch => "daily-batch",
            Workload::Bursts => "bursts",
            Workload::Sensors => "sensors",
            Workload::Steady => "steady",
        }
    }
}

fn task(at: f64, minutes: (f64, f64), rng: &mut ChaCha8Rng) -> Task {
    Task {
        queued_at_s: (at * 10.0).round() / 10.0,
        duration_s: (rng.random_range(minutes.0 * 60.0..=minutes.1 * 60.0)).round(),
        queue: "default".into(),
        pool: "default_pool".into(),
    }
}

/// An exponential wait with mean `mean` seconds.
fn exp(mean: f64, rng: &mut ChaCha8Rng) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Generates `days` of `workload` from `seed`, sorted by queued time.
pub fn generate(workload: Workload, days: u32, seed: u64) -> Vec<Task> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let end = f64::from(days) * DAY;
    let mut tasks = Vec::new();
    match workload {
        Workload::DailyBatch => {
            for d in 0..days {
                let day = f64::from(d) * DAY;
                // The backfill: 300 task instances queued within a minute of 01:00.
                for _ in 0..300 {
                    let at = day + HOUR + rng.random_range(0.0..60.0);
                    tasks.push(task(at, (2.0, 15.0), &mut rng));
                }
                for h in 6..=20 {
                    // A DAG run's 40 mapped tasks, queued within its first 30 s.
                    let start = day + f64::from(h) * HOUR + rng.random_range(0.0..120.0);
                    for _ in 0..40 {
                        let at = start + rng.random_range(0.0..30.0);
                        tasks.push(task(at, (2.0, 15.0), &mut rng));
                    }
                }
            }
        }
        Workload::Bursts => {
            let mut t = exp(3.0 * HOUR, &mut rng);
            while t < end {
                let n = rng.random_range(20..=200);
                for _ in 0..n {
                    let at = t + rng.random_range(0.0..60.0);
                    tasks.push(task(at, (1.0, 20.0), &mut rng));
                }
                t += exp(3.0 * HOUR, &mut rng);
            }
        }
        Workload::Sensors => {
            let mut t = exp(20.0 * 60.0, &mut rng);
            while t < end {
                tasks.push(task(t, (1.0, 3.0), &mut rng));
                t += exp(20.0 * 60.0, &mut rng);
            }
        }
        Workload::Steady => {
            let mut t = 0.0;
            while t < end {
                tasks.push(task(t, (1.0, 10.0), &mut rng));
                t += exp(HOUR / 600.0, &mut rng);
            }
        }
    }
    tasks.sort_by(|a, b| a.queued_at_s.total_cmp(&b.queued_at_s));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_trace() {
        for w in [
            Workload::DailyBatch,
            Workload::Bursts,
            Workload::Sensors,
            Workload::Steady,
        ] {
            let a = generate(w, 2, 7);
            assert_eq!(a, generate(w, 2, 7), "{w:?}");
            assert_ne!(a, generate(w, 2, 8), "{w:?}");
            assert!(a.windows(2).all(|p| p[0].queued_at_s <= p[1].queued_at_s));
        }
    }

    #[test]
    fn the_daily_batch_has_its_shape() {
        let t = generate(Workload::DailyBatch, 1, 1);
        assert_eq!(t.len(), 300 + 15 * 40);
        // Quiet between the backfill's start and 06:00 except for the backfill.
        let quiet = t
            .iter()
            .filter(|x| x.queued_at_s > 2.0 * HOUR && x.queued_at_s < 6.0 * HOUR);
        assert_eq!(quiet.count(), 0);
        assert!(t.iter().all(|x| (120.0..=900.0).contains(&x.duration_s)));
    }
}
