//! One OPC UA server as a source: a supervised session whose samples go to
//! the telemetry topic.
//!
//! Reconnects happen at two levels. Inside a session, async-opcua retries a
//! lost connection a few times (0.5 s doubling to 5 s) and reactivates the
//! session, or creates a new one and transfers the subscriptions, or
//! recreates them (in chunks). When that gives up, or the first connect
//! fails, this supervisor builds a new client after a jittered, capped
//! backoff and subscribes from scratch — for ever, until shutdown.
//!
//! Every new session resolves the configured nodes again (namespace URIs to
//! indices, browse paths to NodeIds). If the server now numbers them
//! differently, the subscription the library recreated points at the wrong
//! nodes, so it is deleted and built again from the new resolution.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use marktwin_core::backoff::Backoff;
use marktwin_core::health::Readiness;
use marktwin_core::opcua::{Mode, OpcuaServer};
use marktwin_core::{Config, now_ms};
use opcua::client::{
    MonitoredItemMap, OnSubscriptionNotificationCore, Session, SessionConnectMode,
    SessionPollResult,
};
use opcua::types::{
    DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue, DeadbandType,
    ExtensionObject, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    NotificationMessage, ReadValueId, StatusChangeNotification, StatusCode, TimestampsToReturn,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::client;
use super::convert::{TagMeta, reading};
use super::resolve::{Limits, Resolution, read_limits, resolve, value_id};
use crate::EdgeMetrics;
use crate::sink::Sink;
use crate::telemetry::TelemetryOut;

/// Samples of one publish (or one polling read): client handle (node index
/// + 1) and value, with the time they arrived.
struct Samples {
    received_ms: i64,
    values: Vec<(u32, DataValue)>,
}

/// Most samples encoded and sent as one batch.
const MAX_BATCH: usize = 20_000;

/// Forwards each publish response to the writer; runs inside the session's
/// event loop, so it only moves data.
struct Forward {
    tx: mpsc::UnboundedSender<Samples>,
    source: String,
}

impl OnSubscriptionNotificationCore for Forward {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let received_ms = now_ms();
        let mut values = Vec::new();
        for obj in notification.notification_data.into_iter().flatten() {
            if obj.inner_is::<DataChangeNotification>() {
                if let Some(dc) = obj.into_inner_as::<DataChangeNotification>() {
                    values.extend(
                        dc.monitored_items
                            .into_iter()
                            .flatten()
                            .map(|n| (n.client_handle, n.value)),
                    );
                }
            } else if let Some(sc) = obj.inner_as::<StatusChangeNotification>() {
                warn!(source = self.source, status = %sc.status, "Subscription status changed on the server.");
            }
        }
        if !values.is_empty() {
            let _ = self.tx.send(Samples {
                received_ms,
                values,
            });
        }
    }
}

/// What a setup gives: what is read, and the skipped nodes with reasons.
type Subscribed = Result<(Active, Vec<String>), String>;

/// What a session currently reads.
struct Active {
    subscriptions: Vec<u32>,
    poll_task: Option<JoinHandle<()>>,
    node_ids: Vec<(usize, NodeId)>,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(t) = self.poll_task.take() {
            t.abort();
        }
    }
}

/// Reads one OPC UA server into the telemetry topic.
pub struct OpcuaSource {
    srv: OpcuaServer,
    data_dir: PathBuf,
    source: String,
    out: TelemetryOut,
    metas: Arc<Vec<TagMeta>>,
}

/// How a session ended.
enum Ended {
    Shutdown,
    /// It had been connected (so the next attempt starts with a short wait).
    Lost(String),
    Failed(String),
}

