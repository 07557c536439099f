//! CloudWatch's documented rules for one datum, checked before it is sent.
//!
//! CloudWatch answers one bad datum with `400 InvalidParameterValue` for the whole
//! PutMetricData request, so a single sender's empty tag would cost every other datum
//! of that request, the autoscaling signal included. Each datum is checked here first:
//! what can be repaired without changing the series' identity is repaired (non-finite
//! entries of a value array are removed), anything else drops that datum alone, counted
//! by [`DropReason`]. A datum is never changed in a way that could merge two distinct
//! series: dimensions are never truncated, rewritten or removed.
//!
//! Each rule cites the sentence of the CloudWatch API reference it follows
//! (`API_PutMetricData`, `API_MetricDatum`, `API_Dimension`).

use std::time::{Duration, SystemTime};

use crate::datum::{Datum, DatumValue};

/// "You can use up to 30 dimensions per metric" (API_PutMetricData; API_MetricDatum:
/// "Array Members: Maximum number of 30 items.").
pub const MAX_DIMENSIONS: usize = 30;
/// MetricName and Dimension Name: "Length Constraints: Minimum length of 1. Maximum
/// length of 255."
pub const MAX_NAME_LEN: usize = 255;
/// Dimension Value: "Length Constraints: Minimum length of 1. Maximum length of 1024."
pub const MAX_DIMENSION_VALUE_LEN: usize = 1024;
/// "Using the Values and Counts method enables you to publish up to 150 values per
/// metric with one PutMetricData request" (API_PutMetricData).
pub const MAX_VALUES: usize = 150;
/// "Values must be in the range of -2^360 to 2^360. In addition, special values (for
/// example, NaN, +Infinity, -Infinity) are not supported." (API_MetricDatum, Value).
pub const MAX_MAGNITUDE: f64 = 2.348_542_582_773_833_2e108; // 2^360
/// "You can specify time stamps that are as much as two weeks before the current date,
/// and as much as 2 hours after the current day and time." (API_PutMetricData). The
/// margins keep clear of the edges a clock skew would cross.
pub const MAX_PAST: Duration = Duration::from_secs(14 * 24 * 3600 - 3600);
/// See [`MAX_PAST`].
pub const MAX_FUTURE: Duration = Duration::from_secs(2 * 3600 - 300);

/// Why a datum was not sent. The label of `metricship_datums_invalid_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Metric name empty, longer than 255 bytes, or not printable ASCII.
    MetricName,
    /// More than 30 dimensions (the tags plus `--dimension`s).
    TooManyDimensions,
    /// A dimension name empty, over 255, not ASCII, only whitespace, or starting with `:`.
    DimensionName,
    /// A dimension value empty or only whitespace (a `|#key:` tag).
    DimensionValueEmpty,
    /// A dimension value over 1,024 bytes.
    DimensionValueTooLong,
    /// A dimension value with non-ASCII or control characters.
    DimensionValueNotAscii,
    /// NaN, ±Inf or beyond ±2^360 (for a value array: no valid entry left).
    Value,
    /// A timestamp more than two weeks old or two hours ahead.
    Timestamp,
}

impl DropReason {
    /// Every reason, for exporting zeroes.
    pub const ALL: [DropReason; 8] = [
        DropReason::MetricName,
        DropReason::TooManyDimensions,
        DropReason::DimensionName,
        DropReason::DimensionValueEmpty,
        DropReason::DimensionValueTooLong,
        DropReason::DimensionValueNotAscii,
        DropReason::Value,
        DropReason::Timestamp,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MetricName => "metric_name",
            DropReason::TooManyDimensions => "too_many_dimensions",
            DropReason::DimensionName => "dimension_name",
            DropReason::DimensionValueEmpty => "dimension_value_empty",
            DropReason::DimensionValueTooLong => "dimension_value_too_long",
            DropReason::DimensionValueNotAscii => "dimension_value_not_ascii",
            DropReason::Value => "value",
            DropReason::Timestamp => "timestamp",
        }
    }
}

