//! Assembling a marktwin process from its parts.
//!
//! [`start`] brings up the parts a subcommand asks for, in order: the broker
//! (embedded Tansu when `kafka.brokers` is empty and the broker is wanted),
//! topics, the simulator, the edge poller, the worker, and the HTTP listener
//! with health, readiness, metrics and SQL. [`Running::shutdown`] stops them
//! in reverse order. `marktwin up` and the integration tests share this code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use marktwin_board::{BoardState, router};
use marktwin_core::Config;
use marktwin_core::backoff::Backoff;
use marktwin_core::health::Readiness;
use marktwin_edge::EdgeMetrics;
use marktwin_edge::folder::FolderSource;
use marktwin_edge::fusion::Fusion;
use marktwin_edge::http::HttpPoller;
use marktwin_edge::modbus::poller::ModbusPoller;
use marktwin_edge::modbus::sim::{self as modbus_sim, PlantSim};
use marktwin_edge::opcua::OpcuaSource;
use marktwin_edge::opcua::sim::PlantOpcua;
use marktwin_edge::pseudonym::Pseudonymiser;
use marktwin_edge::records::Outputs;
use marktwin_edge::sim;
use marktwin_edge::sink::{MakeProducer, Sink};
use marktwin_edge::spool::{Spool, SpoolConfig};
use marktwin_kafka::{DeadLetterSink, EmbeddedBroker, ensure_topics, producer};
use marktwin_state::SnapshotTable;
use marktwin_state::checkpoint::CheckpointStore;
use marktwin_worker::view::ViewMetrics;
use marktwin_worker::{
    ConsumersOperator, Grader, InventoryOperator, Operator, PosOperator, ProfilesOperator, Runner,
    Shared, TableDef, TwinOperator, View, WorkerMetrics,
};
use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// What can stop a process from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Config is inconsistent with the parts asked for.
    #[error("{0}")]
    Config(String),
    /// Broker, topics or clients.
    #[error(transparent)]
    Kafka(#[from] marktwin_kafka::Error),
    /// Edge setup.
    #[error(transparent)]
    Edge(#[from] marktwin_edge::Error),
    /// Worker setup.
    #[error(transparent)]
    Worker(#[from] marktwin_worker::Error),
    /// Board setup.
    #[error(transparent)]
    Board(#[from] marktwin_board::Error),
    /// Metric registration.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Local files.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The embedded broker, when no brokers are configured.
    pub embedded_broker: bool,
    /// The source simulators.
    pub simulator: bool,
    /// The edge pollers.
    pub edge: bool,
    /// The stream worker.
    pub worker: bool,
}

impl Parts {
    /// Everything: `marktwin up`.
    pub const ALL: Parts = Parts {
        embedded_broker: true,
        simulator: true,
        edge: true,
        worker: true,
    };
}

/// A started process.
pub struct Running {
    /// Where the HTTP listener (health, metrics, SQL) is.
    pub http_addr: SocketAddr,
    /// Where the simulator listens, if it runs.
    pub simulator_addr: Option<SocketAddr>,
    /// The bootstrap servers in use.
    pub bootstrap: String,
    /// The worker's query tables, if the worker runs.
    pub tables: Option<Vec<Arc<SnapshotTable>>>,
    /// Readiness of the parts.
    pub readiness: Readiness,
    broker: Option<EmbeddedBroker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    worker_stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// `addr` checked free by binding it; port 0 becomes a free port. For
/// servers that bind by themselves (there is a short race until they do).
fn free_addr(addr: &str) -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    Ok(listener.local_addr()?)
}

/// Starts `parts` with `cfg`; the HTTP listener binds `http_listen`.
pub async fn start(mut cfg: Config, parts: Parts, http_listen: &str) -> Result<Running, Error> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    // Every process (edge and workers alike) must route stock the same way.
    sim::inventory_defaults(&mut cfg);
    let readiness = Readiness::default();
    let registry = Registry::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();

    let needs_kafka = parts.edge || parts.worker;
    let mut broker = None;
    let bootstrap = if !needs_kafka {
        String::new()
    } else if cfg.embedded_broker() {
        if !parts.embedded_broker {
            return Err(Error::Config(
                "kafka.brokers is empty: set it (MARKTWIN__KAFKA__BROKERS=host:port); only `marktwin up` starts the embedded broker".into(),
            ));
        }
        let b = EmbeddedBroker::start(&cfg).await?;
        let addr = b.bootstrap();
        broker = Some(b);
        addr
    } else {
        cfg.kafka.brokers.clone()
    };

    if needs_kafka {
        if parts.worker {
            // The worker reads the topics: they must exist. A broker that
            // was just started may still be electing itself.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            create_topics(
                cfg.clone(),
                bootstrap.clone(),
                Some(deadline),
                shutdown_rx.clone(),
            )
            .await?;
        } else {
            // An edge starts while the broker is away (a plant restarts on
            // its own schedule): its records go to the disk spool, and the
            // topics are created whenever the broker answers.
            tasks.push(logged(
                "topics",
                create_topics(cfg.clone(), bootstrap.clone(), None, shutdown_rx.clone()),
            ));
        }
        tasks.push((
            "broker-check",
            tokio::spawn(watch_broker(
                cfg.clone(),
                bootstrap.clone(),
                readiness.clone(),
                shutdown_rx.clone(),
            )),
        ));
    }

    let mut simulator_addr = None;
    if parts.simulator && cfg.simulator.enabled {
        let listener = bind(&cfg.simulator.listen).await?;
        let addr = listener.local_addr()?;
        // The edge polls the address actually bound (port 0 picks one).
        cfg.simulator.listen = addr.to_string();
        let start_ms = sim::start_ms(&cfg)?;
        let app = sim::router(Arc::new(sim::Api::new(&cfg, start_ms)));
        if cfg.edge.http.is_empty() && cfg.simulator.api_sources {
            cfg.edge.http = sim::sources(&addr.to_string());
            if cfg.edge.fusion.is_empty() {
                cfg.edge.fusion = sim::fusion();
            }
        }
        tasks.push(("simulator", serve(listener, app, shutdown_rx.clone())));
        info!(%addr, start_ms, "Simulator listening.");
        simulator_addr = Some(addr);

        let listener = bind(&cfg.simulator.modbus_listen).await?;
        let maddr = listener.local_addr()?;
        let plant = PlantSim::new(start_ms, cfg.simulator.lines);
        if cfg.edge.modbus.devices.is_empty() {
            cfg.edge.modbus.devices = vec![plant.device("plant-sim", &maddr.to_string())];
        }
        tasks.push((
            "modbus-simulator",
            tokio::spawn(modbus_sim::serve(listener, plant, shutdown_rx.clone())),
        ));
        info!(addr = %maddr, lines = cfg.simulator.lines, "Modbus plant simulator listening.");

        // async-opcua binds the port itself: resolve port 0 to a free one
        // first, so the edge knows where to connect.
        let oaddr = free_addr(&cfg.simulator.opcua_listen)?;
        let plant = PlantOpcua {
            lines: cfg.simulator.lines,
            bench_points: 0,
            tick_ms: 1_000,
            seed: cfg.simulator.seed,
            pki_dir: cfg.data_dir.join("pki").join("opcua-sim"),
            max_items_per_subscription: 0,
        };
        if cfg.edge.opcua.servers.is_empty() {
            cfg.edge.opcua.servers =
                vec![plant.server_config("plant-sim", &format!("opc.tcp://{oaddr}/"))];
        }
        let host = oaddr.ip().to_string();
        let rx = shutdown_rx.clone();
        tasks.push(logged("opcua-simulator", async move {
            plant.serve(&host, oaddr.port(), rx).await
        }));
        info!(addr = %oaddr, lines = cfg.simulator.lines, "OPC UA plant simulator listening.");
    }

    let producer = if needs_kafka {
        Some(producer(&cfg, &bootstrap)?)
    } else {
        None
    };
    let dead_letters = match &producer {
        Some(p) => Some(DeadLetterSink::new(&cfg, p.clone(), &registry)?),
        None => None,
    };

    // The edge's pollers share one sink: straight to the broker, or into the
    // disk spool while the broker is away; one task drains the spool.
    let edge = match (&producer, parts.edge) {
        (Some(_), true) => {
            let dir = cfg.data_dir.join("spool").join("edge");
            let spool = Spool::open(&dir, SpoolConfig::from_config(&cfg.edge.spool))
                .map_err(|e| Error::Config(e.to_string()))?;
            let make: MakeProducer = {
                let (cfg, bootstrap) = (cfg.clone(), bootstrap.clone());
                Arc::new(move || marktwin_kafka::producer(&cfg, &bootstrap).ok())
            };
            let sink = Sink::new(
                make,
                spool,
                Duration::from_millis(cfg.edge.spool.direct_timeout_ms),
                &registry,
            )?
            .with_fusion(Fusion::new(&cfg.edge.fusion, &cfg.units));
            tasks.push((
                "edge-spool",
                tokio::spawn(sink.clone().drain(shutdown_rx.clone())),
            ));
            Some((sink, EdgeMetrics::register(&registry)?))
        }
        _ => None,
    };
    if let Some((sink, m)) = &edge {
        for dev in cfg.edge.modbus.devices.clone() {
            let poller = ModbusPoller::new(&cfg, dev, sink.clone(), m.clone(), readiness.clone());
            tasks.push(logged("edge-modbus", poller.run(shutdown_rx.clone())));
        }
        for srv in cfg.edge.opcua.servers.clone() {
            let source = OpcuaSource::new(&cfg, srv, sink.clone(), m.clone(), readiness.clone());
            tasks.push(logged("edge-opcua", source.run(shutdown_rx.clone())));
        }
    }

    if let (Some((sink, m)), Some(d)) = (&edge, &dead_letters) {
        let outputs = Outputs {
            sink: sink.clone(),
            dead_letters: d.clone(),
            metrics: m.clone(),
            readiness: readiness.clone(),
            pseudo: Arc::new(Pseudonymiser::from_config(&cfg)?),
        };
        for src in cfg.edge.http.iter().filter(|h| h.enabled) {
            let poller = HttpPoller::new(&cfg, src.clone(), &outputs)?;
            tasks.push(logged("edge-http", poller.run(shutdown_rx.clone())));
        }
        for src in cfg.edge.drop_folders.iter().filter(|f| f.enabled) {
            let folder = FolderSource::new(&cfg, src.clone(), &outputs)?;
            tasks.push(logged("edge-folder", folder.run(shutdown_rx.clone())));
        }
    }

    let worker_stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut tables = None;
    if parts.worker {
        let (Some(d), Some(p)) = (dead_letters.clone(), producer.clone()) else {
            unreachable!("worker implies kafka");
        };
        let shared = Shared {
            metrics: WorkerMetrics::register(&registry)?,
            dead_letters: d,
            late: DeadLetterSink::late(&cfg, p.clone(), &registry)?,
            // Its own producer, not idempotent: see `output_producer`.
            producer: marktwin_kafka::output_producer(&cfg, &bootstrap)?,
            readiness: readiness.clone(),
            store: CheckpointStore::open(&cfg.worker.checkpoint.url, &cfg.data_dir)
                .map_err(|e| Error::Config(format!("worker.checkpoint.url: {e}")))?,
        };
        let twin = TwinOperator::new(&cfg);
        let inventory = InventoryOperator::new(&cfg);
        let profiles = ProfilesOperator::new(&cfg);
        let consumers = ConsumersOperator::new(&cfg);
        // The twins' and profiles' tables come back through their topics,
        // over all workers: one view per output topic.
        let mut by_topic: BTreeMap<&'static str, Vec<TableDef>> = BTreeMap::new();
        for def in twin
            .tables()
            .into_iter()
            .chain(inventory.tables())
            .chain(profiles.tables())
            .chain(consumers.tables())
            .chain([Grader::table()])
        {
            if let Some(topic) = def.topic {
                by_topic.entry(topic).or_default().push(def);
            }
        }
        let view_metrics = ViewMetrics::register(&registry)?;
        let views: Vec<View> = by_topic
            .into_iter()
            .map(|(topic, defs)| {
                View::new(
                    &cfg,
                    &bootstrap,
                    topic,
                    defs,
                    readiness.clone(),
                    view_metrics.clone(),
                )
            })
            .collect();
        let pos = Runner::new(&cfg, &bootstrap, PosOperator::new(&cfg), shared.clone());
        let mut all = pos.tables();
        for v in &views {
            all.extend(v.tables());
        }
        let profiles = Runner::new(&cfg, &bootstrap, profiles, shared.clone());
        let grader = Grader::new(
            &cfg,
            &all,
            shared.producer.clone(),
            profiles.leader(),
            readiness.clone(),
            shared.metrics.clone(),
        )?;
        tables = Some(all);
        let (stop, rt) = (worker_stop.clone(), tokio::runtime::Handle::current());
        workers.push(tokio::task::spawn_blocking(move || grader.run(stop, rt)));
        workers.push(spawn_runner(pos, &worker_stop));
        workers.push(spawn_runner(
            Runner::new(&cfg, &bootstrap, twin, shared.clone()),
            &worker_stop,
        ));
        workers.push(spawn_runner(
            Runner::new(&cfg, &bootstrap, inventory, shared.clone()),
            &worker_stop,
        ));
        workers.push(spawn_runner(profiles, &worker_stop));
        workers.push(spawn_runner(
            Runner::new(&cfg, &bootstrap, consumers, shared.clone()),
            &worker_stop,
        ));
        for view in views {
            let stop = worker_stop.clone();
            workers.push(tokio::task::spawn_blocking(move || {
                if let Err(e) = view.run(stop) {
                    error!(error = %e, "The view stopped with an error.");
                }
            }));
        }
    }

    let listener = bind(http_listen).await?;
    let http_addr = listener.local_addr()?;
    let table_list = tables.clone().unwrap_or_default();
    let app = router(BoardState::new(
        cfg.board.clone(),
        table_list,
        registry,
        readiness.clone(),
    )?);
    tasks.push(("http", serve(listener, app, shutdown_rx.clone())));
    info!(%http_addr, "HTTP listening.");

    Ok(Running {
        http_addr,
        simulator_addr,
        bootstrap,
        tables,
        readiness,
        broker,
        shutdown,
        tasks,
        worker_stop,
        workers,
    })
}

/// Runs `runner` on a blocking thread until `stop` is set.
fn spawn_runner<O: Operator>(runner: Runner<O>, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let stop = stop.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = runner.run(stop, rt) {
            error!(error = %e, "Worker stopped with an error.");
        }
    })
}

