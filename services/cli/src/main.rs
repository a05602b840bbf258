//! `marktwin`: one binary, one subcommand per service.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use marktwin::app::{self, Parts};
use marktwin_core::Config;
use tracing_subscriber::EnvFilter;

/// marktwin: a live digital twin of making and selling.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; built-in defaults and MARKTWIN__SECTION__KEY
    /// environment variables apply around it.
    #[arg(long, short, global = true, env = "MARKTWIN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on one machine: embedded broker (when no brokers
    /// are configured), simulators, edge, worker, board API.
    Up,
    /// Edge connectors only (needs kafka.brokers).
    Edge,
    /// The stream worker with its SQL API (needs kafka.brokers).
    Worker,
    /// The source simulators only.
    Sim,
    /// Print the resolved configuration as TOML and exit.
    Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // async-opcua warns on every start that its config file lists no
    // endpoints; ours come from marktwin's config.
    let default_filter = "info,rdkafka=warn,opcua_client::config=error";
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MARKTWIN_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    let (parts, listen) = match cli.command {
        Command::Up => (Parts::ALL, cfg.board.listen.clone()),
        Command::Edge => (
            Parts {
                embedded_broker: false,
                simulator: false,
                edge: true,
                worker: false,
            },
            cfg.edge.listen.clone(),
        ),
        Command::Worker => (
            Parts {
                embedded_broker: false,
                simulator: false,
                edge: false,
                worker: true,
            },
            cfg.worker.listen.clone(),
        ),
        Command::Sim => (
            Parts {
                embedded_broker: false,
                simulator: true,
                edge: false,
                worker: false,
            },
            "127.0.0.1:0".to_owned(),
        ),
        Command::Config => {
            print!("{}", toml_of(&cfg)?);
            return Ok(());
        }
    };
    let running = app::start(cfg.clone(), parts, &listen)
        .await
        .context("starting marktwin")?;
    let http = running.http_addr;
    println!("marktwin is running.");
    println!(
        "  health     http://{http}/healthz   readiness http://{http}/readyz   metrics http://{http}/metrics"
    );
    if running.tables.is_some() {
        println!(
            "  SQL        curl 'http://{http}/api/sql?q=SELECT%20*%20FROM%20pos_daily_sales%20ORDER%20BY%20amount%20DESC%20LIMIT%2010'"
        );
        println!("  tables     http://{http}/api/tables");
    }
    if let Some(s) = running.simulator_addr {
        println!(
            "  simulators http://{s}/pos/transactions?limit=5  /crm/retailers?top=5  /erp/allocation-orders?pageSize=5  /scm/inventory?limit=5  /wms/stock?limit=5"
        );
    }
    if let Some(b) = running.broker() {
        println!(
            "  broker     {} (embedded Tansu, log {})",
            b.bootstrap(),
            b.log().display()
        );
    } else if !running.bootstrap.is_empty() {
        println!("  broker     {}", running.bootstrap);
    }
    println!("  data       {}", cfg.data_dir.display());
    println!("Stop with Ctrl-C.");
    marktwin_board::shutdown_signal().await;
    println!("Stopping.");
    running.shutdown().await;
    Ok(())
}

fn toml_of(cfg: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(cfg)?)
}
