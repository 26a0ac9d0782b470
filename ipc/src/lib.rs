//! The process boundary of lumen.
//!
//! Everything two lumen processes need to meet safely lives here, and nothing else does:
//!
//! - [`msg`]: the typed, versioned messages every process speaks (the one place each cross-process
//!   message is defined);
//! - [`codec`]: their compact binary encoding, with a hard size limit on decode;
//! - [`channel`]: `SOCK_SEQPACKET` control channels that carry those messages and fds (`SCM_RIGHTS`);
//! - [`fdcheck`]: checks of the kind of every fd received from a peer (memfd and its seals, eventfd,
//!   socket, dmabuf) before it is used;
//! - [`media`]: the session parameters and the messages capture, encode and the stream's consumer
//!   exchange; [`frame_pool`]: the shared frame slots between capture and encode;
//! - [`input`]: client input events (net → input) and pad feedback (input → net);
//! - [`ring`]: single-producer single-consumer record rings in sealed memfds with eventfd doorbells;
//! - [`sandbox`]: the one lock-down every worker enters before it reads an untrusted byte, and the
//!   self-test that proves it;
//! - [`worker`]: the start-up every worker binary shares (channel on a fixed fd, lock-down, ready report).
//!
//! The peer on the other side of any of these is untrusted: every length, index and enum that crosses
//! is checked before use, and a malformed input is an error value, never a panic.

pub mod channel;
pub mod codec;
pub mod fdcheck;
pub mod frame_pool;
pub mod input;
pub mod media;
pub mod msg;
pub mod net_msg;
pub mod ring;
pub mod sandbox;
pub mod worker;
