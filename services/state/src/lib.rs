//! marktwin-state: keyed state kept by the worker, served to SQL as
//! immutable snapshots.
//!
//! DataFusion's `MemTable` is append-only and plain aggregates refuse
//! unbounded inputs, so the worker keeps its state in its own structures
//! (hash maps of accumulators, such as [`DailySales`]) and, on a short tick,
//! publishes an immutable snapshot of it to a [`SnapshotTable`]. Queries scan
//! whichever snapshot was current when they started; the worker never waits
//! for a query and a query never sees a half-applied batch. The same snapshot,
//! with the input offsets it reflects, is what a checkpoint writes.
//!
//! Main types:
//! - [`SnapshotTable`]: a `TableProvider` whose content is replaced whole;
//! - [`DailySales`]: POS lines aggregated per day, store and SKU;
//! - [`PosState`]: daily sales plus per-partition offsets and a replay
//!   window, so each input record is applied exactly once;
//! - [`LineTwin`], [`Inventory`]: the production and inventory twins;
//! - [`Interner`]: maps repeated strings (store, SKU codes) to small ids so
//!   the hot path hashes integers.
//!
//! This crate depends on DataFusion but not on Kafka, HTTP or OPC UA, so its
//! tests and benches build quickly.

pub mod assortment;
pub mod bgnbd;
pub mod checkpoint;
pub mod consumer_profile;
pub mod consumer_state;
pub mod daily_sales;
pub mod error;
pub mod gamma_gamma;
pub mod grading;
pub mod intern;
pub mod inventory;
pub mod line_twin;
pub mod pos_state;
pub mod recommend;
pub mod record;
pub mod retailer_profile;
pub mod retailer_state;
pub mod retention;
pub mod rfm;
pub mod sku_groups;
pub mod snapshot;
pub mod window;

pub use daily_sales::DailySales;
pub use error::{Error, Result};
pub use intern::Interner;
pub use inventory::Inventory;
pub use line_twin::LineTwin;
pub use pos_state::PosState;
pub use record::{Applied, RecentIds, Rejected};
pub use snapshot::SnapshotTable;
