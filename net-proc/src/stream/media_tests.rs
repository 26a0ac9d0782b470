//! The senders on real fds: rings and a control channel as the broker makes them, the broker's
//! UDP sockets on loopback, and a fake client that pings and reads the datagrams back.

use std::net::UdpSocket;
use std::time::Instant;

use lumen_core::fec::FecConfig;
use lumen_ipc::ring::{
    create_ring, monotonic_ns, Producer, PushOutcome, RecordMeta, FLAG_DISCONTINUITY,
    FLAG_END_OF_FRAME, FLAG_KEYFRAME, TS_CAPTURED,
};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use lumen_core::audio_packetizer::AudioEncryption;
use lumen_core::video_packetizer::VideoEncryption;

use super::super::video::rtp_90khz;
use super::*;

const PAYLOAD: [u8; 16] = *b"0123456789ABCDEF";
const PACKET_SIZE: usize = 1024;
const WAIT: Duration = Duration::from_secs(5);

fn video_config() -> VideoStreamConfig {
    VideoStreamConfig {
        packet_size: PACKET_SIZE,
        fec: FecConfig {
            percent: 20,
            min_parity: 2,
            max_blocks: 4,
        },
        encryption: None,
    }
}

struct Rig {
    streams: MediaStreams,
    video: SocketAddr,
    audio: SocketAddr,
}

fn start() -> Rig {
    start_with(video_config(), None, 60)
}

fn start_with(
    video_config: VideoStreamConfig,
    audio_key: Option<AudioEncryption>,
    fps: u32,
) -> Rig {
    let video = UdpSocket::bind("127.0.0.1:0").unwrap();
    let audio = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (video_addr, audio_addr) = (video.local_addr().unwrap(), audio.local_addr().unwrap());
    let streams = MediaStreams::start(MediaConfig {
        video_socket: video.into(),
        audio_socket: audio.into(),
        ping_payload: PAYLOAD,
        video: video_config,
        audio: AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: audio_key,
        },
        fps,
    })
    .unwrap();
    Rig {
        streams,
        video: video_addr,
        audio: audio_addr,
    }
}

/// The encoder's side of one ring generation.
struct Encoder {
    video: Producer,
    audio: Producer,
    control: Channel,
    video_memfd: OwnedFd,
    video_bell: OwnedFd,
}

