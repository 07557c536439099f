//! The unit that flows from inputs to outputs: a [`Chunk`] of encoded records from one
//! source, with the offset that delivering it makes safe to checkpoint. Inputs make
//! chunks, outputs take them; neither owns the type.

use std::sync::Arc;

use crate::record::FileMeta;

/// A run of encoded records from one file, handed to every output.
#[derive(Debug)]
pub struct Chunk {
    /// Newline-terminated JSON records; empty when no output takes records (only the
    /// Airflow layout is shipped), and then every record is empty.
    pub data: Vec<u8>,
    /// End position in `data` of each record (one per line or joined traceback).
    pub ends: Vec<u32>,
    /// The file's id.
    pub file: u64,
    /// The file offset of the first byte of the first record.
    pub start: u64,
    /// Delivering this chunk makes everything before this file offset delivered.
    pub end: u64,
    /// The file's bytes from `start` to `end`, unchanged, when an output wants them
    /// (the Airflow remote-log layout); empty otherwise.
    pub raw: Vec<u8>,
    /// The file's metadata (path, Airflow fields).
    pub meta: Arc<FileMeta>,
    /// Cut from the forward input's disk buffer (container output), not from a file:
    /// `file` is then a buffer segment's id.
    pub forwarded: bool,
}

impl Chunk {
    /// The records, each with its trailing newline.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end as usize];
            start = end as usize;
            r
        })
    }
}
