//! What the worker runs: operators over co-partitioned input topics.
//!
//! An [`Operator`] names its input topics (all partitioned by the same key,
//! so partition `p` of each belongs together), makes and restores the
//! state of one partition number, and names its query tables with their
//! key columns; each partition's state renders its rows of them. The
//! [`crate::Runner`] does the rest: reading, offsets, dead letters, late
//! events, publishing (to tables in this process or as changes to a
//! compacted topic) and checkpoints.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::config::UnitsConfig;
use marktwin_core::topics::id;
use marktwin_state::consumer_state::{self, ConsumerParams, ConsumerState};
use marktwin_state::daily_sales::{self, DailySales};
use marktwin_state::inventory::{self, Inventory, InventoryParams};
use marktwin_state::line_twin::{self, TwinParams};
use marktwin_state::retailer_state::{self, RetailerParams, RetailerState};
use marktwin_state::{Applied, LineTwin, PosState};

use crate::changes::TableDef;
use crate::error::Result;

/// The state of one partition number of an operator's inputs.
pub trait PartitionState: Send + 'static {
    /// Decodes and applies one record of input `input`.
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied;
    /// The state as checkpoint tables.
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>>;
    /// This partition's rows of the operator's query tables, in the order
    /// of [`Operator::tables`].
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>>;
    /// Records applied since the state began.
    fn applied(&self) -> u64;
    /// Rows held, for the state-size metric.
    fn rows(&self) -> usize;
    /// Forgets what its retention no longer keeps.
    fn evict(&mut self) {}
    /// The event-time watermark, for operators that keep one.
    fn watermark_ms(&self) -> Option<i64> {
        None
    }
}

/// A stream operator: inputs, state per partition, query tables.
pub trait Operator: Send + 'static {
    /// The state of one partition.
    type State: PartitionState;
    /// Name in logs, metrics and the checkpoint store.
    fn name(&self) -> &'static str;
    /// Input topic ids, co-partitioned.
    fn inputs(&self) -> &'static [&'static str];
    /// Empty state.
    fn empty(&self) -> Self::State;
    /// State from checkpoint tables.
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<Self::State>;
    /// The query tables this operator keeps, and where each goes.
    fn tables(&self) -> Vec<TableDef>;
    /// How often its tables are published once caught up, if not every
    /// `worker.publish_interval_ms` (rendering them is costly, say).
    fn publish_interval_ms(&self) -> Option<u64> {
        None
    }
}

/// The table definitions of a state with tables `names`, `schemas` and
/// `keys` (in one order), all published to topic id `topic`.
fn defs(
    names: &[&'static str],
    schemas: impl IntoIterator<Item = datafusion::arrow::datatypes::SchemaRef>,
    keys: &[&'static [&'static str]],
    topic: impl Fn(&str) -> &'static str,
) -> Vec<TableDef> {
    names
        .iter()
        .zip(schemas)
        .zip(keys)
        .map(|((name, schema), key)| TableDef {
            name,
            schema,
            key,
            topic: Some(topic(name)),
        })
        .collect()
}

/// POS lines into daily sales.
pub struct PosOperator {
    units: UnitsConfig,
    utc_offset_minutes: i32,
    dedup_window: usize,
}

impl PosOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        PosOperator {
            units: cfg.units.clone(),
            utc_offset_minutes: cfg.worker.utc_offset_minutes,
            dedup_window: cfg.worker.dedup_window,
        }
    }
}

impl PartitionState for PosState {
    fn apply(&mut self, _input: usize, value: &[u8]) -> Applied {
        PosState::apply(self, value)
    }
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(PosState::save(self)?)
    }
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>> {
        Ok(vec![self.sales().to_batches()?])
    }
    fn applied(&self) -> u64 {
        PosState::applied(self)
    }
    fn rows(&self) -> usize {
        self.sales().len()
    }
}

impl Operator for PosOperator {
    type State = PosState;
    fn name(&self) -> &'static str {
        "pos"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &[id::POS]
    }
    fn empty(&self) -> PosState {
        PosState::new(
            self.units.clone(),
            self.utc_offset_minutes,
            self.dedup_window,
        )
    }
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<PosState> {
        Ok(PosState::restore(
            self.units.clone(),
            self.utc_offset_minutes,
            self.dedup_window,
            tables,
        )?)
    }
    fn tables(&self) -> Vec<TableDef> {
        vec![TableDef {
            name: daily_sales::TABLE,
            schema: DailySales::schema(),
            key: daily_sales::KEY,
            topic: None,
        }]
    }
}

/// Production records, plans and capacities into the line twin.
pub struct TwinOperator {
    params: Arc<TwinParams>,
}

impl TwinOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        TwinOperator {
            params: Arc::new(TwinParams::from_config(cfg)),
        }
    }
}

impl PartitionState for LineTwin {
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        LineTwin::apply(self, input, value)
    }
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(LineTwin::save(self)?)
    }
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>> {
        Ok(self.to_batches()?.into_iter().map(|b| vec![b]).collect())
    }
    fn applied(&self) -> u64 {
        LineTwin::applied(self)
    }
    fn rows(&self) -> usize {
        LineTwin::rows(self)
    }
    fn evict(&mut self) {
        LineTwin::evict(self)
    }
    fn watermark_ms(&self) -> Option<i64> {
        LineTwin::watermark_ms(self)
    }
}

