//! Where a log file goes in Airflow's remote-log layout, and how logship names the
//! objects that hold it.
//!
//! Airflow's S3 reader (`S3RemoteLogIO.read`, apache-airflow-providers-amazon 9.39)
//! takes the attempt's key as `os.path.join(remote_base_log_folder, relative_path)`,
//! where `relative_path` is the log file's path relative to `base_log_folder` (whatever
//! `log_filename_template` made of it), lists **every key starting with it**, sorts the
//! keys and reads them one after another. So the attempt key is derived from the file's
//! relative path alone (no template is parsed), and logship's objects for an attempt are
//! the attempt key itself (the whole file, once compacted) and the attempt key followed
//! by `.` and the zero-padded offset of the object's first byte: they sort in file order
//! after the compacted object, and a re-upload of the same range replaces, not duplicates.
//!
//! A deferred task's trigger log (`…/attempt=1.log.trigger.7.log`) is a file of its own
//! whose key starts with its attempt's key, as Airflow's own uploader has it, so the
//! reader of the attempt shows it too.

use std::path::{Component, Path};

/// Digits of the offset in a segment's name: up to 1 TB per log file.
const OFFSET_DIGITS: usize = 12;

/// The attempt key of the log file at `path`: `prefix/<path relative to folder>` (or the
/// relative path alone when `prefix` is empty), as Airflow joins `remote_base_log_folder`
/// and the relative path. `None` when `path` is not below `folder`, or has `..` or
/// non-UTF-8 parts (Airflow's uploader skips paths outside `base_log_folder` too).
pub fn attempt_key(prefix: &str, folder: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(folder).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    let rel = parts.join("/");
    let prefix = prefix.trim_matches('/');
    Some(if prefix.is_empty() {
        rel
    } else {
        format!("{prefix}/{rel}")
    })
}

/// One of logship's objects of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Name {
    /// The attempt key itself: the file from its first byte (written by compaction).
    Whole,
    /// `<attempt key>.<offset>`: bytes from this offset on.
    Segment(u64),
}

impl Name {
    /// The S3 key of this object of the attempt `attempt`.
    pub fn key(self, attempt: &str) -> String {
        match self {
            Name::Whole => attempt.to_string(),
            Name::Segment(start) => format!("{attempt}.{start:0OFFSET_DIGITS$}"),
        }
    }

    /// Which of the attempt's objects `key` is; `None` for any other key under the
    /// attempt key (a trigger log, another tool's object).
    pub fn parse(attempt: &str, key: &str) -> Option<Name> {
        let rest = key.strip_prefix(attempt)?;
        if rest.is_empty() {
            return Some(Name::Whole);
        }
        let digits = rest.strip_prefix('.')?;
        if digits.len() != OFFSET_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Name::Segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_key_is_the_prefix_joined_with_the_relative_path() {
        let folder = Path::new("/opt/airflow/logs");
        let file = Path::new(
            "/opt/airflow/logs/dag_id=etl/run_id=manual__2026-12-03/task_id=load/attempt=1.log",
        );
        assert_eq!(
            attempt_key("logs", folder, file).unwrap(),
            "logs/dag_id=etl/run_id=manual__2026-12-03/task_id=load/attempt=1.log"
        );
        assert_eq!(
            attempt_key("", folder, file).unwrap(),
            "dag_id=etl/run_id=manual__2026-12-03/task_id=load/attempt=1.log"
        );
        // A custom log_filename_template: whatever the path is, it is the key.
        let custom = Path::new("/opt/airflow/logs/etl/load/2026-12-03/1.txt");
        assert_eq!(
            attempt_key("a/b/", folder, custom).unwrap(),
            "a/b/etl/load/2026-12-03/1.txt"
        );
        assert_eq!(
            attempt_key("logs", folder, Path::new("/var/log/x.log")),
            None
        );
        assert_eq!(attempt_key("logs", folder, folder), None);
        assert_eq!(
            attempt_key("logs", folder, Path::new("/opt/airflow/logs/../x.log")),
            None
        );
    }

    #[test]
    fn names_sort_in_file_order_after_the_whole_file() {
        let a = "logs/dag_id=etl/task_id=load/attempt=1.log";
        let mut keys: Vec<String> = [Name::Segment(10_000), Name::Segment(9), Name::Whole]
            .iter()
            .map(|n| n.key(a))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                a.to_string(),
                format!("{a}.000000000009"),
                format!("{a}.000000010000")
            ]
        );
        // The trigger log of the same attempt is a key under it, but not an object of it.
        assert_eq!(Name::parse(a, &format!("{a}.trigger.7.log")), None);
        assert_eq!(Name::parse(a, "logs/other.log"), None);
        assert_eq!(Name::parse(a, &format!("{a}.12")), None);
    }

    proptest! {
        #[test]
        fn a_name_parses_back_and_keeps_the_order_of_offsets(
            a in 0u64..999_999_999_999, b in 0u64..999_999_999_999
        ) {
            let attempt = "p/dag_id=d/attempt=2.log";
            for n in [Name::Segment(a), Name::Segment(b), Name::Whole] {
                prop_assert_eq!(Name::parse(attempt, &n.key(attempt)), Some(n));
            }
            prop_assert_eq!(
                Name::Segment(a).key(attempt).cmp(&Name::Segment(b).key(attempt)),
                a.cmp(&b)
            );
        }
    }
}
