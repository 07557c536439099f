//! Where a record came from: the fields of Airflow's task log path and the file's
//! metadata, rendered once per file as the JSON members every record of it carries.

use std::fmt::Write as _;

use airside_core::ecs::TaskMetadata;

/// Fields taken from Airflow's task log layout
/// `dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AirflowFields {
    /// The DAG id.
    pub dag_id: Option<String>,
    /// The DAG run id.
    pub run_id: Option<String>,
    /// The task id.
    pub task_id: Option<String>,
    /// The map index of a mapped task.
    pub map_index: Option<i64>,
    /// The try number (`attempt=N`).
    pub try_number: Option<u32>,
}

impl AirflowFields {
    /// Reads the fields from a log file path; components that are absent stay `None`.
    pub fn from_path(path: &str) -> Self {
        let mut f = Self::default();
        for part in path.split('/') {
            if let Some(v) = part.strip_prefix("dag_id=") {
                f.dag_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("run_id=") {
                f.run_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("task_id=") {
                f.task_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("map_index=") {
                f.map_index = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("attempt=") {
                f.try_number = v.strip_suffix(".log").unwrap_or(v).parse().ok();
            }
        }
        f
    }
}

/// What every record from one file carries besides its own content.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The file's path when it was found.
    pub path: String,
    /// Fields from the path.
    pub airflow: AirflowFields,
    /// The file's identity as hex (part of every record id).
    pub id_hex: String,
    /// The constant JSON members (path, Airflow and ECS fields), pre-rendered.
    pub(super) static_json: String,
}

impl FileMeta {
    /// Builds the metadata of one file.
    pub fn new(path: &str, id: u64, ecs: Option<&TaskMetadata>) -> Self {
        let airflow = AirflowFields::from_path(path);
        let mut s = String::new();
        push_member(&mut s, "path", path);
        if let Some(v) = &airflow.dag_id {
            push_member(&mut s, "dag_id", v);
        }
        if let Some(v) = &airflow.run_id {
            push_member(&mut s, "run_id", v);
        }
        if let Some(v) = &airflow.task_id {
            push_member(&mut s, "task_id", v);
        }
        if let Some(v) = airflow.map_index {
            let _ = write!(s, ",\"map_index\":{v}");
        }
        if let Some(v) = airflow.try_number {
            let _ = write!(s, ",\"try_number\":{v}");
        }
        if let Some(ecs) = ecs {
            for (k, v) in [
                ("ecs_cluster", &ecs.cluster),
                ("ecs_task_arn", &ecs.task_arn),
                ("ecs_family", &ecs.family),
                ("ecs_container", &ecs.container),
            ] {
                if !v.is_empty() {
                    push_member(&mut s, k, v);
                }
            }
        }
        Self {
            path: path.to_string(),
            airflow,
            id_hex: format!("{id:016x}"),
            static_json: s,
        }
    }
}

impl FileMeta {
    /// Metadata of a stream that is not a file (a container's output): `name` stands
    /// for the path (outputs group by it), and every record carries `members`.
    pub fn with_members(name: &str, id: u64, members: &[(&str, &str)]) -> Self {
        let mut s = String::new();
        for (k, v) in members {
            push_member(&mut s, k, v);
        }
        Self {
            path: name.to_string(),
            airflow: AirflowFields::default(),
            id_hex: format!("{id:016x}"),
            static_json: s,
        }
    }
}

pub(super) fn push_member(s: &mut String, key: &str, value: &str) {
    s.push(',');
    s.push('"');
    s.push_str(key);
    s.push_str("\":");
    s.push_str(&serde_json::to_string(value).expect("strings serialize"));
}