/// A status code with the hint an operator needs.
fn explain(srv: &OpcuaServer, code: StatusCode) -> String {
    let hint = match code {
        StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenRejected => format!(
            ": the server refused user `{}` (auth = {:?}); check username and password",
            srv.username, srv.auth
        ),
        StatusCode::BadCertificateUntrusted
        | StatusCode::BadSecurityChecksFailed
        | StatusCode::BadCertificateInvalid => ": certificate not trusted; move the server's certificate from <pki_dir>/rejected to <pki_dir>/trusted, or the client's into the server's trust list".to_string(),
        StatusCode::BadCertificateHostNameInvalid
        | StatusCode::BadCertificateUriInvalid
        | StatusCode::BadCertificateTimeInvalid => ": the server's certificate does not match its endpoint or has expired; fix it, or set verify_server_certificates = false".to_string(),
        StatusCode::BadSecurityPolicyRejected | StatusCode::BadTcpEndpointUrlInvalid => format!(
            ": the server has no endpoint with {} / {:?}",
            srv.security_policy.ua_name(),
            srv.security_mode
        ),
        _ => String::new(),
    };
    format!("{code}{hint}")
}

impl OpcuaSource {
    /// A source for `srv`, one of `cfg.edge.opcua.servers`.
    pub fn new(
        cfg: &Config,
        srv: OpcuaServer,
        sink: Sink,
        metrics: EdgeMetrics,
        readiness: Readiness,
    ) -> Self {
        let source = format!("opcua:{}", srv.name);
        let metas = srv
            .nodes
            .iter()
            .map(|n| TagMeta {
                tag: n.name.clone(),
                asset: n.asset.clone().unwrap_or_else(|| srv.asset.clone()),
                eng_unit: n.eng_unit.clone(),
            })
            .collect();
        OpcuaSource {
            out: TelemetryOut::new(cfg, source.clone(), sink, metrics, readiness),
            source,
            data_dir: cfg.data_dir.clone(),
            metas: Arc::new(metas),
            srv,
        }
    }

