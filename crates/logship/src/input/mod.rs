//! Inputs: where records come from. Each input turns what it receives into
//! [`crate::chunk::Chunk`]s for the outputs and tells the checkpoint ledger what it has
//! read. Files are the one input today ([`files`]); the FireLens forward protocol is the
//! next ([`forward`]: its frame decoder so far, not yet wired to a socket).

pub mod files;
pub mod forward;