/// Spawns a part's task; an error that ends it is logged with the part's
/// name.
fn logged<E: std::fmt::Display>(
    name: &'static str,
    task: impl Future<Output = Result<(), E>> + Send + 'static,
) -> (&'static str, JoinHandle<()>) {
    let handle = tokio::spawn(async move {
        if let Err(e) = task.await {
            error!(part = name, error = %e, "Part stopped with an error.");
        }
    });
    (name, handle)
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open
/// requests finish.
fn serve(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            error!(error = %e, "HTTP server failed.");
        }
    })
}

/// Creates missing topics, retrying with backoff until `deadline`, or for
/// ever when there is none. Returns early (Ok) when `stop` turns true.
async fn create_topics(
    cfg: Config,
    bootstrap: String,
    deadline: Option<tokio::time::Instant>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let cap = if deadline.is_some() { 5 } else { 30 };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(cap));
    loop {
        let ensured = tokio::select! {
            r = ensure_topics(&cfg, &bootstrap) => r,
            _ = stop.wait_for(|v| *v) => return Ok(()),
        };
        let e = match ensured {
            Ok(()) => return Ok(()),
            Err(e) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                return Err(e.into());
            }
            Err(e) => e,
        };
        let wait = backoff.next_delay();
        warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "Creating topics failed; retrying (an edge spools meanwhile).");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|v| *v) => return Ok(()),
        }
    }
}

