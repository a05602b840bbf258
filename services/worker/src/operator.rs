//! What the worker runs: operators over co-partitioned input topics.
//!
//! An [`Operator`] names its input topics (all partitioned by the same key,
//! so partition `p` of each belongs together), makes and restores the
//! state of one partition number, and turns the states it owns into its
//! query tables. The [`crate::Runner`] does the rest: reading, offsets,
//! dead letters, late events, publishing and checkpoints.

use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::config::UnitsConfig;
use marktwin_core::topics::id;
use marktwin_state::daily_sales::{self, DailySales};
use marktwin_state::line_twin::{self, TwinParams};
use marktwin_state::{Applied, LineTwin, PosState, SnapshotTable};

use crate::error::Result;

/// The state of one partition number of an operator's inputs.
pub trait PartitionState: Send + 'static {
    /// Decodes and applies one record of input `input`.
    fn apply(&mut self, input: usize, value: &[u8]) -> Applied;
    /// The state as checkpoint tables.
    fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>>;
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
    /// The query tables this operator publishes.
    fn tables(&self) -> Vec<Arc<SnapshotTable>>;
    /// Publishes the states to the tables.
    fn publish<'a>(&self, states: impl Iterator<Item = &'a Self::State>) -> Result<()>;
}

/// POS lines into daily sales.
pub struct PosOperator {
    units: UnitsConfig,
    utc_offset_minutes: i32,
    dedup_window: usize,
    table: Arc<SnapshotTable>,
}

impl PosOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        PosOperator {
            units: cfg.units.clone(),
            utc_offset_minutes: cfg.worker.utc_offset_minutes,
            dedup_window: cfg.worker.dedup_window,
            table: Arc::new(SnapshotTable::new(daily_sales::TABLE, DailySales::schema())),
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
    fn tables(&self) -> Vec<Arc<SnapshotTable>> {
        vec![self.table.clone()]
    }
    fn publish<'a>(&self, states: impl Iterator<Item = &'a PosState>) -> Result<()> {
        let mut batches = Vec::new();
        for s in states {
            batches.extend(s.sales().to_batches()?);
        }
        self.table.publish(batches);
        Ok(())
    }
}

/// Production records, plans and capacities into the line twin.
pub struct TwinOperator {
    params: Arc<TwinParams>,
    tables: Vec<Arc<SnapshotTable>>,
}

impl TwinOperator {
    /// The operator for `cfg`.
    pub fn new(cfg: &Config) -> Self {
        let tables = LineTwin::TABLES
            .iter()
            .zip(LineTwin::schemas())
            .map(|(name, schema)| Arc::new(SnapshotTable::new(name, schema)))
            .collect();
        TwinOperator {
            params: Arc::new(TwinParams::from_config(cfg)),
            tables,
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
    fn tables(&self) -> Vec<Arc<SnapshotTable>> {
        self.tables.clone()
    }
    fn publish<'a>(&self, states: impl Iterator<Item = &'a LineTwin>) -> Result<()> {
        let mut per_table: [Vec<RecordBatch>; 4] = Default::default();
        for s in states {
            for (i, b) in s.to_batches()?.into_iter().enumerate() {
                per_table[i].push(b);
            }
        }
        for (table, batches) in self.tables.iter().zip(per_table) {
            // One batch per table: partitions hold few rows each.
            let one = concat_batches(table.schema_ref(), &batches).map_err(|source| {
                marktwin_state::Error::Build {
                    table: table.name(),
                    source,
                }
            })?;
            table.publish(vec![one]);
        }
        Ok(())
    }
}
