//! lumen-net's end of the direct net ↔ input channel (`BrokerMsg::InputChannel`): the client's
//! decoded input goes to lumen-input as [`NetToInput`], and pad feedback ([`InputToNet`]) comes
//! back to be sent to the client over control.
//!
//! The control thread calls in here, so nothing blocks: the socket is non-blocking, a full
//! channel drops the batch (the caller counts it), and feedback is read only when it is already
//! waiting. The broker hands a fresh channel after every `Ready` of either worker; it replaces the
//! previous one, and a running stream is announced on it again so that lumen-input knows the
//! stream's size after a restart.
//!
//! There is one channel per process: [`process`] is the forwarder that `main` hands channels to
//! and the stream supervisor gives each control stream, so neither has to thread it through the
//! stream machinery. Tests make their own with [`InputForward::default`].

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::input::{InputEvent, InputToNet, NetToInput, MAX_GAMEPADS};
use rustix::io::Errno;

/// Why something meant for lumen-input was not sent (the caller counts it).
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    #[error("no input channel (lumen-input is not running)")]
    NoChannel,
    #[error("the input channel is full")]
    Full,
    #[error("lumen-input closed the input channel")]
    Closed,
    #[error("sending on the input channel: {0}")]
    Failed(ChannelError),
}

/// Feedback from lumen-input that was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadFeedback {
    #[error("feedback for pad {0}, not below {MAX_GAMEPADS}")]
    Pad(u8),
    #[error("undecodable feedback record: {0}")]
    Undecodable(ChannelError),
    #[error("lumen-input closed the input channel")]
    Closed,
}

/// The stream currently announced to lumen-input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StreamSize {
    width: u16,
    height: u16,
}

#[derive(Default)]
struct State {
    channel: Option<Channel>,
    stream: Option<StreamSize>,
}

/// The net ↔ input channel, shared by the worker loop (which replaces it) and the control thread
/// (which sends on it and reads feedback from it).
#[derive(Default)]
pub struct InputForward {
    state: Mutex<State>,
}

/// The process's forwarder (see the module doc).
pub fn process() -> Arc<InputForward> {
    static PROCESS: OnceLock<Arc<InputForward>> = OnceLock::new();
    PROCESS.get_or_init(Arc::default).clone()
}

/// What a control stream needs to forward input: the forwarder and the stream's size.
pub struct StreamInput {
    pub forward: Arc<InputForward>,
    pub width: u16,
    pub height: u16,
}

impl StreamInput {
    /// `width` and `height` are the negotiated stream size (validated far below 65536 already).
    pub fn new(forward: Arc<InputForward>, width: u32, height: u32) -> StreamInput {
        StreamInput {
            forward,
            width: u16::try_from(width).unwrap_or(u16::MAX),
            height: u16::try_from(height).unwrap_or(u16::MAX),
        }
    }
}

impl InputForward {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes over the channel the broker handed (`BrokerMsg::InputChannel`), replacing and
    /// closing the previous one. A running stream is announced on it at once.
    pub fn replace_channel(&self, fd: OwnedFd) -> Result<(), ChannelError> {
        let channel = Channel::from_fd(fd)?;
        channel.set_nonblocking(true)?;
        let mut state = self.state();
        state.channel = Some(channel);
        if let Some(StreamSize { width, height }) = state.stream {
            if let Err(e) = send(&mut state, &NetToInput::StreamStarted { width, height }) {
                eprintln!("lumen-net: announcing the running stream to lumen-input: {e}");
            }
        }
        Ok(())
    }

    /// A stream started: lumen-input learns its size (now, and on every later channel).
    pub fn stream_started(&self, width: u16, height: u16) -> Result<(), Dropped> {
        let mut state = self.state();
        state.stream = Some(StreamSize { width, height });
        send(&mut state, &NetToInput::StreamStarted { width, height })
    }

    /// The stream ended: lumen-input releases whatever the client held.
    pub fn stream_ended(&self) -> Result<(), Dropped> {
        let mut state = self.state();
        state.stream = None;
        send(&mut state, &NetToInput::StreamEnded)
    }

    /// Sends `batch` (at most `MAX_EVENTS_PER_BATCH` events, already validated) as one message.
    /// `batch` is empty afterwards either way, its allocation kept for the next batch.
    pub fn send_events(&self, batch: &mut Vec<InputEvent>) -> Result<(), Dropped> {
        let msg = NetToInput::Events(std::mem::take(batch));
        let result = send(&mut self.state(), &msg);
        if let NetToInput::Events(mut events) = msg {
            events.clear();
            *batch = events;
        }
        result
    }

    /// One feedback message if one is waiting: `Ok(None)` when none is (or there is no channel).
    pub fn feedback(&self) -> Result<Option<InputToNet>, BadFeedback> {
        let mut state = self.state();
        let Some(channel) = state.channel.as_mut() else {
            return Ok(None);
        };
        match channel.try_recv::<InputToNet>() {
            Ok(None) => Ok(None),
            Ok(Some(received)) => {
                // The message carries no fds; any that came are closed with `received`.
                let pad = match received.msg {
                    InputToNet::Rumble { pad, .. } | InputToNet::TriggerRumble { pad, .. } => pad,
                };
                if pad >= MAX_GAMEPADS {
                    return Err(BadFeedback::Pad(pad));
                }
                Ok(Some(received.msg))
            }
            Err(ChannelError::Closed) => {
                state.channel = None;
                Err(BadFeedback::Closed)
            }
            Err(e) => Err(BadFeedback::Undecodable(e)),
        }
    }
}

