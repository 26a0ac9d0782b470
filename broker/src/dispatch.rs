//! Routes what the workers report (supervisor events) to the part of the broker that handles it:
//! session reports and worker starts to [`Sessions`], `lumen-net`'s requests to [`NetService`]
//! (each answered on its own task, so a slow one never holds up the rest).

use std::sync::Arc;

use anyhow::Context;
use lumen_ipc::msg::{BrokerMsg, WorkerKind};

use crate::net_service::NetService;
use crate::session::Sessions;
use crate::supervisor::{Supervisor, WorkerEvent};

/// Starts routing the supervisor's events. Must be called inside the tokio runtime.
pub fn start(
    supervisor: Supervisor,
    sessions: Sessions,
    net: Arc<NetService>,
) -> anyhow::Result<()> {
    let mut events = supervisor
        .take_events()
        .context("worker events are already taken")?;
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::NetRequest { id, request } => {
                    let (supervisor, net) = (supervisor.clone(), net.clone());
                    tokio::spawn(async move {
                        let reply = net.handle(request).await;
                        if let Err(e) = supervisor.send(
                            WorkerKind::Net,
                            BrokerMsg::NetReply { id, reply },
                            Vec::new(),
                        ) {
                            tracing::warn!("answering lumen-net: {e:#}");
                        }
                    });
                }
                WorkerEvent::Ready {
                    kind: WorkerKind::Net,
                } => {
                    let identity = BrokerMsg::NetIdentity(net.identity());
                    if let Err(e) = supervisor.send(WorkerKind::Net, identity, Vec::new()) {
                        tracing::warn!("sending lumen-net the host identity: {e:#}");
                    }
                    sessions.on_event(event);
                }
                other => sessions.on_event(other),
            }
        }
    });
    Ok(())
}
