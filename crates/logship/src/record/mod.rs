//! From log lines to records: Airflow path fields, line formats, tracebacks, encoding.
//!
//! The data flows one way: the tailer cuts a file into lines, [`Assembler`] joins
//! the lines of one Python traceback (including 3.11+ caret lines and chained
//! "During handling…"/"The above exception…" blocks) into one [`Logical`]
//! record, and [`encode`] writes each logical record as one or more JSON lines
//! (a record longer than [`PART_BYTES`] is split into numbered parts).
//!
//! Rooms: `meta.rs` (path fields), `frame.rs` (joining lines), `encode.rs` (JSON out).

mod encode;
mod frame;
mod meta;
#[cfg(test)]
mod tests;

pub use encode::{Airflow2, encode, fnv1a, parse_airflow2, split_parts};
pub use frame::Assembler;
pub use meta::{AirflowFields, FileMeta};

/// Longest message text in one JSON record. JSON escaping can grow text up to six
/// times (`\u0000`), so 128 KiB of text stays below Firehose's 1,000 KiB record limit.
pub const PART_BYTES: usize = 128 * 1024;

/// Longest logical record the assembler builds before it sends what it has.
pub const MAX_LOGICAL_BYTES: usize = 1024 * 1024;

/// One logical record: one line, or the lines of one traceback, with the byte range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logical {
    /// The text, lines joined by `\n`, without the final newline.
    pub text: String,
    /// Offset of the first byte in the file.
    pub offset: u64,
    /// Offset just past the last byte (including its newline).
    pub end: u64,
}
