//! lumen's protocol logic: pure code with no I/O, the same on every platform, so that every parser and
//! encoder here can be unit-tested and fuzzed without sockets or processes.
//!
//! No `unsafe`, with one exception: the x86-64 SIMD kernel of Reed-Solomon parity (`fec::kernel_x86`),
//! which needs `std::arch` loads and stores to reach nanors' speed. That module alone allows
//! `unsafe_code`; the crate root denies it everywhere else.
//!
//! The GameStream protocol pieces (packetization, Reed-Solomon FEC, stream crypto, pacing) land here with
//! the protocol work; the foundation only fixes the crate's shape and its lints.
#![deny(unsafe_code)]

pub mod audio_packetizer;
pub mod control;
pub mod fec;
pub mod input;
pub mod mdns;
pub mod nvhttp;
pub mod pattern;
pub mod rtsp;
pub mod stream_crypto;
pub mod video_packetizer;