/// Sends without blocking; a channel whose peer went away is dropped until the broker hands a
/// new one.
fn send(state: &mut State, msg: &NetToInput) -> Result<(), Dropped> {
    let Some(channel) = &state.channel else {
        return Err(Dropped::NoChannel);
    };
    match channel.send(msg, &[]) {
        Ok(()) => Ok(()),
        Err(ChannelError::Syscall {
            errno: Errno::AGAIN,
            ..
        }) => Err(Dropped::Full),
        Err(ChannelError::Closed) => {
            state.channel = None;
            Err(Dropped::Closed)
        }
        Err(e) => Err(Dropped::Failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::input::{MouseButton, MAX_EVENTS_PER_BATCH};
    use std::os::fd::AsFd;

    /// A forwarder on one end of a fresh pair; the other end plays lumen-input.
    fn connected() -> (InputForward, Channel) {
        let (ours, theirs) = Channel::pair().unwrap();
        let forward = InputForward::default();
        let fd = ours.as_fd().try_clone_to_owned().unwrap();
        drop(ours);
        forward.replace_channel(fd).unwrap();
        (forward, theirs)
    }

    fn next(input: &mut Channel) -> NetToInput {
        input
            .recv_timeout::<NetToInput>(std::time::Duration::from_secs(5))
            .unwrap()
            .msg
    }

    #[test]
    fn without_a_channel_everything_is_dropped() {
        let forward = InputForward::default();
        let mut batch = vec![InputEvent::EnableHaptics];
        assert!(matches!(
            forward.send_events(&mut batch),
            Err(Dropped::NoChannel)
        ));
        assert!(batch.is_empty());
        assert!(matches!(
            forward.stream_started(1280, 720),
            Err(Dropped::NoChannel)
        ));
        assert!(matches!(forward.feedback(), Ok(None)));
    }

    #[test]
    fn batches_arrive_in_order_and_the_batch_is_reused() {
        let (forward, mut input) = connected();
        forward.stream_started(1920, 1080).unwrap();
        let mut batch = vec![
            InputEvent::MouseMove { dx: 1, dy: 2 },
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
            },
        ];
        let capacity = batch.capacity();
        forward.send_events(&mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.capacity(), capacity);
        forward.stream_ended().unwrap();
        assert_eq!(
            next(&mut input),
            NetToInput::StreamStarted {
                width: 1920,
                height: 1080
            }
        );
        assert_eq!(
            next(&mut input),
            NetToInput::Events(vec![
                InputEvent::MouseMove { dx: 1, dy: 2 },
                InputEvent::MouseButton {
                    button: MouseButton::Left,
                    down: true
                },
            ])
        );
        assert_eq!(next(&mut input), NetToInput::StreamEnded);
    }

    #[test]
    fn a_full_channel_drops_instead_of_blocking() {
        let (forward, mut input) = connected();
        let full_batch = || vec![InputEvent::MouseMove { dx: -1, dy: 1 }; MAX_EVENTS_PER_BATCH];
        let mut sent = 0;
        let dropped = loop {
            let mut batch = full_batch();
            match forward.send_events(&mut batch) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the channel never filled");
        };
        assert!(matches!(dropped, Dropped::Full), "{dropped:?}");
        // What was sent before is intact, and draining makes room again.
        for _ in 0..sent {
            assert_eq!(next(&mut input), NetToInput::Events(full_batch()));
        }
        forward.send_events(&mut full_batch()).unwrap();
    }

    #[test]
    fn a_new_channel_replaces_the_old_and_hears_the_running_stream() {
        let (forward, mut old) = connected();
        forward.stream_started(1280, 800).unwrap();
        assert!(matches!(next(&mut old), NetToInput::StreamStarted { .. }));
        let (ours, mut new) = Channel::pair().unwrap();
        forward
            .replace_channel(ours.as_fd().try_clone_to_owned().unwrap())
            .unwrap();
        drop(ours);
        assert_eq!(
            next(&mut new),
            NetToInput::StreamStarted {
                width: 1280,
                height: 800
            }
        );
        // The old channel is closed on our side.
        assert!(matches!(
            old.recv::<NetToInput>(),
            Err(ChannelError::Closed)
        ));
        forward.stream_ended().unwrap();
        assert_eq!(next(&mut new), NetToInput::StreamEnded);
    }

    #[test]
    fn feedback_is_read_validated_and_a_closed_peer_drops_the_channel() {
        let (forward, input) = connected();
        assert!(matches!(forward.feedback(), Ok(None)));
        let rumble = InputToNet::Rumble {
            pad: 2,
            low_frequency: 0x8000,
            high_frequency: 0,
        };
        input.send(&rumble, &[]).unwrap();
        input
            .send(
                &InputToNet::TriggerRumble {
                    pad: MAX_GAMEPADS,
                    left: 1,
                    right: 1,
                },
                &[],
            )
            .unwrap();
        input.send(&NetToInput::StreamEnded, &[]).unwrap();
        assert_eq!(forward.feedback().unwrap(), Some(rumble));
        assert!(matches!(forward.feedback(), Err(BadFeedback::Pad(16))));
        assert!(matches!(
            forward.feedback(),
            Err(BadFeedback::Undecodable(_))
        ));
        drop(input);
        assert!(matches!(forward.feedback(), Err(BadFeedback::Closed)));
        // The dead channel is gone: input is dropped as "no channel" until a new one comes.
        assert!(matches!(
            forward.send_events(&mut vec![InputEvent::EnableHaptics]),
            Err(Dropped::NoChannel)
        ));
    }

    #[test]
    fn a_handed_fd_that_is_no_channel_is_refused() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let forward = InputForward::default();
        assert!(matches!(
            forward.replace_channel(socket.into()),
            Err(ChannelError::NotAChannel(_))
        ));
    }
}
