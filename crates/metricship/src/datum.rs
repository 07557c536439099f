//! The export model: what leaves metricship for CloudWatch or EMF. One [`Datum`] is one
//! interval value of one series (or of the signal), in CloudWatch's terms; the
//! [`Allowlist`] says which series go out at all. The aggregator produces datums, the
//! rules check them, the outputs send them; none of them owns the model.

use std::sync::Arc;
use std::time::SystemTime;

/// The CloudWatch unit of a datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// No unit (gauges, histograms).
    None,
    /// Counts (counters, sets).
    Count,
    /// Milliseconds (StatsD `ms` timers).
    Milliseconds,
    /// Seconds.
    Seconds,
}

impl Unit {
    /// CloudWatch's name for the unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::None => "None",
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// The value of one interval datum.
#[derive(Debug, Clone, PartialEq)]
pub enum DatumValue {
    /// One number (counter sum, gauge value, set size, derived metric).
    Single(f64),
    /// Distinct values and how often each occurred (at most 150).
    Values {
        /// The distinct values.
        values: Vec<f64>,
        /// Their counts, same length.
        counts: Vec<f64>,
    },
    /// A statistic set, when there were more than 150 distinct values.
    Stats {
        /// Number of samples.
        count: f64,
        /// Their sum.
        sum: f64,
        /// The smallest.
        min: f64,
        /// The largest.
        max: f64,
    },
}

/// One interval value of one series, ready for CloudWatch or EMF.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// The metric name.
    pub name: Arc<str>,
    /// Dimensions (the series' labels).
    pub dimensions: Vec<(String, String)>,
    /// The value.
    pub value: DatumValue,
    /// The unit.
    pub unit: Unit,
    /// Whether to store at 1-second resolution.
    pub high_resolution: bool,
    /// The end of the interval.
    pub timestamp: SystemTime,
}

/// Which series go to CloudWatch: glob patterns on the metric name.
#[derive(Debug, Clone)]
pub struct Allowlist {
    set: globset::GlobSet,
    patterns: Vec<String>,
}

impl Allowlist {
    /// Builds an allowlist from globs (`*` matches anything, `?` one character).
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            b.add(
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()?,
            );
        }
        Ok(Self {
            set: b.build()?,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the metric goes out.
    pub fn allows(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The patterns, for logs.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}
