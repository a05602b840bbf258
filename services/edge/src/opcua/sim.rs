//! The simulated plant as an OPC UA server (async-opcua), for `marktwin up`,
//! tests and the benchmark.
//!
//! Namespace `urn:marktwin:sim:plant`; under `Objects/Plant/Line<n>` (browse
//! names in that namespace, NodeIds `s=Line<n>.<Name>`):
//!
//! | node | type | behaviour |
//! |---|---|---|
//! | `GoodCount` | UInt64 | packs made, grows with the speed while running |
//! | `RejectCount` | UInt64 | rejected packs, about 1 % |
//! | `Speed` | Double | packs/min around the line's rated speed; 0 when stopped |
//! | `State` | String | `running`, `stopped` (changeover) or `fault` |
//! | `MotorTemp` | Double | °C; **Uncertain** for the first seconds after a start (sensor warming up) and **Bad** (`BadSensorFailure`) during a fault |
//!
//! With `bench_points > 0` it also serves `Objects/Bench/P<i>` (Double,
//! `s=Bench.<i>`), every one changed on every tick: the load source for the
//! benchmark (one asyncua process tops out far below it).
//!
//! Values change every `tick_ms` and are seeded: the same seed gives the
//! same sequence. Endpoints: `None`, and `Basic256Sha256` with
//! `SignAndEncrypt`; anonymous users. Monitored items per subscription are
//! limited only if `max_items_per_subscription` says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use marktwin_core::opcua::{OpcuaNode, OpcuaServer};
use opcua::server::address_space::Variable;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, SubscriptionCache};
use opcua::types::{DataValue, DateTime, NodeId, QualifiedName, StatusCode, Variant};
use tokio::sync::watch;
use tracing::info;

/// Namespace URI of the simulated plant.
pub const NAMESPACE: &str = "urn:marktwin:sim:plant";

/// Shape of the simulated plant.
#[derive(Clone, Debug)]
pub struct PlantOpcua {
    /// Production lines.
    pub lines: u16,
    /// Extra benchmark variables changed on every tick.
    pub bench_points: usize,
    /// Time between value changes, ms (the server samples at 100 ms at best).
    pub tick_ms: u64,
    /// Seed of the value sequence.
    pub seed: u64,
    /// Where the server keeps its certificate.
    pub pki_dir: PathBuf,
    /// The server's MaxMonitoredItemsPerSubscription; 0 = no limit.
    pub max_items_per_subscription: usize,
}

/// A running simulator: stop it with [`OpcuaSim::stop`] or by dropping the
/// shutdown sender given to [`PlantOpcua::serve`].
pub struct OpcuaSim {
    handle: opcua::server::ServerHandle,
}

impl OpcuaSim {
    /// Stops the server.
    pub fn stop(&self) {
        self.handle.cancel();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        // xorshift64*: spread, not cryptographic quality.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Running,
    Stopped,
    Fault,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Fault => "fault",
        }
    }
}

struct Line {
    rated: f64,
    state: State,
    /// Ticks left in the current state.
    left: u32,
    /// Ticks since the last start.
    since_start: u32,
    good: f64,
    reject: f64,
    temp: f64,
}

fn id(ns: u16, name: &str) -> NodeId {
    NodeId::new(ns, name.to_string())
}

const LINE_NODES: [&str; 5] = ["GoodCount", "RejectCount", "Speed", "State", "MotorTemp"];

/// Browse name, tag and unit of each line node.
const LINE_TAGS: [(&str, &str, Option<&str>); 5] = [
    ("GoodCount", "good_count", Some("pack")),
    ("RejectCount", "reject_count", Some("pack")),
    ("Speed", "speed", Some("packs/min")),
    ("State", "state", None),
    ("MotorTemp", "motor_temp", Some("degC")),
];