fn rings(generation: u64) -> (Encoder, Vec<OwnedFd>) {
    let v = create_ring("video", 1 << 20, generation).unwrap();
    let a = create_ring("audio", 1 << 16, generation).unwrap();
    let video = Producer::attach(
        v.memfd.try_clone().unwrap(),
        v.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    let audio = Producer::attach(
        a.memfd.try_clone().unwrap(),
        a.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    let (ours, theirs) = Channel::pair().unwrap();
    let encoder = Encoder {
        video,
        audio,
        control: theirs,
        video_memfd: v.memfd.try_clone().unwrap(),
        video_bell: v.doorbell.try_clone().unwrap(),
    };
    let fds = vec![
        v.memfd,
        v.doorbell,
        a.memfd,
        a.doorbell,
        OwnedFd::from(ours),
    ];
    (encoder, fds)
}

impl Encoder {
    fn push_video(&mut self, au: &[u8], flags: u32, captured: u64) {
        let mut timestamps = [0; 4];
        timestamps[TS_CAPTURED] = captured;
        let meta = RecordMeta {
            seq: 0,
            flags: flags | FLAG_END_OF_FRAME,
            timestamps,
        };
        assert!(matches!(
            self.video.push(&meta, au).unwrap(),
            PushOutcome::Written { .. }
        ));
    }

    fn push_audio(&mut self, opus: &[u8]) {
        assert!(matches!(
            self.audio.push(&RecordMeta::default(), opus).unwrap(),
            PushOutcome::Written { .. }
        ));
    }

    fn expect_idr(&mut self) {
        let got = self
            .control
            .recv_timeout::<EncoderControl>(WAIT)
            .expect("an IDR request");
        assert_eq!(got.msg, EncoderControl::RequestIdr);
    }

    fn no_message(&mut self) {
        assert!(self.control.try_recv::<EncoderControl>().unwrap().is_none());
    }
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    // Room for a whole multi-block frame should the reader fall behind (capped by rmem_max).
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 4 << 20);
    socket
}

fn ping(client: &UdpSocket, to: SocketAddr, counter: u32) {
    let mut datagram = [0u8; 20];
    datagram[..16].copy_from_slice(&PAYLOAD);
    datagram[16..].copy_from_slice(&counter.to_be_bytes());
    client.send_to(&datagram, to).unwrap();
}

fn wait_for(
    streams: &MediaStreams,
    what: &str,
    cond: impl Fn(&StreamStats) -> bool,
) -> StreamStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = streams.stats();
        if cond(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One frame as the client reassembles it (no loss: data shards in order).
#[derive(Debug)]
struct Frame {
    index: u32,
    timestamp: u32,
    frame_type: u8,
    /// Header and access unit and zero padding.
    payload: Vec<u8>,
    seqs: Vec<u16>,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Where a frame ends, from one plaintext datagram's headers: (seq, timestamp, frameIndex,
/// data shard?, last datagram of the frame?).
fn shard_info(d: &[u8]) -> (u16, u32, u32, bool, bool) {
    assert_eq!(d.len(), PACKET_SIZE + 16, "every datagram is full size");
    assert_eq!(d[0], 0x90);
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let timestamp = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    let index = le32(&d[20..]);
    let blocks = d[27];
    let (block, last) = ((blocks >> 4) & 3, blocks >> 6);
    let fec = le32(&d[28..]);
    let data_shards = fec >> 22;
    let shard = (fec >> 12) & 0x3ff;
    let pct = (fec >> 4) & 0xff;
    let parity = (data_shards * pct).div_ceil(100);
    let end = block == last && shard + 1 == data_shards + parity;
    (seq, timestamp, index, shard < data_shards, end)
}

/// Reads datagrams until the last shard of the last block of a frame.
fn recv_frame(client: &UdpSocket) -> Frame {
    recv_frame_with(client, None)
}

/// [`recv_frame`] for a stream encrypted with `key` (§6.6): checks the prefix and opens each
/// datagram; `iv` is the IV counter the next datagram must carry.
fn recv_frame_with(client: &UdpSocket, mut key: Option<(&LessSafeKey, &mut u64)>) -> Frame {
    let mut buf = vec![0u8; 65536];
    let mut frame: Option<Frame> = None;
    loop {
        let n = client.recv(&mut buf).expect("a video datagram");
        let d: &[u8] = match key.as_mut() {
            None => &buf[..n],
            Some((key, iv)) => {
                assert_eq!(n, PACKET_SIZE + 16 + 32);
                let (prefix, sealed) = buf[..n].split_at_mut(32);
                assert_eq!(u64::from_le_bytes(prefix[..8].try_into().unwrap()), **iv);
                assert_eq!(&prefix[8..12], b"\0\0\0V");
                **iv += 1;
                let nonce = Nonce::try_assume_unique_for_key(&prefix[..12]).unwrap();
                let clear_index = le32(&prefix[12..]);
                let plain = key
                    .open_in_place_separate_tag(nonce, Aad::empty(), &prefix[16..32], sealed)
                    .expect("the datagram opens with rikey");
                assert_eq!(le32(&plain[20..]), clear_index, "frameIndex in clear");
                plain
            }
        };
        let (seq, timestamp, index, data, end) = shard_info(d);
        let f = frame.get_or_insert_with(|| Frame {
            index,
            timestamp,
            frame_type: 0,
            payload: Vec::new(),
            seqs: Vec::new(),
        });
        assert_eq!(
            f.index, index,
            "a datagram of another frame before this one ended"
        );
        assert_eq!(f.timestamp, timestamp);
        f.seqs.push(seq);
        if data {
            f.payload.extend_from_slice(&d[32..]);
        }
        if end {
            f.frame_type = f.payload[3];
            return frame.unwrap();
        }
    }
}

/// Checks the reassembled payload is the frame header, `au` and zero padding.
fn assert_carries(frame: &Frame, au: &[u8]) {
    assert_eq!(frame.payload[0], 0x01);
    assert_eq!(&frame.payload[8..8 + au.len()], au, "frame {}", frame.index);
    assert!(frame.payload[8 + au.len()..].iter().all(|&b| b == 0));
}

fn au(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn assert_seqs_continue(frames: &[Frame], mut next: u16) {
    for f in frames {
        for &s in &f.seqs {
            assert_eq!(s, next, "RTP seq continuity in frame {}", f.index);
            next = next.wrapping_add(1);
        }
    }
}

#[test]
fn video_waits_for_ping_and_keyframe_then_sends_frames_in_order() {
    // 10 fps: the two-block frame is spread over 80 ms, so a client socket with the default
    // receive buffer (where rmem_max caps the request) keeps up even on a loaded machine.
    let rig = start_with(video_config(), None, 10);
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    // Before the client pings, frames go nowhere.
    enc.push_video(&au(500, 1), FLAG_KEYFRAME, 1);
    wait_for(&rig.streams, "the frame before the ping", |s| {
        s.video_frames_skipped == 1
    });

    let client = client();
    ping(&client, rig.video, 1);
    let stats = wait_for(&rig.streams, "the ping", |s| s.video_client.is_some());
    assert_eq!(stats.video_client, Some(client.local_addr().unwrap()));
    // The first client asks for an IDR; a P-frame before it is not sent.
    enc.expect_idr();
    enc.push_video(&au(700, 2), 0, 2);
    wait_for(&rig.streams, "the P-frame before the IDR", |s| {
        s.video_frames_skipped == 2
    });

    let base = monotonic_ns();
    let aus = [
        (au(30_000, 3), FLAG_KEYFRAME),
        (au(1, 4), 0),
        // Two FEC blocks (more than 212 data shards at 20 %).
        (au(250_000, 5), 0),
        (au(4_000, 6), 0),
    ];
    for (i, (bytes, flags)) in aus.iter().enumerate() {
        enc.push_video(bytes, *flags, base + i as u64 * 16_666_667);
    }
    let frames: Vec<Frame> = (0..aus.len()).map(|_| recv_frame(&client)).collect();
    for (i, (frame, (bytes, flags))) in frames.iter().zip(&aus).enumerate() {
        assert_eq!(frame.index, i as u32 + 1, "frameIndex counts from 1");
        assert_eq!(frame.frame_type, if *flags != 0 { 2 } else { 1 });
        assert_eq!(frame.timestamp, rtp_90khz(base + i as u64 * 16_666_667));
        assert_carries(frame, bytes);
    }
    assert_seqs_continue(&frames, 0);
    // The counters follow the last send.
    let stats = wait_for(&rig.streams, "the counters", |s| s.video_frames == 4);
    assert_eq!(
        stats.video_datagrams,
        frames.iter().map(|f| f.seqs.len() as u64).sum::<u64>()
    );
    assert_eq!(
        stats.video_bytes,
        stats.video_datagrams * (PACKET_SIZE as u64 + 16)
    );
    assert_eq!(stats.generation, Some(1));
    assert_eq!(stats.ring_errors, 0);

    let t = Instant::now();
    rig.streams.stop();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_discontinuity_waits_for_the_next_keyframe_and_new_rings_replace_old_ones() {
    let rig = start();
    let client = client();
    ping(&client, rig.video, 1);
    wait_for(&rig.streams, "the ping", |s| s.video_client.is_some());
    // No rings yet: nothing to ask, and not an error.
    rig.streams.request_idr().unwrap();

    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    enc.push_video(&au(100, 1), FLAG_KEYFRAME, 10);
    let first = recv_frame(&client);
    assert_eq!((first.index, first.frame_type), (1, 2));

    // A record marked as following dropped records: skipped, and an IDR asked for at once.
    enc.push_video(&au(100, 2), FLAG_DISCONTINUITY, 20);
    enc.expect_idr();
    wait_for(&rig.streams, "the skipped frame", |s| {
        s.video_discontinuities == 1 && s.video_frames_skipped == 1
    });
    enc.push_video(&au(100, 3), FLAG_KEYFRAME, 30);
    let second = recv_frame(&client);
    assert_eq!((second.index, second.frame_type), (2, 2));
    assert_carries(&second, &au(100, 3));

    // Requests on demand go to the current encoder.
    rig.streams.request_idr().unwrap();
    enc.expect_idr();

    // A second generation: the old rings are dropped, the new control channel gets the IDR
    // request, and the stream goes on where it was.
    let (mut enc2, fds) = rings(2);
    rig.streams.attach_rings(2, fds).unwrap();
    enc2.expect_idr();
    wait_for(&rig.streams, "generation 2", |s| s.generation == Some(2));
    enc2.push_video(&au(2_000, 5), FLAG_KEYFRAME, 50);
    let third = recv_frame(&client);
    assert_eq!((third.index, third.frame_type), (3, 2));
    assert_carries(&third, &au(2_000, 5));
    assert_seqs_continue(&[first, second, third], 0);
    // The thread reads the new ring, so the old one is gone: what the old encoder still writes
    // goes nowhere.
    enc.push_video(&au(100, 4), FLAG_KEYFRAME, 40);
    enc2.push_video(&au(300, 6), 0, 60);
    let fourth = recv_frame(&client);
    assert_eq!((fourth.index, fourth.frame_type), (4, 1));
    assert_carries(&fourth, &au(300, 6));

    // Older or equal generations, a wrong fd count or wrong fd kinds are refused.
    let (_enc3, fds) = rings(2);
    assert!(matches!(
        rig.streams.attach_rings(2, fds),
        Err(StreamError::StaleGeneration {
            generation: 2,
            current: 2
        })
    ));
    let (_enc4, mut fds) = rings(3);
    fds.pop();
    assert!(matches!(
        rig.streams.attach_rings(3, fds),
        Err(StreamError::FdCount(4))
    ));
    let (_enc5, mut fds) = rings(3);
    fds.swap(0, 1);
    assert!(matches!(
        rig.streams.attach_rings(3, fds),
        Err(StreamError::Ring { which: "video", .. })
    ));
    let (_enc6, mut fds) = rings(3);
    fds.swap(3, 4);
    assert!(rig.streams.attach_rings(3, fds).is_err());
    let stats = wait_for(&rig.streams, "the counters", |s| s.video_frames == 4);
    assert_eq!(stats.generation, Some(2));
    enc2.no_message();
    rig.streams.stop();
}

#[test]
fn a_corrupt_ring_is_dropped_and_counted_and_new_rings_work() {
    let rig = start();
    let client = client();
    ping(&client, rig.video, 1);
    wait_for(&rig.streams, "the ping", |s| s.video_client.is_some());
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    enc.push_video(&au(100, 1), FLAG_KEYFRAME, 1);
    assert_eq!(recv_frame(&client).index, 1);

    // A hostile producer: the write index (header offset 64) far past the capacity.
    rustix::io::pwrite(&enc.video_memfd, &(1u64 << 40).to_le_bytes(), 64).unwrap();
    rustix::io::write(&enc.video_bell, &1u64.to_ne_bytes()).unwrap();
    let stats = wait_for(&rig.streams, "the ring error", |s| s.ring_errors == 1);
    assert_eq!(stats.video_frames, 1);

    let (mut enc2, fds) = rings(2);
    rig.streams.attach_rings(2, fds).unwrap();
    enc2.expect_idr();
    enc2.push_video(&au(5_000, 2), FLAG_KEYFRAME, 2);
    let frame = recv_frame(&client);
    assert_eq!(frame.index, 2);
    assert_carries(&frame, &au(5_000, 2));
    rig.streams.stop();
}

fn recv_audio(client: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let n = client.recv(&mut buf).expect("an audio datagram");
    buf[..n].to_vec()
}

#[test]
fn audio_goes_to_the_pinging_client_with_fec_and_follows_a_roaming_client() {
    let rig = start();
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    enc.push_audio(&[7; 60]);
    wait_for(&rig.streams, "the packet before the ping", |s| {
        s.audio_packets_skipped == 1
    });

    let first = client();
    ping(&first, rig.audio, 1);
    wait_for(&rig.streams, "the audio ping", |s| s.audio_client.is_some());
    let packets: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 60]).collect();
    for p in &packets {
        enc.push_audio(p);
    }
    for block in 0..2u16 {
        for i in 0..4u16 {
            let seq = block * 4 + i;
            let d = recv_audio(&first);
            assert_eq!(&d[..2], &[0x80, 0x61]);
            assert_eq!(u16::from_be_bytes([d[2], d[3]]), seq);
            assert_eq!(
                u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                u32::from(seq) * 5
            );
            assert_eq!(&d[12..], &packets[usize::from(seq)][..]);
        }
        for j in 0..2u8 {
            let d = recv_audio(&first);
            assert_eq!(&d[..2], &[0x80, 0x7f]);
            assert_eq!(d[12], j);
            assert_eq!(u16::from_be_bytes([d[14], d[15]]), block * 4);
            assert_eq!(d.len(), 24 + 60);
        }
    }
    // The counters follow the last send.
    wait_for(&rig.streams, "the counters", |s| {
        (s.audio_packets, s.audio_datagrams) == (8, 12)
    });

    // The client moves (a new port, counter still going up): audio follows.
    let second = client();
    ping(&second, rig.audio, 2);
    wait_for(&rig.streams, "the move", |s| {
        s.audio_client == Some(second.local_addr().unwrap())
    });
    // A replayed older ping from elsewhere does not take the stream away.
    ping(&first, rig.audio, 1);
    wait_for(&rig.streams, "the replayed ping", |s| s.audio_pings == 3);
    enc.push_audio(&[9; 60]);
    let d = recv_audio(&second);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 8);
    assert_eq!(&d[12..], &[9; 60]);
    assert_eq!(
        rig.streams.stats().audio_client,
        Some(second.local_addr().unwrap())
    );
    // Video is unaffected by audio pings.
    assert_eq!(rig.streams.stats().video_client, None);
    rig.streams.stop();
}

#[test]
fn pings_are_matched_by_payload_and_length() {
    let p = &PAYLOAD;
    let mut ok = [0u8; 20];
    ok[..16].copy_from_slice(p);
    ok[16..].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(parse_ping(&ok, 20, p), Some(Ping::Payload(7)));
    // The full length counts, not what fit the buffer.
    assert_eq!(parse_ping(&ok, 21, p), None);
    assert_eq!(parse_ping(&ok[..19], 19, p), None);
    let mut other = ok;
    other[0] ^= 1;
    assert_eq!(parse_ping(&other, 20, p), None);
    assert_eq!(parse_ping(b"PING", 4, p), Some(Ping::Legacy));
    assert_eq!(parse_ping(b"PONG", 4, p), None);

    let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:6000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
    let payload_ping = |n: u32| {
        let mut d = ok;
        d[16..].copy_from_slice(&n.to_be_bytes());
        d
    };
    // Legacy pings count until a payload ping has been seen.
    let mut t = ClientTracker::new(PAYLOAD);
    assert_eq!(t.offer(b"PING", 4, b), (true, Some(b)));
    assert_eq!(t.offer(&payload_ping(3), 20, mapped), (true, Some(a)));
    // After a payload ping, a bare "PING" from another address (another source port) is no
    // ping of this session; from the client's own address it still is.
    assert_eq!(t.offer(b"PING", 4, b), (false, None));
    assert_eq!(t.offer(b"PING", 4, a), (true, None));
    assert_eq!(t.offer(&payload_ping(3), 20, b), (true, None));
    assert_eq!(t.offer(&payload_ping(4), 20, b), (true, Some(b)));
    assert_eq!(t.offer(&payload_ping(4), 20, b), (true, None));
    assert_eq!(t.offer(b"junk", 4, a), (false, None));
}

#[test]
fn start_refuses_what_is_not_a_udp_socket_and_zero_fps() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = |video: OwnedFd, fps| MediaConfig {
        video_socket: video,
        audio_socket: udp.try_clone().unwrap().into(),
        ping_payload: PAYLOAD,
        video: video_config(),
        audio: AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: None,
        },
        fps,
    };
    assert!(matches!(
        MediaStreams::start(config(tcp.into(), 60)),
        Err(StreamError::Socket { which: "video", .. })
    ));
    assert!(matches!(
        MediaStreams::start(config(udp.try_clone().unwrap().into(), 0)),
        Err(StreamError::Fps)
    ));
    let mut bad = config(udp.try_clone().unwrap().into(), 60);
    bad.video.packet_size = 8;
    assert!(matches!(
        MediaStreams::start(bad),
        Err(StreamError::Video(_))
    ));
    let t = Instant::now();
    MediaStreams::start(config(udp.try_clone().unwrap().into(), 60))
        .unwrap()
        .stop();
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn rtp_timestamps_are_90khz() {
    assert_eq!(rtp_90khz(0), 0);
    assert_eq!(rtp_90khz(1_000_000_000), 90_000);
    assert_eq!(rtp_90khz(11_111), 0);
    assert_eq!(rtp_90khz(11_112), 1);
    // Wraps like an RTP timestamp, never overflows.
    assert_eq!(
        rtp_90khz(u64::MAX),
        (u128::from(u64::MAX) * 90_000 / 1_000_000_000) as u32
    );
}

const SECCOMP_CHILD: &str = "LUMEN_MEDIA_SECCOMP_CHILD";
const SECCOMP_DONE: &str = "media senders ran under the net filter";

/// Installs the net worker's real seccomp filters on this thread (and the threads it starts).
fn lock_down_like_net() {
    use lumen_ipc::sandbox::seccomp::{allowlist_program, companion_programs};
    let policy = crate::seccomp::policy();
    // SAFETY: getpid takes no arguments.
    let pid = unsafe { libc::getpid() } as u64;
    let allowlist = allowlist_program(&policy, pid).unwrap();
    let companions = companion_programs(&policy).unwrap();
    // SAFETY: prctl/seccomp on valid pointers to programs that outlive the calls.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        for program in companions.iter().chain(std::iter::once(&allowlist)) {
            let prog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            let rc = libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog);
            assert_eq!(rc, 0, "seccomp filter refused");
        }
    }
}

