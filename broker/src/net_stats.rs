//! lumen-net's stream statistics (`WorkerMsg::NetStats`) as `lumen-broker status` shows them: the
//! newest report of the stream in progress (or of the last one), and the totals since the broker
//! started. The counters are plain numbers from an untrusted worker: they are shown and added up
//! (saturating), and nothing is decided on them.

use std::sync::{Arc, Mutex, PoisonError};

use lumen_ipc::net_msg::{HttpCounters, NetCounters, NetStats, RtspCounters};
use serde::Serialize;

/// What `status` shows as `net_stream`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NetStreamStatus {
    /// lumen-net's number of the stream.
    pub stream: u64,
    /// Whether the stream is still running (false once its last report came, or lumen-net died).
    pub active: bool,
    /// The stream's counters, as of its newest report.
    #[serde(flatten)]
    pub counters: NetCounters,
    /// The RTSP listener of the lumen-net that serves it, since that lumen-net started.
    pub rtsp: RtspCounters,
    /// Its HTTP and HTTPS listeners, since that lumen-net started.
    pub http: HttpCounters,
    /// Every stream since the broker started.
    pub totals: NetTotals,
}

/// Sums over every stream (and every lumen-net) since the broker started.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NetTotals {
    /// Streams that reported.
    pub streams: u64,
    #[serde(flatten)]
    pub counters: NetCounters,
    pub rtsp: RtspCounters,
    pub http: HttpCounters,
}

/// The broker's record of lumen-net's reports; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct NetStatsBook(Arc<Mutex<Book>>);

#[derive(Default)]
struct Book {
    /// The newest report, with the lumen-net instance that sent it (`instance` at the time).
    latest: Option<(u64, NetStats)>,
    /// lumen-net exits seen: a restarted lumen-net numbers its streams from 1 again.
    instance: u64,
    streams: u64,
    /// Counters of the streams that ended.
    ended: NetCounters,
    /// RTSP counters of the lumen-net instances that exited.
    ended_rtsp: RtspCounters,
    /// HTTP counters of the lumen-net instances that exited.
    ended_http: HttpCounters,
}

impl NetStatsBook {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one report from lumen-net.
    pub fn record(&self, stats: NetStats) {
        let mut book = self.book();
        let instance = book.instance;
        match book.latest {
            Some((seen_in, last)) if seen_in == instance && last.stream == stats.stream => {
                // A report after the stream's last one changes nothing.
                if !last.active {
                    return;
                }
            }
            Some((_, last)) => {
                // A new stream; the previous one's last report never came: what it had counted
                // is its total.
                if last.active {
                    book.ended.add(&last.counters);
                }
                book.streams += 1;
            }
            None => book.streams += 1,
        }
        if !stats.active {
            book.ended.add(&stats.counters);
        }
        book.latest = Some((instance, stats));
    }

    /// lumen-net exited: its stream (if any) is over, and its successor counts afresh.
    pub fn net_exited(&self) {
        let mut book = self.book();
        let instance = book.instance;
        if let Some((seen_in, last)) = book.latest {
            if seen_in == instance {
                if last.active {
                    book.ended.add(&last.counters);
                }
                book.ended_rtsp.add(&last.rtsp);
                book.ended_http.add(&last.http);
                book.latest = Some((
                    seen_in,
                    NetStats {
                        active: false,
                        ..last
                    },
                ));
            }
        }
        book.instance += 1;
    }

    /// What `status` shows; `None` before the first report.
    pub fn status(&self) -> Option<NetStreamStatus> {
        let book = self.book();
        let (seen_in, last) = book.latest?;
        let mut counters = book.ended;
        if last.active {
            counters.add(&last.counters);
        }
        let (mut rtsp, mut http) = (book.ended_rtsp, book.ended_http);
        if seen_in == book.instance {
            rtsp.add(&last.rtsp);
            http.add(&last.http);
        }
        Some(NetStreamStatus {
            stream: last.stream,
            active: last.active,
            counters: last.counters,
            rtsp: last.rtsp,
            http: last.http,
            totals: NetTotals {
                streams: book.streams,
                counters,
                rtsp,
                http,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stream: u64, active: bool, frames: u64, rtsp_requests: u64) -> NetStats {
        NetStats {
            stream,
            active,
            counters: NetCounters {
                frames_sent: frames,
                fec_recovered_frames: frames / 10,
                ..NetCounters::default()
            },
            rtsp: RtspCounters {
                requests: rtsp_requests,
                ..RtspCounters::default()
            },
            http: HttpCounters {
                requests: rtsp_requests * 2,
                ..HttpCounters::default()
            },
        }
    }

    #[test]
    fn the_newest_report_shows_and_totals_add_up_streams() {
        let book = NetStatsBook::default();
        assert_eq!(book.status(), None);
        book.record(report(1, true, 60, 7));
        book.record(report(1, true, 120, 7));
        let status = book.status().unwrap();
        assert!(status.active);
        assert_eq!(status.counters.frames_sent, 120);
        assert_eq!(status.totals.counters.frames_sent, 120);
        assert_eq!(status.totals.streams, 1);

        book.record(report(1, false, 130, 7));
        // A late report of an ended stream changes nothing.
        book.record(report(1, true, 140, 7));
        let status = book.status().unwrap();
        assert!(!status.active);
        assert_eq!(status.counters.frames_sent, 130);
        assert_eq!(status.totals.counters.frames_sent, 130);

        book.record(report(2, true, 30, 14));
        // Stream 3 begins before stream 2's last report came: 2 counts with what it had.
        book.record(report(3, true, 10, 21));
        let status = book.status().unwrap();
        assert_eq!((status.stream, status.active), (3, true));
        assert_eq!(status.totals.streams, 3);
        assert_eq!(status.totals.counters.frames_sent, 130 + 30 + 10);
        assert_eq!(status.totals.counters.fec_recovered_frames, 13 + 3 + 1);
        // RTSP counters run for the life of one lumen-net: the newest is its total.
        assert_eq!(status.totals.rtsp.requests, 21);
        assert_eq!(status.totals.http.requests, 42);
    }

    #[test]
    fn a_lumen_net_exit_ends_its_stream_and_its_successor_counts_afresh() {
        let book = NetStatsBook::default();
        book.record(report(1, false, 100, 7));
        book.record(report(2, true, 50, 14));
        book.net_exited();
        let status = book.status().unwrap();
        assert!(!status.active);
        assert_eq!(status.totals.counters.frames_sent, 150);
        assert_eq!(status.totals.rtsp.requests, 14);
        // The new lumen-net numbers its streams from 1 again: a new stream, not a late report.
        book.record(report(1, true, 20, 7));
        let status = book.status().unwrap();
        assert_eq!((status.stream, status.active), (1, true));
        assert_eq!(status.totals.streams, 3);
        assert_eq!(status.totals.counters.frames_sent, 170);
        assert_eq!(status.totals.rtsp.requests, 21);
        // nvhttp's counters carry across lumen-net instances the same way.
        assert_eq!(status.totals.http.requests, 42);
        assert_eq!(status.http.requests, 14);
        // An exit with no stream of its own changes nothing but the instance.
        book.net_exited();
        book.net_exited();
        assert_eq!(book.status().unwrap().totals.counters.frames_sent, 170);
    }
}