impl Operator for TwinOperator {
    type State = LineTwin;
    fn name(&self) -> &'static str {
        "twin"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &line_twin::INPUTS
    }
    fn empty(&self) -> LineTwin {
        LineTwin::new(self.params.clone())
    }
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<LineTwin> {
        Ok(LineTwin::restore(self.params.clone(), tables)?)
    }
    fn tables(&self) -> Vec<TableDef> {
        defs(
            &LineTwin::TABLES,
            LineTwin::schemas(),
            &LineTwin::KEYS,
            |_| id::TWIN,
        )
    }
}

/// Inventory counts, orders and production (the `stock` topic) into stock
/// on hand, stock cover and cover alerts.
pub struct InventoryOperator {
    params: Arc<InventoryParams>,
}

impl InventoryOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        InventoryOperator {
            params: Arc::new(InventoryParams::from_config(cfg)),
        }
    }
}

impl PartitionState for Inventory {
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        Inventory::apply(self, input, value)
    }
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(Inventory::save(self)?)
    }
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>> {
        Ok(self.to_batches()?.into_iter().map(|b| vec![b]).collect())
    }
    fn applied(&self) -> u64 {
        Inventory::applied(self)
    }
    fn rows(&self) -> usize {
        Inventory::rows(self)
    }
    fn evict(&mut self) {
        Inventory::evict(self)
    }
}

impl Operator for InventoryOperator {
    type State = Inventory;
    fn name(&self) -> &'static str {
        "inventory"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &inventory::INPUTS
    }
    fn empty(&self) -> Inventory {
        Inventory::new(self.params.clone())
    }
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<Inventory> {
        Ok(Inventory::restore(self.params.clone(), tables)?)
    }
    fn tables(&self) -> Vec<TableDef> {
        defs(
            &Inventory::TABLES,
            Inventory::schemas(),
            &Inventory::KEYS,
            |name| {
                if name == inventory::ALERTS_TABLE {
                    id::ALERTS
                } else {
                    id::TWIN
                }
            },
        )
    }
}

/// Allocation orders, POS lines and retailer master records (co-partitioned
/// by retailer id) into retailer profiles, their mix and cohort retention.
pub struct ProfilesOperator {
    params: Arc<RetailerParams>,
}

impl ProfilesOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        ProfilesOperator {
            params: Arc::new(RetailerParams::from_config(cfg)),
        }
    }
}

impl PartitionState for RetailerState {
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        RetailerState::apply(self, input, value)
    }
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(RetailerState::save(self)?)
    }
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>> {
        Ok(self.to_batches()?.into_iter().map(|b| vec![b]).collect())
    }
    fn applied(&self) -> u64 {
        RetailerState::applied(self)
    }
    fn rows(&self) -> usize {
        RetailerState::rows(self)
    }
    fn evict(&mut self) {
        RetailerState::evict(self)
    }
}

impl Operator for ProfilesOperator {
    type State = RetailerState;
    fn name(&self) -> &'static str {
        "profiles"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &retailer_state::INPUTS
    }
    fn empty(&self) -> RetailerState {
        RetailerState::new(self.params.clone())
    }
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<RetailerState> {
        Ok(RetailerState::restore(self.params.clone(), tables)?)
    }
    fn tables(&self) -> Vec<TableDef> {
        defs(
            &RetailerState::TABLES,
            RetailerState::schemas(),
            &RetailerState::KEYS,
            |_| id::PROFILES,
        )
    }
}

/// POS lines that name a consumer (the `consumer_pos` topic, keyed by the
/// pseudonymised consumer) into consumer profiles and purchase intent.
pub struct ConsumersOperator {
    params: Arc<ConsumerParams>,
    publish_interval_ms: u64,
}

impl ConsumersOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        ConsumersOperator {
            params: Arc::new(ConsumerParams::from_config(cfg)),
            publish_interval_ms: cfg.profiles.consumer_publish_interval_ms,
        }
    }
}

impl PartitionState for ConsumerState {
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        ConsumerState::apply(self, input, value)
    }
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(ConsumerState::save(self)?)
    }
    fn tables(&self) -> Result<Vec<Vec<RecordBatch>>> {
        Ok(vec![vec![self.to_batch()?]])
    }
    fn applied(&self) -> u64 {
        ConsumerState::applied(self)
    }
    fn rows(&self) -> usize {
        ConsumerState::rows(self)
    }
    fn evict(&mut self) {
        ConsumerState::evict(self)
    }
}

impl Operator for ConsumersOperator {
    type State = ConsumerState;
    fn name(&self) -> &'static str {
        "consumers"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &consumer_state::INPUTS
    }
    fn empty(&self) -> ConsumerState {
        ConsumerState::new(self.params.clone())
    }
    fn restore(&self, tables: &[(String, RecordBatch)]) -> Result<ConsumerState> {
        Ok(ConsumerState::restore(self.params.clone(), tables)?)
    }
    fn tables(&self) -> Vec<TableDef> {
        vec![TableDef {
            name: consumer_state::PROFILES_TABLE,
            schema: ConsumerState::schema(),
            key: consumer_state::PROFILES_KEY,
            topic: Some(id::PROFILES),
        }]
    }
    fn publish_interval_ms(&self) -> Option<u64> {
        Some(self.publish_interval_ms)
    }
}