/// Checks `d` against CloudWatch's rules at time `now`, repairing what can be repaired
/// without changing the series (non-finite entries of a value array are removed).
pub fn check(d: &mut Datum, now: SystemTime) -> Result<(), DropReason> {
    if !name_ok(&d.name) {
        return Err(DropReason::MetricName);
    }
    if d.dimensions.len() > MAX_DIMENSIONS {
        return Err(DropReason::TooManyDimensions);
    }
    for (k, v) in &d.dimensions {
        // "Dimension names must contain only ASCII characters, must include at least one
        // non-whitespace character, and cannot start with a colon (:). ASCII control
        // characters are not supported as part of dimension names."
        if !name_ok(k) || k.starts_with(':') {
            return Err(DropReason::DimensionName);
        }
        // "Dimension values must contain only ASCII characters and must include at least
        // one non-whitespace character. ASCII control characters are not supported as
        // part of dimension values."
        if v.bytes().all(|b| b.is_ascii_whitespace()) {
            return Err(DropReason::DimensionValueEmpty);
        }
        if v.len() > MAX_DIMENSION_VALUE_LEN {
            return Err(DropReason::DimensionValueTooLong);
        }
        if !v.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()) {
            return Err(DropReason::DimensionValueNotAscii);
        }
    }
    match d.timestamp.duration_since(now) {
        Ok(ahead) if ahead > MAX_FUTURE => return Err(DropReason::Timestamp),
        Err(behind) if behind.duration() > MAX_PAST => return Err(DropReason::Timestamp),
        _ => {}
    }
    match &mut d.value {
        DatumValue::Single(v) => {
            if !value_ok(*v) {
                return Err(DropReason::Value);
            }
        }
        DatumValue::Values { values, counts } => {
            // Entries are independent samples: an invalid one is removed, the rest sent.
            let mut keep = 0;
            for i in 0..values.len() {
                let count_ok = counts.get(i).is_none_or(|c| value_ok(*c) && *c >= 0.0);
                if value_ok(values[i]) && count_ok {
                    values.swap(keep, i);
                    if i < counts.len() {
                        counts.swap(keep, i);
                    }
                    keep += 1;
                }
            }
            values.truncate(keep.min(MAX_VALUES));
            counts.truncate(values.len());
            if values.is_empty() {
                return Err(DropReason::Value);
            }
        }
        DatumValue::Stats {
            count,
            sum,
            min,
            max,
        } => {
            if ![*count, *sum, *min, *max].into_iter().all(value_ok) || *count <= 0.0 {
                return Err(DropReason::Value);
            }
        }
    }
    Ok(())
}

/// A metric or dimension name: 1–255 bytes of ASCII without control characters, not
/// only whitespace.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii() && !b.is_ascii_control())
        && !s.bytes().all(|b| b.is_ascii_whitespace())
}

