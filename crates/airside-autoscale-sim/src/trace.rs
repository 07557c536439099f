//! Demand traces: the task instances to replay, read from and written to CSV.
//!
//! The CSV has a header and one row per task instance:
//!
//! ```text
//! queued_at_s,duration_s,queue,pool
//! 0,420,default,default_pool
//! 12.5,95,default,default_pool
//! ```
//!
//! * `queued_at_s`: seconds from the start of the trace when the scheduler queued the
//!   task instance (Airflow's `task_instance.queued_dttm`);
//! * `duration_s`: how long it ran once a worker took it (`end_date - start_date`);
//! * `queue`, `pool`: its Celery queue and Airflow pool (reported, not yet modelled:
//!   every queue is served by the one worker service).
//!
//! Rows need not be sorted. The SQL that exports this from Airflow's metadata database is
//! in the crate README.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// One task instance of the demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Seconds from the trace's start when it was queued.
    pub queued_at_s: f64,
    /// Seconds it runs once started.
    pub duration_s: f64,
    /// Celery queue.
    pub queue: String,
    /// Airflow pool.
    pub pool: String,
}

/// A trace that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The CSV is malformed (the message names the row).
    #[error("trace CSV: {0}")]
    Csv(#[from] csv::Error),
    /// A row has a value no task can have.
    #[error("trace row {row}: {why}")]
    Invalid {
        /// 1-based data row.
        row: usize,
        /// What is wrong.
        why: String,
    },
    /// No rows.
    #[error("the trace has no task instances")]
    Empty,
}

/// Reads a trace, sorted by queued time (ties keep their order).
pub fn read_csv(input: impl Read) -> Result<Vec<Task>, TraceError> {
    let mut tasks = Vec::new();
    for (i, row) in csv::Reader::from_reader(input).deserialize().enumerate() {
        let t: Task = row?;
        let why = if !(t.queued_at_s.is_finite() && t.queued_at_s >= 0.0) {
            Some("queued_at_s must be a number of seconds >= 0")
        } else if !(t.duration_s.is_finite() && t.duration_s >= 0.0) {
            Some("duration_s must be a number of seconds >= 0")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(TraceError::Invalid {
                row: i + 1,
                why: why.into(),
            });
        }
        tasks.push(t);
    }
    if tasks.is_empty() {
        return Err(TraceError::Empty);
    }
    tasks.sort_by(|a, b| a.queued_at_s.total_cmp(&b.queued_at_s));
    Ok(tasks)
}

/// Writes a trace in the same form.
pub fn write_csv(tasks: &[Task], out: impl Write) -> Result<(), TraceError> {
    let mut w = csv::Writer::from_writer(out);
    for t in tasks {
        w.serialize(t)?;
    }
    w.flush().map_err(csv::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sorts_and_round_trips() {
        let text =
            "queued_at_s,duration_s,queue,pool\n30,60,default,p\n0,5.5,\"a,b\",default_pool\n";
        let tasks = read_csv(text.as_bytes()).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].queue, "a,b");
        assert_eq!(tasks[1].queued_at_s, 30.0);
        let mut out = Vec::new();
        write_csv(&tasks, &mut out).unwrap();
        assert_eq!(read_csv(out.as_slice()).unwrap(), tasks);
    }

    #[test]
    fn bad_rows_are_named() {
        let e = read_csv("queued_at_s,duration_s,queue,pool\n1,2,q,p\n-1,2,q,p\n".as_bytes())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "trace row 2: queued_at_s must be a number of seconds >= 0"
        );
        assert!(matches!(
            read_csv("queued_at_s,duration_s,queue,pool\n".as_bytes()),
            Err(TraceError::Empty)
        ));
        assert!(read_csv("queued_at_s,duration_s,queue,pool\nx,2,q,p\n".as_bytes()).is_err());
    }
}
