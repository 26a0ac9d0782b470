//! Routes what the workers report (supervisor events) to the part of the broker that handles it:
//! session reports and worker starts to [`Sessions`], `lumen-net`'s requests to [`NetService`]
//! (each answered on its own task, so a slow one never holds up the rest), its stream statistics
//! to the [`NetStatsBook`] that `status` shows.

use std::sync::Arc;

use anyhow::Context;
use lumen_ipc::media::EncoderCapabilities;
use lumen_ipc::msg::{BrokerMsg, WorkerKind, WorkerMsg};
use lumen_ipc::net_msg::{NetReply, NetRequest, PairReply};

use crate::input::InputPlumbing;
use crate::net_service::NetService;
use crate::net_stats::NetStatsBook;
use crate::session::{ConsumerTarget, Sessions};
use crate::supervisor::{Supervisor, WorkerEvent};

/// Starts routing the supervisor's events. Must be called inside the tokio runtime.
pub fn start(
    supervisor: Supervisor,
    sessions: Sessions,
    net: Arc<NetService>,
    net_stats: NetStatsBook,
    input: Arc<InputPlumbing>,
) -> anyhow::Result<()> {
    let mut events = supervisor
        .take_events()
        .context("worker events are already taken")?;
    // `unpair` (and pairing) change the pinned set: net must stop (or start) accepting at once.
    let mut client_changes = net.client_changes();
    tokio::spawn({
        let (supervisor, net) = (supervisor.clone(), net.clone());
        async move {
            while client_changes.changed().await.is_ok() {
                push_identity(&supervisor, &net);
            }
        }
    });
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::NetRequest {
                    id,
                    request: request @ (NetRequest::StartStream { .. } | NetRequest::StopStream),
                } => {
                    // Starting may wait on the ScreenCast portal (a user prompt): off the
                    // event loop.
                    let (supervisor, sessions, net) =
                        (supervisor.clone(), sessions.clone(), net.clone());
                    tokio::task::spawn_blocking(move || {
                        stream_request(&supervisor, &sessions, &net, id, request)
                    });
                }
                WorkerEvent::NetRequest { id, request } => {
                    let (supervisor, net) = (supervisor.clone(), net.clone());
                    tokio::spawn(async move {
                        let reply = net.handle(request).await;
                        // The new pin goes first, so net accepts the client's certificate by
                        // the time it answers stage 4 (the client's next request is stage 5
                        // over mutual TLS).
                        if reply == NetReply::Pair(PairReply::Paired) {
                            push_identity(&supervisor, &net);
                        }
                        if let Err(e) = supervisor.send(
                            WorkerKind::Net,
                            BrokerMsg::NetReply { id, reply },
                            Vec::new(),
                        ) {
                            tracing::warn!("answering lumen-net: {e:#}");
                        }
                    });
                }
                WorkerEvent::Session {
                    kind: WorkerKind::Encode,
                    msg: WorkerMsg::EncoderCapabilities(reported),
                } => encoder_reported(&supervisor, &net, reported),
                WorkerEvent::Ready {
                    kind: WorkerKind::Net,
                } => {
                    push_identity(&supervisor, &net);
                    // Connecting to EIS and opening uinput are quick, but off the event loop.
                    let input = input.clone();
                    tokio::task::spawn_blocking(move || input.on_ready(WorkerKind::Net));
                    sessions.on_event(event);
                }
                WorkerEvent::Ready {
                    kind: WorkerKind::Input,
                } => {
                    let input = input.clone();
                    tokio::task::spawn_blocking(move || input.on_ready(WorkerKind::Input));
                }
                // The supervisor passes these on from lumen-input only.
                WorkerEvent::Session {
                    kind: WorkerKind::Input,
                    msg: WorkerMsg::InputStats(stats),
                } => input.on_stats(stats),
                // The supervisor passes these on from lumen-net only.
                WorkerEvent::Session {
                    kind: WorkerKind::Net,
                    msg: WorkerMsg::NetStats(stats),
                } => net_stats.record(*stats),
                WorkerEvent::Exited {
                    kind: WorkerKind::Net,
                } => {
                    net_stats.net_exited();
                    sessions.on_event(event);
                }
                other => sessions.on_event(other),
            }
        }
    });
    Ok(())
}

/// lumen-encode said what it can produce (after each of its starts): net offers exactly that in
/// DESCRIBE from its next launch on, so it gets a fresh identity whenever the set changed.
fn encoder_reported(supervisor: &Supervisor, net: &NetService, reported: EncoderCapabilities) {
    let shown = format!("{reported:?}");
    match net.set_encoder_capabilities(reported) {
        Ok(changed) => {
            tracing::info!("the encoder can produce {shown}");
            if changed {
                push_identity(supervisor, net);
            }
        }
        Err(why) => tracing::warn!("lumen-encode reported malformed capabilities: {why}"),
    }
}

/// Starts or stops the stream lumen-net negotiated; the rings of a started one follow the reply.
fn stream_request(
    supervisor: &Supervisor,
    sessions: &Sessions,
    net: &NetService,
    id: u64,
    request: NetRequest,
) {
    let reply = |reply| {
        if let Err(e) = supervisor.send(
            WorkerKind::Net,
            BrokerMsg::NetReply { id, reply },
            Vec::new(),
        ) {
            tracing::warn!("answering lumen-net: {e:#}");
        }
    };
    if let Err(why) = request.validate() {
        tracing::warn!("lumen-net sent a malformed stream request: {why}");
        return reply(NetReply::Refused(why));
    }
    match request {
        NetRequest::StartStream { params } => {
            // A stream the encoder cannot produce is refused here, with the reason, rather than
            // failing inside the encoder once the client is connected.
            if let Err(why) = net.encoder_capabilities().check(&params) {
                tracing::warn!("refusing a stream: {why}");
                return reply(NetReply::Refused(why));
            }
            match sessions.start_session(params, ConsumerTarget::Net) {
                Ok(ends) => {
                    reply(NetReply::StreamStarting {
                        generation: ends.generation,
                    });
                    sessions.send_rings_to_net(ends);
                }
                Err(e) => reply(NetReply::Refused(format!("{e:#}"))),
            }
        }
        NetRequest::StopStream => {
            sessions.stop_session();
            reply(NetReply::StreamStopped);
        }
        _ => {}
    }
}

/// Sends lumen-net the host identity and the current pinned clients.
fn push_identity(supervisor: &Supervisor, net: &NetService) {
    let identity = BrokerMsg::NetIdentity(net.identity());
    if let Err(e) = supervisor.send(WorkerKind::Net, identity, Vec::new()) {
        tracing::warn!("sending lumen-net the host identity: {e:#}");
    }
}
