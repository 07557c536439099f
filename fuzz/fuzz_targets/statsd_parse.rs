//! Fuzzes metricship's StatsD parser and the aggregation behind it: any bytes a sender
//! can put in a datagram must parse to a line or an error, and aggregate, without panics,
//! within the memory budget; every datum that passes CloudWatch's rules (`rules::check`)
//! satisfies them.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use metricship::aggregate::{Aggregator, AggregatorSettings};
use metricship::datum::{Allowlist, DatumValue};
use metricship::rules;
use metricship::signal::SignalSettings;
use metricship::statsd::{lines, parse_line};

/// The catalogue is parsed once: building it per input made each run cost milliseconds.
static CATALOGUE: std::sync::OnceLock<Arc<metricship::mapping::Mapper>> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    for line in lines(data) {
        if let Ok(l) = parse_line(line) {
            let _ = l.samples().count();
            let _ = l.tags().count();
        }
    }
    let mut agg = Aggregator::new(
        CATALOGUE
            .get_or_init(|| {
                Arc::new(metricship::catalogue::airflow("airflow").expect("catalogue loads"))
            })
            .clone(),
        AggregatorSettings {
            max_series: 64,
            ttl: Duration::from_secs(1),
            prefix: "airflow".into(),
            allowlist: Allowlist::new(&["*".to_string()]).expect("valid glob"),
            max_bytes: 64 * 1024,
        },
    );
    let now = Instant::now();
    agg.ingest_packet(data, now);
    assert!(agg.state_bytes().total() <= 64 * 1024, "{:?}", agg.state_bytes());
    let at = SystemTime::now();
    for mut d in agg.flush(now + Duration::from_secs(2), at) {
        if rules::check(&mut d, at).is_ok() {
            assert!(d.dimensions.len() <= 30 && !d.name.is_empty() && d.name.len() <= 255);
            for (k, v) in &d.dimensions {
                assert!(!k.is_empty() && k.len() <= 255 && k.is_ascii() && !k.starts_with(':'));
                assert!(!v.is_empty() && v.len() <= 1024 && v.is_ascii());
                assert!(!v.bytes().any(|b| b.is_ascii_control()));
            }
            match &d.value {
                DatumValue::Single(v) => assert!(v.is_finite()),
                DatumValue::Values { values, counts } => {
                    assert!(!values.is_empty() && values.len() <= 150);
                    assert!(values.iter().chain(counts).all(|v| v.is_finite()));
                }
                DatumValue::Stats { count, sum, min, max } => {
                    assert!([count, sum, min, max].iter().all(|v| v.is_finite()));
                }
            }
        }
    }
    let _ = agg.signal.compute(
        &SignalSettings {
            freshness: Duration::from_secs(60),
            worker_concurrency: 16,
            min_workers: 0,
            max_workers: 10,
        },
        now,
    );
    let mut out = String::new();
    metricship::prometheus::render_series(&agg, &mut out);
});
