//! The control stream's codec (protocol notes §5): the AES-128-GCM envelope every ENet packet travels
//! in ([`envelope`]) and the typed messages inside it ([`message`]). No I/O: lumen-net owns the ENet
//! host and hands each received packet to [`ControlCrypto::open_message`], and seals what it sends
//! with [`ControlCrypto::seal_message`].

pub mod envelope;
#[doc(hidden)]
pub mod fuzz;
mod gcm;
pub mod message;

pub(crate) use gcm::{Gcm, Iv, TAG_LEN};

pub use envelope::{ControlCrypto, EnvelopeError, IvMode, Opened, Side};
pub use message::{
    ClientMessage, FrameFecStatus, HdrMetadata, HostMessage, LossStats, MessageError, Termination,
};

/// A control packet that could not be turned into a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Message(#[from] MessageError),
}

impl ControlCrypto {
    /// Opens a packet from the client and parses its message; returns the client's sequence number
    /// with it.
    pub fn open_message(&self, packet: &[u8]) -> Result<(u32, ClientMessage), ControlError> {
        let opened = self.open(packet)?;
        let msg = ClientMessage::parse(opened.msg_type, &opened.payload)?;
        Ok((opened.seq, msg))
    }

    /// Seals a host message with the next sequence number.
    pub fn seal_message(&mut self, msg: &HostMessage) -> Result<Vec<u8>, ControlError> {
        let (msg_type, payload) = msg.encode();
        Ok(self.seal(msg_type, &payload)?)
    }
}