    /// Reads the server until `shutdown` turns true; never gives up.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> crate::Result<()> {
        info!(source = self.source, endpoint = self.srv.endpoint, nodes = self.srv.nodes.len(), mode = ?self.srv.mode, "OPC UA source starting.");
        self.out.set_ready(
            false,
            format!("{}: connecting to {}", self.source, self.srv.endpoint),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(
            rx,
            self.out.clone(),
            self.metas.clone(),
            gather_window(self.srv.publishing_interval_ms),
            shutdown.clone(),
        ));
        let mut backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_millis(self.srv.max_backoff_ms),
        );
        loop {
            let reason = match self.session(&tx, &mut shutdown).await {
                Ended::Shutdown => break,
                Ended::Lost(r) => {
                    backoff.reset();
                    r
                }
                Ended::Failed(r) => r,
            };
            self.out.failed();
            let wait = backoff.next_delay();
            warn!(
                source = self.source,
                reason,
                retry_in_ms = wait.as_millis() as u64,
                "OPC UA session ended; starting a new one."
            );
            self.out
                .set_ready(false, format!("{}: {reason}", self.source));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        drop(tx);
        let _ = writer.await;
        info!(source = self.source, "OPC UA source stopped.");
        Ok(())
    }

    /// One client and session, from connect to its end.
    async fn session(
        &self,
        tx: &mpsc::UnboundedSender<Samples>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        if *shutdown.borrow() {
            return Ended::Shutdown;
        }
        let (session, event_loop) = match client::connect(&self.srv, &self.data_dir).await {
            Ok(s) => s,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        let events = event_loop.enter();
        tokio::pin!(events);
        let mut active: Option<Active> = None;
        let mut setup: Option<JoinHandle<Subscribed>> = None;
        let mut connected = false;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    None => return Ended::Lost("session closed".into()),
                    Some(Err(code)) => {
                        let why = explain(&self.srv, code);
                        return if connected { Ended::Lost(why) } else { Ended::Failed(why) };
                    }
                    Some(Ok(SessionPollResult::Reconnected(mode))) => {
                        let how = match (&mode, connected) {
                            (SessionConnectMode::ReactivatedSession(_), _) => "reactivated",
                            (SessionConnectMode::NewSession(_), false) => "connected",
                            (SessionConnectMode::NewSession(_), true) => "new_session",
                        };
                        connected = true;
                        info!(source = self.source, how, "OPC UA session up.");
                        self.out.metrics().reconnects.with_label_values(&[self.source.as_str(), how]).inc();
                        self.out.set_ready(true, format!("{} connected to {}", self.source, self.srv.endpoint));
                        let reactivated = matches!(mode, SessionConnectMode::ReactivatedSession(_));
                        if !reactivated || active.is_some() {
                            if let Some(t) = setup.take() {
                                t.abort();
                            }
                            let previous = active.take();
                            let (session, srv, tx, source) =
                                (session.clone(), self.srv.clone(), tx.clone(), self.source.clone());
                            setup = Some(tokio::spawn(async move {
                                if reactivated {
                                    keep_or_subscribe(session, srv, tx, source, previous).await
                                } else {
                                    subscribe(session, srv, tx, source, previous).await
                                }
                            }));
                        }
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                        self.out.failed();
                        warn!(source = self.source, status = %code, "OPC UA connection lost; reconnecting.");
                        self.out.set_ready(false, format!("{}: connection lost ({code}); reconnecting", self.source));
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                        let why = explain(&self.srv, code);
                        if matches!(code, StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenRejected) {
                            error!(source = self.source, reason = why, "OPC UA login refused.");
                        } else {
                            warn!(source = self.source, reason = why, "OPC UA connect failed.");
                        }
                        self.out.set_ready(false, format!("{}: {why}", self.source));
                    }
                    Some(Ok(_)) => {}
                },
                r = async { setup.as_mut().expect("guarded").await }, if setup.is_some() => {
                    setup = None;
                    match r {
                        Ok(Ok((a, skipped))) => {
                            let reason = if skipped.is_empty() {
                                format!("{} reads {} nodes at {}", self.source, a.node_ids.len(), self.srv.endpoint)
                            } else {
                                format!("{} reads {} nodes at {}; skipped: {}", self.source, a.node_ids.len(), self.srv.endpoint, skipped.join("; "))
                            };
                            self.out.set_ready(true, reason);
                            active = Some(a);
                        }
                        Ok(Err(e)) => {
                            close(&session, events.as_mut()).await;
                            return Ended::Lost(e);
                        }
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => return Ended::Lost(format!("setup task failed: {e}")),
                    }
                }
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() {
                    if let Some(t) = setup.take() {
                        t.abort();
                    }
                    drop(active.take());
                    close(&session, events.as_mut()).await;
                    return Ended::Shutdown;
                },
            }
        }
    }
}

/// Closes the session (deleting its subscriptions on the server), polling
/// the event loop meanwhile: the close request needs it. Gives up after 2 s.
async fn close<S>(session: &Session, mut events: std::pin::Pin<&mut S>)
where
    S: futures::Stream,
{
    let closing = session.disconnect();
    tokio::pin!(closing);
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut closing => return,
            _ = &mut deadline => return,
            ev = events.next() => if ev.is_none() { return },
        }
    }
}

/// Queue size that keeps every sample between two publishes: the samples
/// one publishing interval holds, plus one because the server's sampling
/// and publishing timers drift against each other (a queue of one lost
/// about a third of the changes in the OPC UA benchmark); exception-based
/// items (sampling 0) report every change and get room for bursts.
fn queue_size(requested: Option<u32>, sampling_ms: Option<f64>, publishing_ms: u64) -> u32 {
    const EXCEPTION_BASED: u32 = 16;
    requested.unwrap_or_else(|| match sampling_ms {
        Some(s) if s > 0.0 => ((publishing_ms as f64 / s).ceil() as u32).max(1) + 1,
        Some(_) => EXCEPTION_BASED,
        None => 2,
    })
}