/// Keeps the `broker` readiness check current with a metadata request every
/// five seconds.
async fn watch_broker(
    cfg: Config,
    bootstrap: String,
    readiness: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = marktwin_kafka::client_config(&cfg, &bootstrap);
    let consumer: Option<Arc<BaseConsumer>> = client.create().ok().map(Arc::new);
    while !*shutdown.borrow() {
        let ok = match consumer.clone() {
            Some(c) => tokio::task::spawn_blocking(move || {
                c.fetch_metadata(None, Duration::from_secs(3))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
            None => Err("cannot create a client".into()),
        };
        match ok {
            Ok(()) => readiness.set("broker", true, format!("{bootstrap} answers")),
            Err(e) => readiness.set("broker", false, format!("{bootstrap}: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            r = shutdown.changed() => if r.is_err() { break },
        }
    }
}

/// A `Running` dropped without [`Running::shutdown`] (a panic in a test, an
/// early return) still stops its tasks and the worker thread, so that the
/// runtime can end; the broker child is killed by its own drop.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.worker_stop.store(true, Ordering::Relaxed);
    }
}

impl Running {
    /// The embedded broker, if this process runs one.
    pub fn broker(&self) -> Option<&EmbeddedBroker> {
        self.broker.as_ref()
    }

    /// Stops every part, the broker last.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.worker_stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.await;
        }
        for (name, t) in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                warn!(task = name, "Task did not stop within 10 s; aborted.");
                abort.abort();
            }
        }
        if let Some(b) = self.broker.take() {
            b.stop().await;
        }
    }
}
