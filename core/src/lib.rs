//! lumen's protocol logic: pure code with no I/O and no `unsafe`, the same on every platform, so that
//! every parser and encoder here can be unit-tested and fuzzed without sockets or processes.
//!
//! The GameStream protocol pieces (packetization, Reed-Solomon FEC, stream crypto, pacing) land here with
//! the protocol work; the foundation only fixes the crate's shape and its lints.
#![forbid(unsafe_code)]