/// Everything the senders do after lock-down (start, attach, pings, video and audio, stop)
/// passes the net worker's filter. Runs in a child process of this test binary: a filter cannot
/// be taken off again, and a violation kills the whole process.
#[test]
fn the_senders_run_under_the_net_workers_seccomp_filter() {
    const NAME: &str = "stream::media::tests::the_senders_run_under_the_net_workers_seccomp_filter";
    if std::env::var_os(SECCOMP_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(SECCOMP_CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child under the filter failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(SECCOMP_DONE));
        return;
    }
    // What the broker and the client would have made: sockets, rings, a ping waiting.
    let video = UdpSocket::bind("127.0.0.1:0").unwrap();
    let audio = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = client();
    ping(&client, video.local_addr().unwrap(), 1);
    ping(&client, audio.local_addr().unwrap(), 1);
    let (mut enc, fds) = rings(1);
    let config = MediaConfig {
        video_socket: video.into(),
        audio_socket: audio.into(),
        ping_payload: PAYLOAD,
        video: video_config(),
        audio: AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: None,
        },
        fps: 60,
    };
    lock_down_like_net();

    let streams = MediaStreams::start(config).unwrap();
    streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    wait_for(&streams, "both pings", |s| {
        s.video_client.is_some() && s.audio_client.is_some()
    });
    enc.push_video(&au(20_000, 1), FLAG_KEYFRAME, 1);
    enc.push_video(&au(3_000, 2), 0, 2);
    let frames = [recv_frame(&client), recv_frame(&client)];
    assert_eq!((frames[0].index, frames[1].index), (1, 2));
    for _ in 0..4 {
        enc.push_audio(&[5; 40]);
    }
    let mut buf = [0u8; 2048];
    for _ in 0..6 {
        client.recv(&mut buf).unwrap();
    }
    streams.request_idr().unwrap();
    enc.expect_idr();
    streams.stop();
    // Ends here, before this thread frees the test's buffers: glibc's first shrink of a thread
    // arena reads /proc/sys/vm/overcommit_memory (openat), which the net filter does not allow
    // (a worker-wide matter, reported; the senders themselves never got there).
    use std::io::Write;
    println!("{SECCOMP_DONE}");
    let _ = std::io::stdout().flush();
    // SAFETY: ends the child process at once, without destructors; nothing is left to flush.
    unsafe { libc::_exit(0) };
}

