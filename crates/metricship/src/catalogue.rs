//! The built-in catalogue of Airflow 2.x and 3.x StatsD names.
//!
//! It is written in the mapping-file format itself (`airflow-catalogue.yaml`,
//! embedded at build time), so it doubles as an example for users and is
//! loaded by the same code as their files. It maps per-object legacy names
//! (`pool.queued_slots.<pool>`, `dag.<dag>.<task>.duration`, ...) and the
//! tagged Airflow 3 names to the same series, and drops the tag-less Airflow 3
//! names that would otherwise collide (see the comment at the top of the YAML).

use crate::mapping::{Mapper, MappingError};

const CATALOGUE: &str = include_str!("airflow-catalogue.yaml");

/// The catalogue for Airflow's `statsd_prefix` (`airflow` by default; empty for none).
pub fn airflow(prefix: &str) -> Result<Mapper, MappingError> {
    let text = if prefix.is_empty() {
        CATALOGUE.replace("{prefix}.", "")
    } else {
        CATALOGUE.replace("{prefix}", prefix)
    };
    Mapper::from_yaml(&text, "the built-in Airflow catalogue")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapped;
    use crate::statsd::parse_line;

    fn name_and_labels(m: &Mapper, line: &str) -> Option<(String, Vec<(String, String)>)> {
        match m.map(&parse_line(line.as_bytes()).unwrap()) {
            Mapped::Keep(t) => Some((t.name, t.labels)),
            _ => None,
        }
    }

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn airflow_names_map_to_labelled_series() {
        let m = airflow("airflow").unwrap();
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case<'_>] = &[
            (
                "airflow.pool.open_slots.default_pool:128|g",
                "airflow_pool_open_slots",
                &[("pool_name", "default_pool")],
            ),
            (
                "airflow.pool.queued_slots:3|g|#pool_name:etl",
                "airflow_pool_queued_slots",
                &[("pool_name", "etl")],
            ),
            (
                "airflow.executor.running_tasks.CeleryExecutor:4|g",
                "airflow_executor_running_tasks",
                &[("executor", "CeleryExecutor")],
            ),
            (
                "airflow.executor.running_tasks:4|g",
                "airflow_executor_running_tasks",
                &[],
            ),
            (
                "airflow.dagrun.duration.success.etl_daily:5000|ms",
                "airflow_dagrun_duration_success_seconds",
                &[("dag_id", "etl_daily")],
            ),
            (
                "airflow.dag.etl_daily.extract.duration:1200|ms",
                "airflow_task_duration_seconds",
                &[("dag_id", "etl_daily"), ("task_id", "extract")],
            ),
            (
                "airflow.ti.finish.etl_daily.extract.success:1|c",
                "airflow_ti_finish",
                &[
                    ("dag_id", "etl_daily"),
                    ("state", "success"),
                    ("task_id", "extract"),
                ],
            ),
            (
                "airflow.operator_failures_PythonOperator:1|c",
                "airflow_operator_failures",
                &[("operator", "PythonOperator")],
            ),
            (
                "airflow.scheduler_heartbeat:1|c",
                "airflow_scheduler_heartbeat",
                &[],
            ),
        ];
        for (line, name, labels) in cases {
            assert_eq!(
                name_and_labels(&m, line),
                Some((name.to_string(), l(labels))),
                "{line}"
            );
        }
    }

    #[test]
    fn tagless_airflow3_names_are_ambiguous() {
        let m = airflow("airflow").unwrap();
        for line in [
            "airflow.pool.queued_slots:3|g",
            "airflow.pool.open_slots:3|g",
            "airflow.dagrun.duration.success:3|ms",
            "airflow.task.duration:3|ms",
        ] {
            assert_eq!(
                m.map(&parse_line(line.as_bytes()).unwrap()),
                Mapped::Ambiguous,
                "{line}"
            );
        }
    }

    #[test]
    fn other_prefixes() {
        let m = airflow("af").unwrap();
        assert_eq!(
            name_and_labels(&m, "af.pool.queued_slots.p:1|g").unwrap().0,
            "airflow_pool_queued_slots"
        );
        let m = airflow("").unwrap();
        assert_eq!(
            name_and_labels(&m, "pool.queued_slots.p:1|g").unwrap().0,
            "airflow_pool_queued_slots"
        );
    }
}
