//! NDJSON on standard output (for local runs and for a log driver that ships stdout).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Acker, OutputError};
use crate::chunk::Chunk;

/// Writes every record to stdout; a chunk is delivered once written and flushed.
pub struct StdoutOutput {
    acker: Acker,
}

impl StdoutOutput {
    /// A stdout output acknowledging through `acker`.
    pub fn new(acker: Acker) -> Self {
        Self { acker }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Arc<Chunk>>) -> Result<(), OutputError> {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = rx.recv().await {
            let written = async {
                out.write_all(&chunk.data).await?;
                out.flush().await
            }
            .await;
            if let Err(e) = written {
                return Err(OutputError {
                    output: "stdout".into(),
                    class: airside_core::aws::ErrorClass::Invalid,
                    message: format!("cannot write to stdout: {e}"),
                });
            }
            crate::telemetry::records_delivered(
                "stdout",
                chunk.ends.len() as u64,
                chunk.data.len() as u64,
            );
            self.acker.ack(chunk.file, chunk.end);
        }
        Ok(())
    }
}