#[test]
fn encrypted_video_and_audio_open_with_the_session_key() {
    const KEY: [u8; 16] = *b"rikey rikey rike";
    const RIKEYID: u32 = 0xffff_fffe;
    let mut config = video_config();
    config.encryption = Some(VideoEncryption {
        key: KEY,
        first_iv_counter: 0,
    });
    // ANNOUNCE's packetSize is already 32 smaller with encryption; the datagram size stays.
    let rig = start_with(
        config,
        Some(AudioEncryption {
            key: KEY,
            rikeyid: RIKEYID,
        }),
        60,
    );
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    let client = client();
    ping(&client, rig.video, 1);
    ping(&client, rig.audio, 1);
    wait_for(&rig.streams, "both pings", |s| {
        s.video_client.is_some() && s.audio_client.is_some()
    });
    enc.expect_idr();

    let gcm = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &KEY).unwrap());
    let mut iv = 0u64;
    let aus = [(au(40_000, 1), FLAG_KEYFRAME), (au(900, 2), 0)];
    for (i, (bytes, flags)) in aus.iter().enumerate() {
        enc.push_video(bytes, *flags, 1_000 + i as u64);
    }
    let frames: Vec<Frame> = aus
        .iter()
        .map(|_| recv_frame_with(&client, Some((&gcm, &mut iv))))
        .collect();
    for (i, (frame, (bytes, _))) in frames.iter().zip(&aus).enumerate() {
        assert_eq!(frame.index, i as u32 + 1);
        assert_carries(frame, bytes);
    }
    assert_seqs_continue(&frames, 0);

    // Audio: AES-128-CBC with IV = BE32(rikeyid + seq), 12 zero bytes (§7.3).
    use aws_lc_rs::cipher::{
        DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_128,
    };
    let opus: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 57]).collect();
    for p in &opus {
        enc.push_audio(p);
    }
    for (seq, packet) in opus.iter().enumerate() {
        let mut d = recv_audio(&client);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), seq as u16);
        assert_eq!(d.len(), 12 + 64, "57 bytes pad to 64");
        let mut iv = [0u8; 16];
        iv[..4].copy_from_slice(&RIKEYID.wrapping_add(seq as u32).to_be_bytes());
        let key =
            PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_128, &KEY).unwrap())
                .unwrap();
        let plain = key
            .decrypt(&mut d[12..], DecryptionContext::Iv128(iv.into()))
            .expect("the packet opens with rikey");
        assert_eq!(plain, &packet[..]);
    }
    // The FEC datagrams protect the ciphertext, so they are as long as it.
    for _ in 0..2 {
        assert_eq!(recv_audio(&client).len(), 24 + 64);
    }
    rig.streams.stop();
}