impl PlantOpcua {
    /// The source config that reads this simulator at `endpoint`: every
    /// line node by browse path, with the namespace URI.
    pub fn server_config(&self, name: &str, endpoint: &str) -> OpcuaServer {
        let mut nodes = Vec::new();
        for l in 1..=self.lines {
            for (n, tag, unit) in LINE_TAGS {
                nodes.push(OpcuaNode {
                    name: tag.into(),
                    asset: Some(format!("line-{l}")),
                    browse_path: vec!["Plant".into(), format!("Line{l}"), n.into()],
                    eng_unit: unit.map(Into::into),
                    ..OpcuaNode::default()
                });
            }
        }
        for i in 0..self.bench_points {
            nodes.push(OpcuaNode {
                name: format!("bench.{i}"),
                asset: Some("bench".into()),
                node_id: Some(format!("s=Bench.{i}")),
                // Every change, as it happens: with the publishing
                // interval as sampling interval (-1) async-opcua's server
                // samples on its own timer, which beats against the
                // 100 ms ticks and holds values back.
                sampling_interval_ms: Some(0.0),
                ..OpcuaNode::default()
            });
        }
        OpcuaServer {
            name: name.into(),
            endpoint: endpoint.into(),
            asset: "plant".into(),
            namespace_uri: Some(NAMESPACE.into()),
            publishing_interval_ms: self.tick_ms.max(100),
            nodes,
            ..OpcuaServer::default()
        }
    }

