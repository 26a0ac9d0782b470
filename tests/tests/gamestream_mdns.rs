//! GameStream issue 4, discovery: `lumen-broker serve` in one network namespace (bound to
//! 10.200.0.1), a real mDNS browser (the `mdns-sd` crate, as Moonlight browses with its own) in
//! another, joined by a veth pair. The browser must resolve `_nvstream._tcp` to the host's address
//! and its HTTP port, see the goodbye when the broker stops, and find nothing when mDNS is off.
//! Bound to all addresses, the broker follows the host onto another subnet without a restart.
//!
//! These tests need root (network namespaces); without it they skip with a message, unless `CI`
//! is set.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumen_tests::netns::{self, LanPair, HOST_ADDR};
use lumen_tests::Broker;
use mdns_sd::{ServiceDaemon, ServiceEvent};
use serde_json::Value;

const SERVICE: &str = "_nvstream._tcp.local.";

/// What the browser saw.
#[derive(Debug, Clone)]
enum Seen {
    Resolved {
        fullname: String,
        host: String,
        port: u16,
        addresses: Vec<IpAddr>,
    },
    Removed {
        fullname: String,
    },
}

/// An `mdns-sd` browser running inside a network namespace: a thread enters the namespace
/// (setns applies to the calling thread, and the daemon thread it spawns inherits it), then
/// browses and forwards what it sees until dropped.
struct Browser {
    events: mpsc::Receiver<Result<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Browser {
    fn start(ns: &str) -> Result<Browser> {
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening network namespace {ns}"))?;
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Err(e) = browse(&netns, &tx, &thread_stop) {
                let _ = tx.send(Err(e));
            }
        });
        Ok(Browser {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The next event that `pick` takes, within `wait`.
    fn wait_for<T>(
        &self,
        wait: Duration,
        mut pick: impl FnMut(&Seen) -> Option<T>,
    ) -> Result<Option<T>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(seen) => {
                    let seen = seen?;
                    eprintln!("mdns browser: {seen:?}");
                    if let Some(found) = pick(&seen) {
                        return Ok(Some(found));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the browser thread ended"),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn browse(netns: &std::fs::File, tx: &mpsc::Sender<Result<Seen>>, stop: &AtomicBool) -> Result<()> {
    use std::os::fd::AsFd;
    rustix::thread::move_into_link_name_space(
        netns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("entering the client's network namespace")?;
    let daemon = ServiceDaemon::new().context("starting the mdns-sd daemon")?;
    let receiver = daemon.browse(SERVICE).context("browsing")?;
    while !stop.load(Ordering::Relaxed) {
        let Ok(event) = receiver.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let seen = match event {
            ServiceEvent::ServiceResolved(info) => Seen::Resolved {
                fullname: info.fullname.clone(),
                host: info.host.clone(),
                port: info.port,
                addresses: info.addresses.iter().map(|a| a.to_ip_addr()).collect(),
            },
            ServiceEvent::ServiceRemoved(_, fullname) => Seen::Removed { fullname },
            _ => continue,
        };
        if tx.send(Ok(seen)).is_err() {
            break;
        }
    }
    let _ = daemon.shutdown();
    Ok(())
}

fn port_roles(status: &Value) -> Vec<(String, u64)> {
    status["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["role"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_browser_on_the_lan_resolves_the_host_and_sees_its_goodbye() -> Result<()> {
    if !netns::root_or_skip("gamestream_mdns")? {
        return Ok(());
    }
    let lan = LanPair::new()?;
    let mut broker = Broker::start_in_netns("mdns-on", &lan)?;
    let status = broker.status()?;
    assert!(
        port_roles(&status).contains(&("Mdns".to_owned(), 5353)),
        "status ports: {}",
        status["ports"]
    );
    let browser = Browser::start(&lan.client)?;
    let found = browser.wait_for(Duration::from_secs(15), |seen| match seen {
        Seen::Resolved { .. } => Some(seen.clone()),
        Seen::Removed { .. } => None,
    })?;
    let Some(Seen::Resolved {
        fullname,
        host,
        port,
        addresses,
    }) = found
    else {
        bail!("no _nvstream._tcp service resolved within 15 s");
    };
    assert!(fullname.ends_with("._nvstream._tcp.local."), "{fullname}");
    assert!(host.ends_with(".local."), "{host}");
    assert_eq!(port, broker.port_base, "the SRV port is nvhttp's HTTP port");
    let host_addr: IpAddr = HOST_ADDR.parse()?;
    assert_eq!(
        addresses,
        vec![host_addr],
        "only the address the client can reach"
    );

    // A clean stop says goodbye (TTL 0): the browser forgets the host at once.
    broker.terminate()?;
    let gone = browser.wait_for(Duration::from_secs(10), |seen| match seen {
        Seen::Removed { fullname: name } if *name == fullname => Some(()),
        _ => None,
    })?;
    assert!(
        gone.is_some(),
        "no goodbye for {fullname} after the broker stopped"
    );
    Ok(())
}

#[test]
fn with_mdns_off_nothing_answers() -> Result<()> {
    if !netns::root_or_skip("gamestream_mdns")? {
        return Ok(());
    }
    let lan = LanPair::new()?;
    let broker = Broker::start_in_netns_with_config("mdns-off", &lan, "mdns = false\n")?;
    let status = broker.status()?;
    assert!(
        !port_roles(&status).iter().any(|(role, _)| role == "Mdns"),
        "status ports: {}",
        status["ports"]
    );
    let browser = Browser::start(&lan.client)?;
    // The browser queries at once and again after a second; the other test shows an answer
    // arrives well within this.
    let found = browser.wait_for(Duration::from_secs(5), |seen| match seen {
        Seen::Resolved { .. } => Some(seen.clone()),
        Seen::Removed { .. } => None,
    })?;
    assert!(
        found.is_none(),
        "mDNS is off, yet the browser found {found:?}"
    );
    Ok(())
}

/// A broker bound to all addresses, whose host then moves to another subnet (the old address
/// removed, as when a laptop joins another network): a browser on the new subnet must resolve
/// the host to its new address, without a restart. Without following the interfaces, the
/// responder would still advertise the address that is gone.
#[test]
fn a_host_that_moves_to_another_subnet_is_advertised_there() -> Result<()> {
    if !netns::root_or_skip("gamestream_mdns")? {
        return Ok(());
    }
    let lan = LanPair::new()?;
    let broker = Broker::start_in_netns_bound("mdns-moves", &lan, "0.0.0.0", "")?;
    lan.readdress("10.201.0.1/24", "10.201.0.2/24")?;
    // The broker lists the interfaces every 3 s (broker/src/mdns_refresh.rs); the browser starts
    // after that, so what it resolves is what the host advertises after the move (before it, a
    // query from the new subnet would be answered with the old address).
    std::thread::sleep(Duration::from_secs(5));
    let browser = Browser::start(&lan.client)?;
    let moved: IpAddr = "10.201.0.1".parse()?;
    let found = browser.wait_for(Duration::from_secs(20), |seen| match seen {
        Seen::Resolved { addresses, .. } if addresses.contains(&moved) => Some(seen.clone()),
        _ => None,
    })?;
    let Some(Seen::Resolved {
        port, addresses, ..
    }) = found
    else {
        bail!("the host was not resolved to {moved} within 20 s of moving there");
    };
    assert_eq!(port, broker.port_base, "the SRV port is nvhttp's HTTP port");
    assert_eq!(addresses, vec![moved], "only the address the host has now");
    Ok(())
}
