//! A table whose whole content is replaced by publishing a snapshot.

use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

/// A `TableProvider` over an immutable snapshot that the owner replaces
/// whole with [`SnapshotTable::publish`].
///
/// # Contract
///
/// - Every batch published has exactly the table's schema.
/// - A scan sees one snapshot from start to end, never a mix.
/// - `publish` never waits for queries: readers hold an `Arc` to the old
///   snapshot, which is freed when the last of them finishes.
pub struct SnapshotTable {
    name: &'static str,
    schema: SchemaRef,
    current: RwLock<Arc<Vec<RecordBatch>>>,
}

impl fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("name", &self.name)
            .field("rows", &self.rows())
            .finish()
    }
}

impl SnapshotTable {
    /// An empty table named `name` with `schema`.
    pub fn new(name: &'static str, schema: SchemaRef) -> Self {
        SnapshotTable {
            name,
            schema,
            current: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The table's schema.
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    /// Replaces the content.
    pub fn publish(&self, batches: Vec<RecordBatch>) {
        debug_assert!(
            batches.iter().all(|b| b.schema() == self.schema),
            "batch schema differs from table `{}`",
            self.name
        );
        let next = Arc::new(batches);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Vec<RecordBatch>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rows in the current snapshot.
    pub fn rows(&self) -> usize {
        self.snapshot().iter().map(RecordBatch::num_rows).sum()
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snap = self.snapshot();
        let exec = MemorySourceConfig::try_new_exec(
            &[snap.as_ref().clone()],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