/// Counts every allocation in this test binary (only the allocation test reads it).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

const ALLOC_CHILD: &str = "LUMEN_MEDIA_ALLOC_CHILD";

/// Reads one frame's datagrams into `buf` without allocating; returns its frameIndex.
fn skip_frame(client: &UdpSocket, buf: &mut [u8]) -> u32 {
    loop {
        let n = client.recv(buf).expect("a video datagram");
        let (_, _, index, _, end) = shard_info(&buf[..n]);
        if end {
            return index;
        }
    }
}

/// Once warm (largest frame seen), the senders allocate nothing per frame or packet: reading the
/// ring, packetizing, pacing and sending video, packetizing and sending audio. Runs alone in a
/// child process so that no other test's allocations are counted.
#[test]
fn no_allocation_per_frame_once_warm() {
    const NAME: &str = "stream::media::tests::no_allocation_per_frame_once_warm";
    if std::env::var_os(ALLOC_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(ALLOC_CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let rig = start();
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    let client = client();
    let audio_client = self::client();
    ping(&client, rig.video, 1);
    ping(&audio_client, rig.audio, 1);
    wait_for(&rig.streams, "both pings", |s| {
        s.video_client.is_some() && s.audio_client.is_some()
    });
    enc.expect_idr();
    // At most ~120 datagrams a frame: a whole frame fits a default socket receive buffer.
    let big = au(120_000, 1);
    let opus = [3u8; 100];
    let mut buf = vec![0u8; 65536];
    let sizes = [120_000, 1, 5_000, 60_000];
    // Warm-up: the largest frame first, each frame shape once (the FEC encoders of each block
    // shape are built on first use), some audio.
    for (i, &len) in sizes.iter().enumerate() {
        let flags = if i == 0 { FLAG_KEYFRAME } else { 0 };
        enc.push_video(&big[..len], flags, i as u64);
        assert_eq!(skip_frame(&client, &mut buf), i as u32 + 1);
    }
    for _ in 0..8 {
        enc.push_audio(&opus);
    }
    wait_for(&rig.streams, "warm-up", |s| {
        s.audio_packets == 8 && s.video_frames == 4
    });

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for i in 4..44u32 {
        let len = sizes[i as usize % 4];
        enc.push_video(&big[..len], 0, u64::from(i));
        enc.push_audio(&opus);
        assert_eq!(skip_frame(&client, &mut buf), i + 1);
    }
    // Audio datagrams are not read: the kernel drops what does not fit the socket.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = rig.streams.stats();
        if s.video_frames == 44 && s.audio_packets == 48 {
            break;
        }
        assert!(Instant::now() < deadline, "senders stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(allocations, 0, "allocations while streaming 40 frames");
    rig.streams.stop();
}

#[test]
fn new_rings_cut_the_old_rings_backlog_short() {
    let rig = start_with(video_config(), None, 1);
    let (mut enc, fds) = rings(1);
    rig.streams.attach_rings(1, fds).unwrap();
    enc.expect_idr();
    let client = client();
    ping(&client, rig.video, 1);
    wait_for(&rig.streams, "the ping", |s| s.video_client.is_some());
    enc.push_video(&au(100, 1), FLAG_KEYFRAME, 1);
    assert_eq!(recv_frame(&client).index, 1);

    // A frame of two send batches: paced over 800 ms, its second batch leaves 400 ms after the
    // first, while the frames behind it wait in the old ring.
    let long = au(70_000, 2);
    enc.push_video(&long, 0, 2);
    let mut buf = vec![0u8; 65536];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(shard_info(&buf[..n]).2, 2, "the first datagram of frame 2");
    enc.push_video(&au(200, 3), 0, 3);
    enc.push_video(&au(200, 4), 0, 4);
    let (mut enc2, fds) = rings(2);
    rig.streams.attach_rings(2, fds).unwrap();
    enc2.expect_idr();
    enc2.push_video(&au(300, 5), FLAG_KEYFRAME, 5);
    assert_eq!(skip_frame(&client, &mut buf), 2, "the rest of frame 2");
    // The two frames behind it in the old ring are never sent.
    let next = recv_frame(&client);
    assert_eq!((next.index, next.frame_type), (3, 2));
    assert_carries(&next, &au(300, 5));
    rig.streams.stop();
}

#[test]
fn a_config_prints_without_its_keys() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut video = video_config();
    video.encryption = Some(VideoEncryption {
        key: [0xab; 16],
        first_iv_counter: 0,
    });
    let config = MediaConfig {
        video_socket: udp.try_clone().unwrap().into(),
        audio_socket: udp.into(),
        ping_payload: PAYLOAD,
        video,
        audio: AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: Some(AudioEncryption {
                key: [0xab; 16],
                rikeyid: 1,
            }),
        },
        fps: 60,
    };
    let printed = format!("{config:?}");
    assert!(printed.contains("video_encrypted: true"), "{printed}");
    assert!(
        !printed.contains("171") && !printed.contains("ab, ab"),
        "{printed}"
    );
}
