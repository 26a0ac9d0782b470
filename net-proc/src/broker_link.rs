//! lumen-net's requests to the broker (`WorkerMsg::NetRequest`) and the matching of its answers
//! (`BrokerMsg::NetReply`) to whoever waits for them: async handlers (pairing) and the TLS
//! handshake's signer, which blocks its task until the broker signs.
//!
//! Replies arrive on the worker's control loop (the main thread), which hands them to
//! [`BrokerLink::complete`]. A reply nobody waits for any more (its request timed out) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use lumen_ipc::channel::Channel;
use lumen_ipc::msg::WorkerMsg;
use lumen_ipc::net_msg::{NetReply, NetRequest};
use tokio::sync::oneshot;

/// Requests in flight at once; more are refused rather than queued without bound.
const MAX_IN_FLIGHT: usize = 64;

/// Why a request got no reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("{MAX_IN_FLIGHT} requests to the broker are already in flight")]
    Busy,
    #[error("sending to the broker: {0}")]
    Send(String),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker link closed")]
    Closed,
}

enum Waiter {
    Async(oneshot::Sender<NetReply>),
    Blocking(mpsc::SyncSender<NetReply>),
}

/// Sends requests on the worker's report channel and routes the replies.
pub struct BrokerLink {
    send: Box<dyn Fn(WorkerMsg) -> Result<(), String> + Send + Sync>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
}

impl BrokerLink {
    /// A link that sends on `channel` (a clone of the control channel).
    pub fn new(channel: Channel) -> Arc<BrokerLink> {
        BrokerLink::with_sender(move |msg| channel.send(&msg, &[]).map_err(|e| e.to_string()))
    }

    /// A link with any sender (tests answer requests themselves).
    pub fn with_sender(
        send: impl Fn(WorkerMsg) -> Result<(), String> + Send + Sync + 'static,
    ) -> Arc<BrokerLink> {
        Arc::new(BrokerLink {
            send: Box::new(send),
            // Starting from a random id keeps a late reply meant for a previous lumen-net (the
            // broker answers every request once, even after a restart) from matching ours.
            next_id: AtomicU64::new(rand_id()),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&self, request: NetRequest, waiter: Waiter) -> Result<u64, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = self.waiting();
            if waiting.len() >= MAX_IN_FLIGHT {
                return Err(LinkError::Busy);
            }
            waiting.insert(id, waiter);
        }
        if let Err(e) = (self.send)(WorkerMsg::NetRequest { id, request }) {
            self.waiting().remove(&id);
            return Err(LinkError::Send(e));
        }
        Ok(id)
    }

    /// Sends `request` and waits for its reply, up to `timeout`.
    pub async fn request(
        &self,
        request: NetRequest,
        timeout: Duration,
    ) -> Result<NetReply, LinkError> {
        let (tx, rx) = oneshot::channel();
        let id = self.submit(request, Waiter::Async(tx))?;
        let result = tokio::time::timeout(timeout, rx).await;
        self.waiting().remove(&id);
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    /// [`request`](Self::request) for code that cannot await (rustls' signer).
    pub fn request_blocking(
        &self,
        request: NetRequest,
        timeout: Duration,
    ) -> Result<NetReply, LinkError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = self.submit(request, Waiter::Blocking(tx))?;
        let result = rx.recv_timeout(timeout);
        self.waiting().remove(&id);
        match result {
            Ok(reply) => Ok(reply),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LinkError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::Closed),
        }
    }

    /// Sends a report that needs no answer (`WorkerMsg::NetStats`).
    pub fn notify(&self, msg: WorkerMsg) -> Result<(), LinkError> {
        (self.send)(msg).map_err(LinkError::Send)
    }

    /// Hands the broker's reply to its waiter; false if nobody waits for `id`.
    pub fn complete(&self, id: u64, reply: NetReply) -> bool {
        let Some(waiter) = self.waiting().remove(&id) else {
            return false;
        };
        match waiter {
            Waiter::Async(tx) => tx.send(reply).is_ok(),
            Waiter::Blocking(tx) => tx.try_send(reply).is_ok(),
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS (getrandom); its hash of nothing is a random u64. Half
    // the range keeps the ids far from wrapping.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    hasher.finish() >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(u64, NetRequest)>>>;

    /// A link whose "broker" records requests; the test answers them through `complete`.
    fn link() -> (Arc<BrokerLink>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let link = BrokerLink::with_sender({
            let seen = seen.clone();
            move |msg| match msg {
                WorkerMsg::NetRequest { id, request } => {
                    seen.lock().unwrap().push((id, request));
                    Ok(())
                }
                other => Err(format!("unexpected {other:?}")),
            }
        });
        (link, seen)
    }

    #[tokio::test]
    async fn replies_reach_their_waiters_in_any_order() {
        let (link, seen) = link();
        let sign = |n: u8| NetRequest::TlsSign {
            scheme: 0x0804,
            message: vec![n],
        };
        let first = tokio::spawn({
            let link = link.clone();
            async move { link.request(sign(1), Duration::from_secs(5)).await }
        });
        let second = std::thread::spawn({
            let link = link.clone();
            move || link.request_blocking(sign(2), Duration::from_secs(5))
        });
        while seen.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let requests = seen.lock().unwrap().clone();
        for (id, request) in requests.iter().rev() {
            let NetRequest::TlsSign { message, .. } = request else {
                panic!()
            };
            assert!(link.complete(*id, NetReply::Signature(message.clone())));
        }
        assert_eq!(first.await.unwrap(), Ok(NetReply::Signature(vec![1])));
        assert_eq!(second.join().unwrap(), Ok(NetReply::Signature(vec![2])));
        // A reply for an id nobody waits for is dropped.
        assert!(!link.complete(requests[0].0, NetReply::Signature(vec![])));
    }

    #[tokio::test]
    async fn unanswered_requests_time_out_and_are_forgotten() {
        let (link, seen) = link();
        let result = link
            .request(
                NetRequest::TlsSign {
                    scheme: 0x0804,
                    message: vec![],
                },
                Duration::from_millis(20),
            )
            .await;
        assert_eq!(result, Err(LinkError::Timeout(Duration::from_millis(20))));
        let id = seen.lock().unwrap()[0].0;
        assert!(!link.complete(id, NetReply::Signature(vec![])));
        let blocking = link.request_blocking(
            NetRequest::TlsSign {
                scheme: 0x0804,
                message: vec![],
            },
            Duration::from_millis(20),
        );
        assert_eq!(blocking, Err(LinkError::Timeout(Duration::from_millis(20))));
    }

    #[test]
    fn in_flight_requests_are_bounded_and_send_errors_reported() {
        let (link, _) = link();
        let mut waiters = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            let (tx, rx) = oneshot::channel();
            link.submit(
                NetRequest::TlsSign {
                    scheme: 0,
                    message: vec![],
                },
                Waiter::Async(tx),
            )
            .unwrap();
            waiters.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        assert_eq!(
            link.submit(
                NetRequest::TlsSign {
                    scheme: 0,
                    message: vec![]
                },
                Waiter::Async(tx)
            ),
            Err(LinkError::Busy)
        );
        let failing = BrokerLink::with_sender(|_| Err("broken pipe".into()));
        assert_eq!(
            failing.request_blocking(
                NetRequest::TlsSign {
                    scheme: 0,
                    message: vec![]
                },
                Duration::from_secs(1)
            ),
            Err(LinkError::Send("broken pipe".into()))
        );
        assert!(failing.waiting().is_empty());
    }
}
