//! The Fluentd forward protocol, as FireLens speaks it to its log router (issue 16, in
//! progress): today the frame decoder ([`frame`]); the server that listens on FireLens'
//! socket and answers acks after durability comes next.

pub mod frame;

#[cfg(test)]
mod tests;