fn value_ok(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_MAGNITUDE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Unit;
    use proptest::prelude::*;

    fn datum(dims: &[(&str, &str)], value: DatumValue) -> Datum {
        Datum {
            name: "airflow_pool_queued_slots".into(),
            dimensions: dims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            unit: Unit::None,
            high_resolution: false,
            timestamp: SystemTime::now(),
        }
    }

    #[test]
    fn each_rule_drops_with_its_reason() {
        let now = SystemTime::now();
        let one = DatumValue::Single(1.0);
        let cases: Vec<(Datum, DropReason)> = vec![
            (
                datum(&[("pool", "")], one.clone()),
                DropReason::DimensionValueEmpty,
            ),
            (
                datum(&[("pool", "  ")], one.clone()),
                DropReason::DimensionValueEmpty,
            ),
            (
                datum(&[("pool", &"x".repeat(1025))], one.clone()),
                DropReason::DimensionValueTooLong,
            ),
            (
                datum(&[("pool", "a\u{7}b")], one.clone()),
                DropReason::DimensionValueNotAscii,
            ),
            (
                datum(&[("pool", "é")], one.clone()),
                DropReason::DimensionValueNotAscii,
            ),
            (
                datum(&[(":pool", "a")], one.clone()),
                DropReason::DimensionName,
            ),
            (datum(&[("", "a")], one.clone()), DropReason::DimensionName),
            (datum(&[], DatumValue::Single(f64::NAN)), DropReason::Value),
            (
                datum(&[], DatumValue::Single(f64::INFINITY)),
                DropReason::Value,
            ),
            (datum(&[], DatumValue::Single(-1e200)), DropReason::Value),
            (
                datum(
                    &[],
                    DatumValue::Stats {
                        count: 1.0,
                        sum: f64::NAN,
                        min: 0.0,
                        max: 0.0,
                    },
                ),
                DropReason::Value,
            ),
        ];
        for (mut d, reason) in cases {
            assert_eq!(check(&mut d, now), Err(reason), "{:?}", d.dimensions);
        }
        let mut many = datum(&[], one.clone());
        many.dimensions = (0..31).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(check(&mut many, now), Err(DropReason::TooManyDimensions));
        many.dimensions.pop();
        assert_eq!(check(&mut many, now), Ok(()), "30 is allowed");
        let mut old = datum(&[], one.clone());
        old.timestamp = now - Duration::from_secs(15 * 24 * 3600);
        assert_eq!(check(&mut old, now), Err(DropReason::Timestamp));
        old.timestamp = now + Duration::from_secs(3 * 3600);
        assert_eq!(check(&mut old, now), Err(DropReason::Timestamp));
        let mut name = datum(&[], one);
        name.name = "x".repeat(256).into();
        assert_eq!(check(&mut name, now), Err(DropReason::MetricName));
        let mut ok = datum(&[("pool_name", "default pool")], DatumValue::Single(1e100));
        assert_eq!(check(&mut ok, now), Ok(()));
    }

    #[test]
    fn value_arrays_lose_only_their_bad_entries() {
        let mut d = datum(
            &[],
            DatumValue::Values {
                values: vec![1.0, f64::NAN, 3.0, f64::NEG_INFINITY],
                counts: vec![2.0, 1.0, 5.0, 1.0],
            },
        );
        assert_eq!(check(&mut d, SystemTime::now()), Ok(()));
        assert_eq!(
            d.value,
            DatumValue::Values {
                values: vec![1.0, 3.0],
                counts: vec![2.0, 5.0]
            }
        );
        let mut all_bad = datum(
            &[],
            DatumValue::Values {
                values: vec![f64::NAN],
                counts: vec![1.0],
            },
        );
        assert_eq!(
            check(&mut all_bad, SystemTime::now()),
            Err(DropReason::Value)
        );
    }

    proptest! {
        /// Whatever a sender puts in a name or tag, a datum that passes satisfies every
        /// rule the strict CloudWatch stand-in enforces.
        #[test]
        fn passing_datums_obey_the_rules(
            name in ".{0,300}",
            dims in proptest::collection::vec((".{0,40}", ".{0,1100}"), 0..34),
            v in proptest::num::f64::ANY,
        ) {
            let mut d = datum(&[], DatumValue::Single(v));
            d.name = name.as_str().into();
            d.dimensions = dims;
            if check(&mut d, SystemTime::now()).is_ok() {
                prop_assert!(d.dimensions.len() <= 30);
                prop_assert!(!d.name.is_empty() && d.name.len() <= 255 && d.name.is_ascii());
                for (k, v) in &d.dimensions {
                    prop_assert!(k.len() <= 255 && v.len() <= 1024 && !v.is_empty());
                    prop_assert!(k.is_ascii() && v.is_ascii() && !k.starts_with(':'));
                    prop_assert!(!v.bytes().any(|b| b.is_ascii_control()));
                    prop_assert!(v.bytes().any(|b| !b.is_ascii_whitespace()));
                }
                prop_assert!(v.is_finite());
            }
        }
    }
}