    /// Serves the plant on `host:port` until `shutdown` turns true.
    pub async fn serve(
        self,
        host: &str,
        port: u16,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (server, handle) = self.build(host, port)?;
        let stopper = handle.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            stopper.cancel();
        });
        server.run().await
    }

    /// Starts the plant on `host:port` in a task; the returned handle stops it.
    pub fn start(self, host: &str, port: u16) -> Result<OpcuaSim, String> {
        let (server, handle) = self.build(host, port)?;
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = e, "OPC UA simulator stopped.");
            }
        });
        Ok(OpcuaSim { handle })
    }

    fn build(
        self,
        host: &str,
        port: u16,
    ) -> Result<(opcua::server::Server, opcua::server::ServerHandle), String> {
        let users = [ANONYMOUS_USER_TOKEN_ID.to_string()];
        let mut builder = ServerBuilder::new()
            .application_name("marktwin plant simulator")
            .application_uri("urn:marktwin:sim:plant-server")
            .product_uri("urn:marktwin")
            .host(host)
            .port(port)
            .pki_dir(&self.pki_dir)
            .create_sample_keypair(true)
            .trust_client_certs(true)
            .add_endpoint("none", ServerEndpoint::new_none("/", &users))
            .add_endpoint(
                "basic256sha256",
                ServerEndpoint::new_basic256sha256_sign_encrypt("/", &users),
            )
            .discovery_urls(vec!["/".to_owned()])
            .max_array_length(1_000_000)
            .max_message_size(64 * 65_535)
            .max_chunk_count(64)
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: NAMESPACE.to_owned(),
                    ..Default::default()
                },
                "plant",
            ));
        let limits = builder.limits_mut();
        limits.subscriptions.max_monitored_items_per_sub = self.max_items_per_subscription;
        limits.subscriptions.max_notifications_per_publish = 0;
        // Publish responses waiting for the client's Publish requests (0
        // would hold none, despite its documentation).
        limits.subscriptions.max_queued_notifications = 10_000;
        limits.operational.max_monitored_items_per_call = 5_000;
        let (server, handle) = builder.build()?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or("no simple node manager")?;
        let ns = handle
            .get_namespace_index(NAMESPACE)
            .ok_or("namespace not registered")?;
        self.populate(ns, &manager);
        let subscriptions = handle.subscriptions().clone();
        info!(
            host,
            port,
            lines = self.lines,
            bench_points = self.bench_points,
            "OPC UA plant simulator listening."
        );
        tokio::spawn(self.run(ns, manager, subscriptions));
        Ok((server, handle))
    }

    fn populate(&self, ns: u16, manager: &SimpleNodeManager) {
        let mut space = manager.address_space().write();
        let plant = id(ns, "Plant");
        space.add_folder(
            &plant,
            QualifiedName::new(ns, "Plant"),
            "Plant",
            &NodeId::objects_folder_id(),
        );
        for l in 1..=self.lines {
            let line = id(ns, &format!("Line{l}"));
            let name = format!("Line{l}");
            space.add_folder(
                &line,
                QualifiedName::new(ns, name.as_str()),
                name.as_str(),
                &plant,
            );
            let vars = LINE_NODES
                .iter()
                .map(|n| {
                    let v: Variant = match *n {
                        "GoodCount" | "RejectCount" => 0u64.into(),
                        "State" => "stopped".into(),
                        _ => 0.0f64.into(),
                    };
                    Variable::new(
                        &id(ns, &format!("Line{l}.{n}")),
                        QualifiedName::new(ns, *n),
                        *n,
                        v,
                    )
                })
                .collect();
            space.add_variables(vars, &line);
        }
        if self.bench_points > 0 {
            let bench = id(ns, "Bench");
            space.add_folder(
                &bench,
                QualifiedName::new(ns, "Bench"),
                "Bench",
                &NodeId::objects_folder_id(),
            );
            let vars = (0..self.bench_points)
                .map(|i| {
                    let name = format!("P{i}");
                    Variable::new(
                        &id(ns, &format!("Bench.{i}")),
                        QualifiedName::new(ns, name.as_str()),
                        name.as_str(),
                        0.0f64,
                    )
                })
                .collect();
            space.add_variables(vars, &bench);
        }
    }

    async fn run(self, ns: u16, manager: Arc<SimpleNodeManager>, subs: Arc<SubscriptionCache>) {
        let mut rng = Rng(self.seed | 1);
        let mut lines: Vec<Line> = (0..self.lines)
            .map(|i| Line {
                rated: 400.0 + 50.0 * f64::from(i % 4),
                state: State::Stopped,
                left: 5,
                since_start: 0,
                good: 0.0,
                reject: 0.0,
                temp: 35.0,
            })
            .collect();
        let line_ids: Vec<Vec<NodeId>> = (1..=self.lines)
            .map(|l| {
                LINE_NODES
                    .iter()
                    .map(|n| id(ns, &format!("Line{l}.{n}")))
                    .collect()
            })
            .collect();
        let bench_ids: Vec<NodeId> = (0..self.bench_points)
            .map(|i| id(ns, &format!("Bench.{i}")))
            .collect();
        let tick = Duration::from_millis(self.tick_ms.max(10));
        let minutes = tick.as_secs_f64() / 60.0;
        let mut ticker = tokio::time::interval(tick);
        // A late tick is skipped, not caught up in a burst: two ticks in the
        // same millisecond would give two values one timestamp.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n: u64 = 0;
        loop {
            ticker.tick().await;
            n += 1;
            let now = DateTime::now();
            let mut values: Vec<(&NodeId, DataValue)> = Vec::new();
            for (line, ids) in lines.iter_mut().zip(&line_ids) {
                step(line, &mut rng, minutes);
                let speed = if line.state == State::Running {
                    line.rated * (0.95 + 0.1 * rng.next())
                } else {
                    0.0
                };
                let temp_status = match line.state {
                    State::Fault => StatusCode::BadSensorFailure,
                    State::Running if line.since_start < 30 => StatusCode::UncertainInitialValue,
                    _ => StatusCode::Good,
                };
                let dv = |v: Variant, status: StatusCode| DataValue {
                    value: Some(v),
                    status: Some(status),
                    source_timestamp: Some(now),
                    server_timestamp: Some(now),
                    ..Default::default()
                };
                values.push((&ids[0], dv((line.good as u64).into(), StatusCode::Good)));
                values.push((&ids[1], dv((line.reject as u64).into(), StatusCode::Good)));
                values.push((&ids[2], dv(speed.into(), StatusCode::Good)));
                values.push((&ids[3], dv(line.state.as_str().into(), StatusCode::Good)));
                values.push((&ids[4], dv(line.temp.into(), temp_status)));
            }
            for (i, b) in bench_ids.iter().enumerate() {
                let v = (n * 1_000 + i as u64) as f64;
                values.push((b, DataValue::new_at(v, now)));
            }
            let _ = manager.set_values(&subs, values.into_iter().map(|(i, v)| (i, None, v)));
        }
    }
}

/// One tick of a line: state changes, counters, temperature.
fn step(line: &mut Line, rng: &mut Rng, minutes: f64) {
    if line.left == 0 {
        line.state = match line.state {
            State::Running if rng.next() < 0.3 => State::Fault,
            State::Running => State::Stopped,
            _ => State::Running,
        };
        line.since_start = 0;
        line.left = match line.state {
            State::Running => 300 + (rng.next() * 600.0) as u32,
            State::Stopped => 50 + (rng.next() * 100.0) as u32,
            State::Fault => 20 + (rng.next() * 40.0) as u32,
        };
    }
    line.left -= 1;
    line.since_start += 1;
    if line.state == State::Running {
        let made = line.rated * minutes;
        line.good += made * 0.99;
        line.reject += made * 0.01;
        line.temp += (70.0 - line.temp) * 0.01;
    } else {
        line.temp += (35.0 - line.temp) * 0.005;
    }
}
