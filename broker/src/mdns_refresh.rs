//! Keeps the mDNS advertisement in step with the host's interfaces: every [`INTERVAL`] the LAN
//! sockets list them again ([`LanSockets::refresh_mdns`]), and a change goes to `lumen-net` as a
//! new `NetMdns`, which it announces at once. Polling rather than a netlink subscription: a list
//! of interfaces every few seconds costs nothing, and the broker needs no new socket family.
//! A `lumen-net` that is not running drops the message; on its next `Ready` it gets the current
//! advert with its sockets.

use std::sync::Arc;
use std::time::Duration;

use lumen_ipc::msg::{BrokerMsg, WorkerKind};

use crate::sockets::LanSockets;
use crate::supervisor::Supervisor;

/// How often the interfaces are listed again.
pub const INTERVAL: Duration = Duration::from_secs(3);

/// Starts following the interfaces, when the sockets advertise over mDNS.
pub fn spawn(supervisor: Supervisor) {
    let Some(sockets) = supervisor.lan_sockets() else {
        return;
    };
    if sockets.mdns_advert().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let sockets: Arc<LanSockets> = sockets.clone();
            let changed = tokio::task::spawn_blocking(move || sockets.refresh_mdns()).await;
            let Ok(Some(advert)) = changed else {
                continue;
            };
            let addresses: Vec<String> = advert
                .interfaces
                .iter()
                .map(|i| i.address.to_string())
                .collect();
            tracing::info!(
                "mDNS: the interfaces changed; advertising on {}",
                addresses.join(", ")
            );
            if supervisor.is_running(WorkerKind::Net) {
                if let Err(e) =
                    supervisor.send(WorkerKind::Net, BrokerMsg::NetMdns(advert), Vec::new())
                {
                    tracing::warn!("mDNS: telling lumen-net: {e:#}");
                }
            }
        }
    });
}
