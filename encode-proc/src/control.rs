//! The consumer → encode control channel: IDR requests and bitrate changes, handed to the video
//! thread through atomics it reads before every frame.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::media::EncoderControl;

/// Bitrates a consumer may ask for (the range `SessionParams::validate` admits).
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 100..=500_000;

/// What the consumer asked for and the video thread has not applied yet.
#[derive(Debug, Default)]
pub struct Requests {
    idr: AtomicBool,
    /// 0: no change pending.
    bitrate_kbps: AtomicU32,
}

impl Requests {
    pub fn request_idr(&self) {
        self.idr.store(true, Ordering::Release);
    }

    pub fn set_bitrate(&self, kbps: u32) {
        self.bitrate_kbps.store(kbps, Ordering::Release);
    }

    /// Takes a pending IDR request.
    pub fn take_idr(&self) -> bool {
        self.idr.swap(false, Ordering::AcqRel)
    }

    /// Takes a pending bitrate change.
    pub fn take_bitrate(&self) -> Option<u32> {
        match self.bitrate_kbps.swap(0, Ordering::AcqRel) {
            0 => None,
            kbps => Some(kbps),
        }
    }
}

/// How reading the control channel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ControlEnd {
    /// `stop` was set.
    Stopped,
    /// The consumer closed its end; encoding goes on without control.
    Closed,
    /// The consumer broke the protocol; the session must end.
    Malformed(String),
}

/// Reads `channel` until `stop` is set, the peer closes, or it sends something malformed.
pub fn serve(mut channel: Channel, requests: &Requests, stop: &AtomicBool) -> ControlEnd {
    loop {
        if stop.load(Ordering::Acquire) {
            return ControlEnd::Stopped;
        }
        match channel.recv_timeout::<EncoderControl>(Duration::from_millis(100)) {
            Ok(received) if !received.fds.is_empty() => {
                return ControlEnd::Malformed(format!(
                    "{} fds with an encoder control message",
                    received.fds.len()
                ))
            }
            Ok(received) => match received.msg {
                EncoderControl::RequestIdr => requests.request_idr(),
                EncoderControl::SetBitrate { kbps } if BITRATE_RANGE.contains(&kbps) => {
                    requests.set_bitrate(kbps)
                }
                EncoderControl::SetBitrate { kbps } => {
                    return ControlEnd::Malformed(format!(
                        "bitrate {kbps} kbit/s is outside {}..={}",
                        BITRATE_RANGE.start(),
                        BITRATE_RANGE.end()
                    ))
                }
            },
            Err(ChannelError::Timeout(_)) => {}
            Err(ChannelError::Closed) => return ControlEnd::Closed,
            Err(e) => return ControlEnd::Malformed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reach_the_video_thread_and_garbage_ends_the_session() {
        let (ours, theirs) = Channel::pair().unwrap();
        let requests = Requests::default();
        let stop = AtomicBool::new(false);
        theirs.send(&EncoderControl::RequestIdr, &[]).unwrap();
        theirs
            .send(&EncoderControl::SetBitrate { kbps: 2000 }, &[])
            .unwrap();
        theirs
            .send(&EncoderControl::SetBitrate { kbps: 1 }, &[])
            .unwrap();
        let end = serve(ours, &requests, &stop);
        assert!(matches!(end, ControlEnd::Malformed(_)), "{end:?}");
        assert!(requests.take_idr());
        assert!(!requests.take_idr());
        assert_eq!(requests.take_bitrate(), Some(2000));
        assert_eq!(requests.take_bitrate(), None);

        // A message of another type does not decode: malformed, not a panic.
        let (ours, theirs) = Channel::pair().unwrap();
        theirs
            .send(&lumen_ipc::media::EncodeToCapture::Release { slot: 3 }, &[])
            .unwrap();
        assert!(matches!(
            serve(ours, &requests, &stop),
            ControlEnd::Malformed(_)
        ));

        let (ours, theirs) = Channel::pair().unwrap();
        drop(theirs);
        assert_eq!(serve(ours, &requests, &stop), ControlEnd::Closed);
    }
}
