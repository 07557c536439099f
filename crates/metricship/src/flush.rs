//! The export stage: every flush interval the aggregator's interval state and the
//! signal become datums, are checked against CloudWatch's rules ([`crate::rules`]) and go
//! to the output: the CloudWatch backlog ([`crate::cloudwatch`]) or EMF lines on stdout
//! ([`crate::emf`]).

use std::io::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use airside_core::shutdown::Shutdown;

use crate::cloudwatch::{BatchKind, batches};
use crate::datum::{Datum, DatumValue, Unit};
use crate::pipeline::{Output, Shared};
use crate::signal::Input;
use crate::{emf, rules, telemetry};

pub(crate) async fn flush_loop(shared: Arc<Shared>, shutdown: Shutdown) {
    let period = shared.config.flush_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let shared = shared.clone();
        // Flushing walks every series: off the async workers.
        if let Err(e) =
            tokio::task::spawn_blocking(move || flush_once(&shared, Instant::now())).await
        {
            // A panic in one flush is a bug; the next interval starts afresh (the
            // aggregator's lock is taken poison-tolerantly), and it is counted and logged.
            telemetry::flush_failed(&e);
        }
    }
}

/// Ends one interval: drains the aggregator, computes the signal, checks every datum
/// against CloudWatch's rules and hands the datums to the output.
pub(crate) fn flush_once(shared: &Shared, now: Instant) {
    let at = SystemTime::now();
    let (series, (signal, missing), live) = {
        let mut agg = shared.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        let datums = agg.flush(now, at);
        let signal = agg.signal.compute(&shared.signal_settings, now);
        (datums, signal, agg.live_series())
    };
    *shared.last_signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
    report_missing_inputs(shared, &missing);
    let high_resolution = shared.config.high_resolution;
    let mut signal_datums = Vec::new();
    for (name, value) in [
        ("QueueDepth", signal.queue_depth),
        ("celery.queue_depth", signal.queue_depth),
        ("TaskDemand", signal.task_demand),
        ("DesiredWorkers", signal.desired_workers),
    ] {
        if !shared.allowlist.allows(name) {
            continue;
        }
        let Some(value) = value else {
            telemetry::signal_withheld(name);
            continue;
        };
        signal_datums.push(Datum {
            name: name.into(),
            dimensions: Vec::new(),
            value: DatumValue::Single(value),
            unit: Unit::Count,
            high_resolution,
            timestamp: at,
        });
    }
    let mut invalid: Vec<(rules::DropReason, Arc<str>)> = Vec::new();
    let mut checked = |datums: Vec<Datum>| -> Vec<Datum> {
        datums
            .into_iter()
            .filter_map(|mut d| {
                for (k, v) in &shared.config.dimensions {
                    if !d.dimensions.iter().any(|(dk, _)| dk == k) {
                        d.dimensions.push((k.clone(), v.clone()));
                    }
                }
                match rules::check(&mut d, at) {
                    Ok(()) => Some(d),
                    Err(reason) => {
                        invalid.push((reason, d.name.clone()));
                        None
                    }
                }
            })
            .collect()
    };
    let signal_datums = checked(signal_datums);
    let series = checked(series);
    report_invalid(&invalid);
    let count = signal_datums.len() + series.len();
    telemetry::interval_flushed(
        count,
        invalid.len(),
        live,
        [
            signal.queue_depth,
            signal.task_demand,
            signal.desired_workers,
        ],
    );
    match &shared.output {
        Output::CloudWatch(_) => {
            if count == 0 {
                return;
            }
            let mut backlog = shared.backlog.lock().expect("backlog lock");
            let mut dropped = 0;
            // The signal goes in a request of its own: a datum CloudWatch rejects
            // costs its whole request, and no series may cost us the signal.
            if !signal_datums.is_empty() {
                dropped += backlog.push(signal_datums, BatchKind::Signal);
            }
            for b in batches(series) {
                dropped += backlog.push(b, BatchKind::Series);
            }
            if dropped > 0 {
                telemetry::backlog_overflowed(dropped, backlog.datums());
            }
            drop(backlog);
            shared.wake.notify_one();
        }
        Output::Emf => {
            let written = write_emf(
                &shared.config.namespace,
                signal_datums.iter().chain(&series),
                &mut std::io::stdout().lock(),
            );
            match written {
                Ok(lines) => telemetry::emf_written(lines),
                Err(e) => telemetry::emf_write_failed(&e, count),
            }
        }
        Output::None => {}
    }
}

/// Writes one EMF line per datum and flushes; returns the lines written.
pub(crate) fn write_emf<'a>(
    namespace: &str,
    datums: impl Iterator<Item = &'a Datum>,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut lines = 0;
    for d in datums {
        writeln!(out, "{}", emf::line(namespace, d))?;
        lines += 1;
    }
    out.flush()?;
    Ok(lines)
}

/// Counts the datums that broke a CloudWatch rule, and says once per interval which.
pub(crate) fn report_invalid(invalid: &[(rules::DropReason, Arc<str>)]) {
    if invalid.is_empty() {
        return;
    }
    let mut by_reason: std::collections::BTreeMap<&'static str, (u64, &str)> = Default::default();
    for (reason, name) in invalid {
        let e = by_reason.entry(reason.as_str()).or_insert((0, name));
        e.0 += 1;
    }
    telemetry::datums_invalid(invalid.len(), &by_reason);
}

/// Exports which signal inputs are missing, and logs each change once.
pub(crate) fn report_missing_inputs(shared: &Shared, missing: &[Input]) {
    let mut last = shared
        .missing_inputs
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for input in Input::ALL {
        telemetry::signal_input_missing(input.as_str(), missing.contains(&input));
    }
    if last.as_slice() == missing {
        return;
    }
    let names: Vec<&str> = missing.iter().map(|i| i.as_str()).collect();
    if missing.is_empty() {
        tracing::info!("every autoscaling signal input is fresh again");
    } else {
        let withheld: Vec<&str> = [
            (
                missing.contains(&Input::PoolQueuedSlots),
                "QueueDepth, celery.queue_depth",
            ),
            (
                missing.contains(&Input::ExecutorQueuedTasks)
                    || missing.contains(&Input::ExecutorRunningTasks),
                "TaskDemand, DesiredWorkers",
            ),
        ]
        .into_iter()
        .filter_map(|(w, m)| w.then_some(m))
        .collect();
        tracing::warn!(
            missing = ?names,
            withheld = ?withheld,
            freshness_seconds = shared.signal_settings.freshness.as_secs_f64(),
            "autoscaling signal inputs stale or never received: the metrics computed from them are withheld (check Airflow's metrics_allow_list and statsd settings)"
        );
    }
    *last = missing.to_vec();
}
