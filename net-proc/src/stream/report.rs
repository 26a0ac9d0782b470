//! The stream's statistics as the broker gets them (`WorkerMsg::NetStats`): what the control
//! stream and the senders counted, about once a second while the stream runs and once when it ends.

use std::time::Duration;

use lumen_ipc::net_msg::{HttpCounters, NetCounters, NetStats};

use super::media::StreamStats;
use crate::control::ControlStats;
use crate::rtsp_server::RtspTally;

/// How often a running stream reports.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// One report of stream `stream` (`active: false` for its last).
pub(super) fn net_stats(
    stream: u64,
    active: bool,
    control: &ControlStats,
    media: &StreamStats,
    rtsp: &RtspTally,
    http: HttpCounters,
) -> NetStats {
    NetStats {
        stream,
        active,
        counters: counters(control, media),
        rtsp: rtsp.counters(),
        http,
    }
}

fn counters(control: &ControlStats, media: &StreamStats) -> NetCounters {
    NetCounters {
        idr_requests: control.idr_requests,
        rfi_requests: control.rfi_requests,
        pings: control.pings,
        loss_reports: control.loss_stats,
        input_packets: control.input,
        rejected_control: control.rejected,
        refused_control_peers: control.refused_peers,
        control_foreign_datagrams: control.foreign_datagrams,
        input_invalid: control.input_invalid,
        input_dropped: control.input_dropped,
        fec_reports: control.fec_status,
        fec_recovered_frames: control.fec_recovered,
        fec_repaired_shards: control.fec_repaired_shards,
        frames_lost: control.fec_lost,
        frames_sent: media.video_frames,
        video_datagrams: media.video_datagrams,
        video_bytes: media.video_bytes,
        frames_skipped: media.video_frames_skipped,
        video_ring_drops: media.video_ring_drops,
        video_discontinuities: media.video_discontinuities,
        packetize_errors: media.video_packetize_errors,
        audio_packets: media.audio_packets,
        audio_datagrams: media.audio_datagrams,
        audio_bytes: media.audio_bytes,
        audio_packets_skipped: media.audio_packets_skipped,
        audio_ring_drops: media.audio_ring_drops,
        ring_errors: media.ring_errors,
        send_errors: media.send_errors,
        encoder_idr_requests: media.idr_requests,
        encoder_idr_errors: media.idr_request_errors,
        video_pings: media.video_pings,
        audio_pings: media.audio_pings,
        video_foreign_datagrams: media.video_foreign_datagrams,
        audio_foreign_datagrams: media.audio_foreign_datagrams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_lands_in_its_field() {
        let control = ControlStats {
            idr_requests: 1,
            rfi_requests: 2,
            pings: 3,
            loss_stats: 4,
            fec_status: 5,
            fec_recovered: 6,
            fec_repaired_shards: 7,
            fec_lost: 8,
            input: 9,
            rejected: 10,
            refused_peers: 11,
            foreign_datagrams: 31,
            input_invalid: 32,
            input_dropped: 33,
            // Counters the report does not carry (yet).
            ..ControlStats::default()
        };
        let media = StreamStats {
            video_frames: 12,
            video_datagrams: 13,
            video_bytes: 14,
            video_frames_skipped: 15,
            video_ring_drops: 16,
            video_discontinuities: 17,
            video_packetize_errors: 18,
            audio_packets: 19,
            audio_datagrams: 20,
            audio_bytes: 21,
            audio_packets_skipped: 22,
            audio_ring_drops: 23,
            ring_errors: 24,
            send_errors: 25,
            idr_requests: 26,
            idr_request_errors: 27,
            video_pings: 28,
            audio_pings: 29,
            video_foreign_datagrams: 30,
            audio_foreign_datagrams: 34,
            ..StreamStats::default()
        };
        let rtsp = RtspTally::default();
        rtsp.answered(false);
        rtsp.answered(true);
        rtsp.dropped();
        let http = HttpCounters {
            requests: 35,
            ..HttpCounters::default()
        };
        let stats = net_stats(4, false, &control, &media, &rtsp, http);
        assert_eq!(stats.http, http);
        assert_eq!((stats.stream, stats.active), (4, false));
        let c = stats.counters;
        assert_eq!(
            [
                c.idr_requests,
                c.rfi_requests,
                c.pings,
                c.loss_reports,
                c.fec_reports,
                c.fec_recovered_frames,
                c.fec_repaired_shards,
                c.frames_lost,
                c.input_packets,
                c.rejected_control,
                c.refused_control_peers,
                c.control_foreign_datagrams,
                c.input_invalid,
                c.input_dropped,
            ],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 31, 32, 33]
        );
        assert_eq!(
            [
                c.frames_sent,
                c.video_datagrams,
                c.video_bytes,
                c.frames_skipped,
                c.video_ring_drops,
                c.video_discontinuities,
                c.packetize_errors,
                c.audio_packets,
                c.audio_datagrams,
                c.audio_bytes,
                c.audio_packets_skipped,
                c.audio_ring_drops,
                c.ring_errors,
                c.send_errors,
                c.encoder_idr_requests,
                c.encoder_idr_errors,
                c.video_pings,
                c.audio_pings,
                c.video_foreign_datagrams,
                c.audio_foreign_datagrams,
            ],
            [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 34]
        );
        assert_eq!(
            (
                stats.rtsp.requests,
                stats.rtsp.refused,
                stats.rtsp.dropped_connections
            ),
            (2, 1, 1)
        );
    }
}
