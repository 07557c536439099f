//! CloudWatch Embedded Metric Format (EMF) lines on stdout: the alternative to
//! PutMetricData. With the awslogs log driver, CloudWatch Logs turns each line
//! into metrics, with no PutMetricData call and no `cloudwatch:PutMetricData`
//! permission.
//!
//! EMF carries plain values only (at most 100 per metric), no counts: a timer's
//! distinct values are expanded by their counts while that fits in 100 values,
//! otherwise the distinct values alone are sent (evenly thinned to 100), and a
//! statistic set (more than 150 distinct values) is sent as its mean.

use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use crate::datum::{Datum, DatumValue};

/// EMF's limit of values per metric.
pub const MAX_EMF_VALUES: usize = 100;

fn emf_values(v: &DatumValue) -> Value {
    match v {
        DatumValue::Single(x) => json!(x),
        DatumValue::Values { values, counts } => {
            let total: f64 = counts.iter().sum();
            let integral = counts.iter().all(|c| c.fract() == 0.0);
            let list: Vec<f64> = if integral && total <= MAX_EMF_VALUES as f64 {
                values
                    .iter()
                    .zip(counts)
                    .flat_map(|(v, c)| std::iter::repeat_n(*v, *c as usize))
                    .collect()
            } else if values.len() <= MAX_EMF_VALUES {
                values.clone()
            } else {
                let step = values.len() as f64 / MAX_EMF_VALUES as f64;
                (0..MAX_EMF_VALUES)
                    .map(|i| values[(i as f64 * step) as usize])
                    .collect()
            };
            json!(list)
        }
        DatumValue::Stats { count, sum, .. } => json!(sum / count.max(f64::MIN_POSITIVE)),
    }
}

/// One EMF JSON line (without the newline) for a datum in `namespace`.
pub fn line(namespace: &str, d: &Datum) -> String {
    let ms = d
        .timestamp
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_millis() as u64)
        .unwrap_or(0);
    let mut metric = Map::new();
    metric.insert("Name".into(), json!(&*d.name));
    metric.insert("Unit".into(), json!(d.unit.as_str()));
    if d.high_resolution {
        metric.insert("StorageResolution".into(), json!(1));
    }
    let dims: Vec<&str> = d.dimensions.iter().map(|(k, _)| k.as_str()).collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dims],
                "Metrics": [Value::Object(metric)],
            }],
        }),
    );
    for (k, v) in &d.dimensions {
        root.insert(k.clone(), json!(v));
    }
    root.insert(d.name.to_string(), emf_values(&d.value));
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Unit;
    use std::time::{Duration, SystemTime};

    fn datum(value: DatumValue) -> Datum {
        Datum {
            name: "QueueDepth".into(),
            dimensions: vec![("Cluster".into(), "prod".into())],
            value,
            unit: Unit::Count,
            high_resolution: true,
            timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }
    }

    #[test]
    fn emf_document_shape() {
        let text = line("Airflow", &datum(DatumValue::Single(12.0)));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], json!(1_700_000_000_123u64));
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Airflow");
        assert_eq!(cw["Dimensions"], json!([["Cluster"]]));
        assert_eq!(
            cw["Metrics"][0],
            json!({"Name": "QueueDepth", "Unit": "Count", "StorageResolution": 1})
        );
        assert_eq!(v["Cluster"], "prod");
        assert_eq!(v["QueueDepth"], json!(12.0));
        let _ = SystemTime::now();
    }

    #[test]
    fn values_expand_by_counts_within_the_limit() {
        let v = emf_values(&DatumValue::Values {
            values: vec![1.0, 2.0],
            counts: vec![2.0, 1.0],
        });
        assert_eq!(v, json!([1.0, 1.0, 2.0]));
        let many = emf_values(&DatumValue::Values {
            values: (0..150).map(f64::from).collect(),
            counts: vec![1.0; 150],
        });
        assert_eq!(many.as_array().unwrap().len(), MAX_EMF_VALUES);
        let mean = emf_values(&DatumValue::Stats {
            count: 4.0,
            sum: 10.0,
            min: 1.0,
            max: 4.0,
        });
        assert_eq!(mean, json!(2.5));
    }
}
