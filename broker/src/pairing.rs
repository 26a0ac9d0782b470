//! The PIN slot between `lumen-broker pair PIN` and a Moonlight client that is pairing.
//!
//! The user types the PIN Moonlight shows; the broker holds it for a while and waits for a client
//! to start pairing. A client's first pairing stage (see `net_service`) waits in
//! [`PairingSlot::wait_for_pin`] until a PIN is offered, takes it, and reports the outcome back
//! through the sender it got with it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// How long `pair` waits for a client by default (Moonlight shows its PIN for about that long).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// A validated four-digit PIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(****)")
    }
}

impl Pin {
    /// Moonlight shows four decimal digits; anything else is a typo.
    pub fn parse(text: &str) -> Result<Pin, PairingError> {
        if text.len() == 4 && text.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Pin(text.to_string()))
        } else {
            Err(PairingError::BadPin)
        }
    }

    /// The digits, for the pairing protocol.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

/// A client that completed pairing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paired {
    pub client_id: String,
    pub name: String,
}

/// Why `pair` did not pair a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    #[error("the PIN must be the 4 digits Moonlight shows")]
    BadPin,
    #[error("another `pair` is already waiting for a client")]
    Busy,
    #[error("no Moonlight client started pairing within {}", seconds(*.0))]
    NoClient(Duration),
    #[error("pairing failed: {0}")]
    Failed(String),
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// What the pairing protocol hands back for a taken PIN.
pub type Outcome = Result<Paired, String>;

struct Waiting {
    pin: Pin,
    reply: oneshot::Sender<Outcome>,
}

/// Holds at most one PIN waiting for a client.
#[derive(Clone)]
pub struct PairingSlot {
    waiting: Arc<Mutex<Option<Waiting>>>,
    /// Wakes clients waiting in [`PairingSlot::wait_for_pin`] when a PIN is offered.
    offered: Arc<Notify>,
    wait: Duration,
}

impl PairingSlot {
    /// `wait` is how long [`offer`](Self::offer) waits for a client to start pairing.
    pub fn new(wait: Duration) -> PairingSlot {
        PairingSlot {
            waiting: Arc::new(Mutex::new(None)),
            offered: Arc::new(Notify::new()),
            wait,
        }
    }

    /// Offers `pin` to the next client that starts pairing and waits for the outcome.
    pub async fn offer(&self, pin: Pin) -> Result<Paired, PairingError> {
        let (reply, outcome) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            // A slot whose receiver is gone (its `pair` timed out or hung up) is free.
            if waiting.as_ref().is_some_and(|w| !w.reply.is_closed()) {
                return Err(PairingError::Busy);
            }
            *waiting = Some(Waiting { pin, reply });
        }
        self.offered.notify_waiters();
        let result = tokio::time::timeout(self.wait, outcome).await;
        // Whatever happened, this PIN is no longer on offer.
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.as_ref().is_some_and(|w| w.reply.is_closed()) {
                *waiting = None;
            }
        }
        match result {
            Err(_elapsed) => Err(PairingError::NoClient(self.wait)),
            Ok(Err(_dropped)) => Err(PairingError::Failed(
                "the pairing client went away".to_string(),
            )),
            Ok(Ok(outcome)) => outcome.map_err(PairingError::Failed),
        }
    }

    /// Called when a client starts pairing: takes the waiting PIN, if any, and the sender
    /// through which the pairing protocol reports the outcome to the waiting `pair`.
    pub fn take_pin(&self) -> Option<(Pin, oneshot::Sender<Outcome>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting
            .take()
            .filter(|w| !w.reply.is_closed())
            .map(|w| (w.pin, w.reply))
    }

    /// Takes the PIN on offer, waiting up to `timeout` for one (a client's first pairing stage
    /// blocks until the user runs `pair`, as Moonlight expects). `None` when none came.
    pub async fn wait_for_pin(&self, timeout: Duration) -> Option<(Pin, oneshot::Sender<Outcome>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an offer between the look and the wait still wakes.
            let offered = self.offered.notified();
            tokio::pin!(offered);
            offered.as_mut().enable();
            if let Some(taken) = self.take_pin() {
                return Some(taken);
            }
            if tokio::time::timeout_at(deadline, offered).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_four_digits() {
        assert!(Pin::parse("0123").is_ok());
        for bad in ["", "123", "12345", "12a4", "١٢٣٤", " 123"] {
            assert_eq!(Pin::parse(bad), Err(PairingError::BadPin), "{bad:?}");
        }
        assert_eq!(format!("{:?}", Pin::parse("1234").unwrap()), "Pin(****)");
    }

    #[tokio::test]
    async fn no_client_times_out_honestly() {
        let slot = PairingSlot::new(Duration::from_millis(50));
        let err = slot.offer(Pin::parse("1234").unwrap()).await.unwrap_err();
        assert_eq!(err, PairingError::NoClient(Duration::from_millis(50)));
        assert_eq!(
            err.to_string(),
            "no Moonlight client started pairing within 0.1 s"
        );
        assert_eq!(
            PairingError::NoClient(DEFAULT_WAIT).to_string(),
            "no Moonlight client started pairing within 60 s"
        );
        // The timed-out PIN is gone.
        assert!(slot.take_pin().is_none());
    }

    #[tokio::test]
    async fn a_client_takes_the_pin_and_reports_back() {
        let slot = PairingSlot::new(Duration::from_secs(5));
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("4321").unwrap()).await }
        });
        let (pin, reply) = loop {
            if let Some(taken) = slot.take_pin() {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(pin.digits(), "4321");
        let paired = Paired {
            client_id: "abc".into(),
            name: "deck".into(),
        };
        reply.send(Ok(paired.clone())).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(paired));
    }

    #[tokio::test]
    async fn a_waiting_client_gets_the_pin_when_it_is_offered() {
        let slot = PairingSlot::new(Duration::from_secs(5));
        let client = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait_for_pin(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let offer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("9876").unwrap()).await }
        });
        let (pin, reply) = client.await.unwrap().expect("the client got the PIN");
        assert_eq!(pin.digits(), "9876");
        reply.send(Err("wrong PIN".into())).unwrap();
        assert_eq!(
            offer.await.unwrap(),
            Err(PairingError::Failed("wrong PIN".into()))
        );
        // Nobody offers: the wait ends empty.
        assert!(slot.wait_for_pin(Duration::from_millis(30)).await.is_none());
    }

    #[tokio::test]
    async fn one_waiter_at_a_time() {
        let slot = PairingSlot::new(Duration::from_millis(300));
        let first = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("1111").unwrap()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            slot.offer(Pin::parse("2222").unwrap()).await,
            Err(PairingError::Busy)
        );
        assert!(matches!(
            first.await.unwrap(),
            Err(PairingError::NoClient(_))
        ));
    }
}
