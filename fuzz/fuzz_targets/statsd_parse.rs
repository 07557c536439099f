//! Fuzzes metricship's StatsD parser and the aggregation behind it: any bytes a sender
//! can put in a datagram must parse to a line or an error, and aggregate, without panics.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use metricship::aggregate::{Aggregator, AggregatorSettings, Allowlist};
use metricship::statsd::{lines, parse_line};

fuzz_target!(|data: &[u8]| {
    for line in lines(data) {
        if let Ok(l) = parse_line(line) {
            let _ = l.samples().count();
            let _ = l.tags().count();
        }
    }
    let mut agg = Aggregator::new(
        Arc::new(metricship::catalogue::airflow("airflow").expect("catalogue loads")),
        AggregatorSettings {
            max_series: 64,
            ttl: Duration::from_secs(1),
            prefix: "airflow".into(),
            allowlist: Allowlist::new(&["*".to_string()]).expect("valid glob"),
        },
    );
    let now = Instant::now();
    agg.ingest_packet(data, now);
    let _ = agg.flush(now + Duration::from_secs(2), SystemTime::now());
    let mut out = String::new();
    metricship::prometheus::render_series(&agg, &mut out);
});