fn item(
    srv: &OpcuaServer,
    index: usize,
    node_id: NodeId,
    deadband: Option<f64>,
) -> MonitoredItemCreateRequest {
    let node = &srv.nodes[index];
    let filter = match deadband {
        Some(value) => ExtensionObject::from_message(DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: DeadbandType::Absolute as u32,
            deadband_value: value,
        }),
        None => ExtensionObject::null(),
    };
    MonitoredItemCreateRequest {
        item_to_monitor: value_id(node_id),
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: index as u32 + 1,
            // -1: the subscription's publishing interval.
            sampling_interval: node.sampling_interval_ms.unwrap_or(-1.0),
            filter,
            queue_size: queue_size(
                node.queue_size,
                node.sampling_interval_ms,
                srv.publishing_interval_ms,
            ),
            discard_oldest: true,
        },
    }
}

/// Resolves the nodes and starts reading them: a subscription with its
/// monitored items created in chunks within the server's limits, or a
/// polling task. `previous` is what the last session read; when the new
/// resolution gives the same NodeIds the library's transferred or
/// recreated subscription is kept. Returns the skipped nodes with reasons.
/// After a reactivated session: keeps the subscriptions when the server
/// still has them, else subscribes anew (a server may drop them with the
/// connection and keep the session).
///
/// The check (SetPublishingMode) also matters when they survived: after a
/// reactivation async-opcua 0.19 sent no more publish requests, so the
/// source stayed silent for ever with a healthy session, until a
/// subscription service call woke its publish loop (found by
/// `tests/tests/opcua_peer.rs`, which cuts the connection under a running
/// server: no sample after the cut without this call, samples every 100 ms
/// with it).
async fn keep_or_subscribe(
    session: Arc<Session>,
    srv: OpcuaServer,
    tx: mpsc::UnboundedSender<Samples>,
    source: String,
    previous: Option<Active>,
) -> Subscribed {
    if let Some(prev) = previous {
        if prev.subscriptions.is_empty() {
            return Ok((prev, Vec::new())); // polling mode: nothing on the server
        }
        match session.set_publishing_mode(&prev.subscriptions, true).await {
            Ok(codes) if codes.iter().all(|c| c.is_good()) => {
                info!(source, "Subscriptions survived the reconnect; kept.");
                return Ok((prev, Vec::new()));
            }
            Ok(codes) => warn!(
                source,
                ?codes,
                "The server lost the subscriptions; subscribing anew."
            ),
            Err(e) => {
                warn!(source, error = %e, "Cannot check the subscriptions; subscribing anew.")
            }
        }
        // Forget them on the client too; the server answers Bad, which is
        // what we know already.
        let _ = session.delete_subscriptions(&prev.subscriptions).await;
    }
    subscribe(session, srv, tx, source, None).await
}

