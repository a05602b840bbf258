//! The embedded Tansu broker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use marktwin_core::{BrokerStorage, Config};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// A Tansu broker running as a child process on a loopback port, storing to
/// SQLite under the data directory, so topics survive a restart.
///
/// Dropping it kills the process (SQLite commits are atomic, so a kill loses
/// nothing that was acknowledged).
#[derive(Debug)]
pub struct EmbeddedBroker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// Finds the Tansu binary: the configured name on `PATH`, a path, or
/// `~/.cargo/bin/<name>`.
pub fn find_tansu(binary: &str) -> Result<PathBuf> {
    let p = Path::new(binary);
    if p.components().count() > 1 {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(Error::TansuMissing {
                binary: binary.into(),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(binary))
        .find(|c| c.is_file())
        .ok_or_else(|| Error::TansuMissing {
            binary: binary.into(),
        })
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

impl EmbeddedBroker {
    /// Starts Tansu with its database at `<data_dir>/broker/tansu.db` and
    /// waits until it answers a metadata request.
    pub async fn start(cfg: &Config) -> Result<EmbeddedBroker> {
        let dir = cfg.data_dir.join("broker");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let port = match cfg.kafka.embedded_port {
            0 => free_port()?,
            p => p,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let binary = find_tansu(&cfg.kafka.tansu_binary)?;
        let log = dir.join("tansu.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| Error::Io {
                path: log.clone(),
                source,
            })?;
        let log_err = log_file.try_clone().map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let url = format!("tcp://{addr}");
        // Tansu resolves a sqlite:// path against its working directory.
        let storage = match cfg.kafka.embedded_storage {
            BrokerStorage::Sqlite => "sqlite://tansu.db",
            BrokerStorage::Memory => "memory://tansu/",
        };
        let child = Command::new(&binary)
            .current_dir(&dir)
            .arg("broker")
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Io {
                path: binary.clone(),
                source,
            })?;
        let mut broker = EmbeddedBroker { child, addr, log };
        info!(%addr, binary = %binary.display(), storage, dir = %dir.display(), "Starting embedded Tansu broker.");
        broker
            .wait_ready(
                cfg,
                Duration::from_secs(cfg.kafka.embedded_start_timeout_secs),
            )
            .await?;
        info!(%addr, "Embedded broker is ready.");
        Ok(broker)
    }

    async fn wait_ready(&mut self, cfg: &Config, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let timed_out = || Error::BrokerTimeout {
            addr: self.addr.to_string(),
            secs: timeout.as_secs(),
            log: self.log.clone(),
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                warn!(%status, log = %self.log.display(), "Embedded broker exited during start.");
                return Err(timed_out());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                let client = crate::client_config(cfg, &self.bootstrap());
                let ok = tokio::task::spawn_blocking(move || {
                    let c: BaseConsumer = match client.create() {
                        Ok(c) => c,
                        Err(_) => return false,
                    };
                    c.fetch_metadata(None, Duration::from_secs(2)).is_ok()
                })
                .await
                .unwrap_or(false);
                if ok {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The broker's process id, while it runs (benchmarks read its CPU
    /// time).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The broker's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the broker and waits for the process to end.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        info!(addr = %self.addr, "Embedded broker stopped.");
    }
}