async fn subscribe(
    session: Arc<Session>,
    srv: OpcuaServer,
    tx: mpsc::UnboundedSender<Samples>,
    source: String,
    previous: Option<Active>,
) -> Subscribed {
    let limits = read_limits(&session, &srv).await;
    let Resolution { nodes, failures } = resolve(&session, &srv, limits).await?;
    let mut skipped: Vec<String> = failures
        .iter()
        .map(|(i, why)| format!("{} ({why})", srv.nodes[*i].name))
        .collect();
    for s in &skipped {
        warn!(source, node = s, "OPC UA node skipped.");
    }
    let node_ids: Vec<(usize, NodeId)> =
        nodes.iter().map(|n| (n.index, n.node_id.clone())).collect();
    if let Some(prev) = previous {
        if prev.node_ids == node_ids {
            info!(
                source,
                "Nodes resolve as before; the session's subscription is kept."
            );
            return Ok((prev, skipped));
        }
        info!(
            source,
            "Nodes resolve differently now (namespaces renumbered?); subscribing again."
        );
        if !prev.subscriptions.is_empty() {
            let _ = session.delete_subscriptions(&prev.subscriptions).await;
        }
    }
    match srv.mode {
        Mode::Polling => {
            let task = tokio::spawn(poll(
                session,
                srv.clone(),
                node_ids.clone(),
                limits,
                tx,
                source,
            ));
            Ok((
                Active {
                    subscriptions: Vec::new(),
                    poll_task: Some(task),
                    node_ids,
                },
                skipped,
            ))
        }
        Mode::Subscription => {
            let items: Vec<MonitoredItemCreateRequest> = nodes
                .iter()
                .map(|n| item(&srv, n.index, n.node_id.clone(), n.deadband))
                .collect();
            let total = items.len();
            let mut pending: VecDeque<MonitoredItemCreateRequest> = items.into();
            let mut subscriptions = vec![new_subscription(&session, &srv, &tx, &source).await?];
            let mut in_last = 0usize;
            let mut revised_sampling = 0usize;
            let mut chunk = limits.items_per_call.max(1);
            while !pending.is_empty() {
                let n = pending.len().min(chunk);
                let part: Vec<MonitoredItemCreateRequest> =
                    pending.iter().take(n).cloned().collect();
                let sub = *subscriptions.last().expect("one subscription at least");
                let results = match session
                    .create_monitored_items(sub, TimestampsToReturn::Both, part.clone())
                    .await
                {
                    Ok(r) => r,
                    // The server's MaxMonitoredItemsPerSubscription would be
                    // passed (some servers refuse the whole call): the rest
                    // go into another subscription, in smaller calls if even
                    // a fresh subscription cannot take this one.
                    Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems => {
                        if in_last > 0 {
                            info!(
                                source,
                                subscription = sub,
                                items = in_last,
                                "Subscription full; opening another."
                            );
                            subscriptions
                                .push(new_subscription(&session, &srv, &tx, &source).await?);
                            in_last = 0;
                        } else if n > 1 {
                            chunk = n / 2;
                        } else {
                            return Err("the server takes no monitored item in a new subscription (BadTooManyMonitoredItems)".into());
                        }
                        continue;
                    }
                    Err(e) => return Err(format!("CreateMonitoredItems ({n} items) failed: {e}")),
                };
                pending.drain(..n);
                let mut full = Vec::new();
                for (req, r) in part.into_iter().zip(&results) {
                    let i = req.requested_parameters.client_handle as usize - 1;
                    let status = r.result.status_code;
                    if status == StatusCode::BadTooManyMonitoredItems {
                        full.push(req);
                    } else if !status.is_good() {
                        let s = format!("{} ({status})", srv.nodes[i].name);
                        warn!(source, node = s, "OPC UA node skipped.");
                        skipped.push(s);
                    } else {
                        in_last += 1;
                        if req.requested_parameters.sampling_interval >= 0.0
                            && r.result.revised_sampling_interval
                                != req.requested_parameters.sampling_interval
                        {
                            revised_sampling += 1;
                        }
                    }
                }
                if !full.is_empty() {
                    // Refused item by item: same as above.
                    if in_last == 0 {
                        return Err("the server takes no monitored item in a new subscription (BadTooManyMonitoredItems)".into());
                    }
                    info!(
                        source,
                        subscription = sub,
                        items = in_last,
                        "Subscription full; opening another."
                    );
                    for req in full.into_iter().rev() {
                        pending.push_front(req);
                    }
                    subscriptions.push(new_subscription(&session, &srv, &tx, &source).await?);
                    in_last = 0;
                }
            }
            if revised_sampling > 0 {
                info!(
                    source,
                    nodes = revised_sampling,
                    "The server revised sampling intervals; its values are used."
                );
            }
            info!(
                source,
                items = total,
                subscriptions = subscriptions.len(),
                chunk = limits.items_per_call,
                "Monitored items created."
            );
            Ok((
                Active {
                    subscriptions,
                    poll_task: None,
                    node_ids,
                },
                skipped,
            ))
        }
    }
}

/// A subscription whose notifications go to `tx`; logs the publishing
/// interval the server granted (the library publishes at that rate).
async fn new_subscription(
    session: &Session,
    srv: &OpcuaServer,
    tx: &mpsc::UnboundedSender<Samples>,
    source: &str,
) -> Result<u32, String> {
    let sub = session
        .create_subscription(
            Duration::from_millis(srv.publishing_interval_ms),
            // Lifetime and keep-alive counts: the server drops the
            // subscription after 60 publishing intervals without a publish
            // request; a keep-alive comes every 10.
            60,
            10,
            srv.max_notifications_per_publish,
            0,
            true,
            Forward {
                tx: tx.clone(),
                source: source.to_owned(),
            },
        )
        .await
        .map_err(|e| format!("CreateSubscription failed: {e}"))?;
    let revised = {
        let state = session.subscription_state().lock();
        state.get(sub).map(|s| s.publishing_interval())
    };
    info!(source, subscription = sub, requested_ms = srv.publishing_interval_ms, revised = ?revised, "Subscription created.");
    Ok(sub)
}

/// Polling mode: a Read of every node each `poll_interval_ms`, in chunks of
/// the server's MaxNodesPerRead.
async fn poll(
    session: Arc<Session>,
    srv: OpcuaServer,
    node_ids: Vec<(usize, NodeId)>,
    limits: Limits,
    tx: mpsc::UnboundedSender<Samples>,
    source: String,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(srv.poll_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for part in node_ids.chunks(limits.nodes_per_read.max(1)) {
            let ids: Vec<ReadValueId> = part.iter().map(|(_, n)| value_id(n.clone())).collect();
            match session.read(&ids, TimestampsToReturn::Both, 0.0).await {
                Ok(values) => {
                    let values = part
                        .iter()
                        .zip(values)
                        .map(|((i, _), dv)| (*i as u32 + 1, dv))
                        .collect();
                    if tx
                        .send(Samples {
                            received_ms: now_ms(),
                            values,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => warn!(source, error = %e, "OPC UA read failed; next cycle retries."),
            }
        }
    }
}

/// How long the writer gathers publish responses into one batch: half a
/// publishing interval, at most 100 ms. (A tenth was tried at 100k
/// points/s: no better at p50 or p99.)
fn gather_window(publishing_interval_ms: u64) -> Duration {
    Duration::from_millis((publishing_interval_ms / 2).clamp(1, 100))
}

/// Stores samples in batches: what arrives within `window` of the first
/// sample of a batch goes with it. One produce per window instead of one
/// per publish response keeps few requests in flight to the broker;
/// without it, at 25k points/s against Tansu, librdkafka's broker thread
/// spent most of a core polling between many small in-flight batches
/// (0.92 cores for what a bare producer sends on 0.04). Preparing the next
/// batch while the previous one is sent was tried and made the p99 worse
/// (500 against 300 ms at 100k points/s): both halves compete for the same
/// two cores.
async fn write(
    mut rx: mpsc::UnboundedReceiver<Samples>,
    out: TelemetryOut,
    metas: Arc<Vec<TagMeta>>,
    window: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut n = batch[0].values.len();
        let until = tokio::time::Instant::now() + window;
        while n < MAX_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => {
                    n += s.values.len();
                    batch.push(s);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut readings = Vec::with_capacity(n);
        for s in &batch {
            for (handle, dv) in &s.values {
                let Some(meta) = (*handle as usize).checked_sub(1).and_then(|i| metas.get(i))
                else {
                    warn!(
                        source = out.source(),
                        handle, "Sample for an unknown client handle."
                    );
                    continue;
                };
                let r = reading(meta, dv, s.received_ms);
                let t = r.source_time_ms.unwrap_or(s.received_ms);
                out.received(t, s.received_ms);
                readings.push((r, t));
            }
        }
        if !out.store(readings, &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_hold_the_samples_between_publishes() {
        assert_eq!(queue_size(Some(7), Some(10.0), 1000), 7);
        assert_eq!(queue_size(None, Some(100.0), 1000), 11);
        assert_eq!(queue_size(None, Some(2000.0), 1000), 2);
        assert_eq!(queue_size(None, Some(1000.0), 1000), 2);
        assert_eq!(queue_size(None, Some(0.0), 1000), 16);
        assert_eq!(queue_size(None, None, 1000), 2);
    }
}
