//! Every metric name marktwin exports, in one place.
//!
//! Names follow `marktwin_<subsystem>_<name>_<unit>`; counters end in
//! `_total`. Labels are bounded: `topic`, `partition`, `source`, `reason`,
//! `table`, `route`, `status` — never an id, a URL or an error text.
//! `docs/metrics.md` lists them for operators.

/// Records read by an edge source, label `source`.
pub const EDGE_RECORDS_READ_TOTAL: &str = "marktwin_edge_records_read_total";
/// Records the broker acknowledged, labels `source`, `topic`.
pub const EDGE_RECORDS_PRODUCED_TOTAL: &str = "marktwin_edge_records_produced_total";
/// Records sent to the dead-letter topic, labels `stage`, `reason`.
pub const DEAD_LETTER_RECORDS_TOTAL: &str = "marktwin_dead_letter_records_total";
/// Events sent to the late topic, labels `stage`, `reason`.
pub const LATE_RECORDS_TOTAL: &str = "marktwin_late_records_total";
/// Failed polls of an HTTP source, label `source`.
pub const EDGE_POLL_ERRORS_TOTAL: &str = "marktwin_edge_poll_errors_total";
/// Duration of one poll (request to acknowledged produce), label `source`.
pub const EDGE_POLL_DURATION_SECONDS: &str = "marktwin_edge_poll_duration_seconds";
/// Whether a source is connected (1) or not (0), label `source`.
pub const EDGE_SOURCE_UP: &str = "marktwin_edge_source_up";
/// Sessions established with a source, labels `source`, `how`
/// (`connected`, `reactivated`, `new_session`).
pub const EDGE_SOURCE_RECONNECTS_TOTAL: &str = "marktwin_edge_source_reconnects_total";
/// Time from a sample (its source timestamp, else when it was received)
/// to the broker's acknowledgement or the spool, label `source`.
pub const EDGE_SAMPLE_TO_STORED_SECONDS: &str = "marktwin_edge_sample_to_stored_seconds";
/// Age of an OPC UA sample (from its source timestamp) when the edge
/// received it, label `source`: the source's and network's share of
/// [`EDGE_SAMPLE_TO_STORED_SECONDS`].
pub const EDGE_SAMPLE_AGE_AT_READ_SECONDS: &str = "marktwin_edge_sample_age_at_read_seconds";
/// Records the edge's cleaning held back, labels `source`, `reason`
/// (`duplicate` is suppressed and not dead-lettered; every other reason is
/// also on the dead-letter topic).
pub const EDGE_RECORDS_REJECTED_TOTAL: &str = "marktwin_edge_records_rejected_total";
/// Events written by a fusion rule, label `fusion`.
pub const EDGE_FUSED_TOTAL: &str = "marktwin_edge_fused_total";
/// Files a drop folder finished, labels `source`, `outcome` (`done`,
/// `failed`).
pub const EDGE_FILES_TOTAL: &str = "marktwin_edge_files_total";
/// 1 while the edge's spool refuses records (full, or the disk failed):
/// the sources are paused until the broker takes records again.
pub const EDGE_SPOOL_REFUSING: &str = "marktwin_edge_spool_refusing";
/// Bytes in the edge's disk spool waiting for the broker.
pub const EDGE_SPOOL_BYTES: &str = "marktwin_edge_spool_bytes";

/// Records consumed by the worker, labels `topic`, `partition`.
pub const WORKER_RECORDS_IN_TOTAL: &str = "marktwin_worker_records_in_total";
/// Next offset to process per partition, labels `topic`, `partition`.
pub const WORKER_OFFSET: &str = "marktwin_worker_offset";
/// Consumer lag from our own processed offsets, clamped at zero, labels
/// `topic`, `partition`.
pub const WORKER_LAG_RECORDS: &str = "marktwin_worker_lag_records";
/// Rows per state table held by this worker's partitions, label `table`.
pub const STATE_ROWS: &str = "marktwin_state_rows";
/// Change records the view read, label `topic`.
pub const VIEW_RECORDS_IN_TOTAL: &str = "marktwin_view_records_in_total";
/// Rows per materialised table of the view (all partitions), label `table`.
pub const VIEW_ROWS: &str = "marktwin_view_rows";
/// Records of the output topic the view has yet to read, labels `topic`,
/// `partition`; clamped at 0.
pub const VIEW_LAG_RECORDS: &str = "marktwin_view_lag_records";
/// Rebuilding a view table from its rows, label `table`.
pub const VIEW_BUILD_DURATION_SECONDS: &str = "marktwin_view_build_duration_seconds";
/// Change records the view could not read, label `reason`.
pub const VIEW_REJECTED_TOTAL: &str = "marktwin_view_rejected_total";
/// Time to publish a state snapshot, label `table`.
pub const STATE_PUBLISH_DURATION_SECONDS: &str = "marktwin_state_publish_duration_seconds";
/// Time to decode and apply one batch, label `topic`.
pub const WORKER_BATCH_DURATION_SECONDS: &str = "marktwin_worker_batch_duration_seconds";
/// Records the worker sent to the output topics, labels `topic`.
pub const WORKER_RECORDS_OUT_TOTAL: &str = "marktwin_worker_records_out_total";
/// Time from a record's broker timestamp (set when the edge produced it)
/// to the end of the worker batch that applied it, label `operator`; the
/// tables show it within one more `worker.publish_interval_ms`.
pub const WORKER_PROCESSING_LATENCY_SECONDS: &str = "marktwin_worker_processing_latency_seconds";
/// Writing one checkpoint, label `operator`.
pub const WORKER_CHECKPOINT_DURATION_SECONDS: &str = "marktwin_worker_checkpoint_duration_seconds";
/// Bytes of the last checkpoint, labels `operator`, `partition`.
pub const WORKER_CHECKPOINT_BYTES: &str = "marktwin_worker_checkpoint_bytes";
/// How far the worker's event-time watermark trails the wall clock, s,
/// label `operator`; idle sources do not hold it back.
pub const WORKER_WATERMARK_LAG_SECONDS: &str = "marktwin_worker_watermark_lag_seconds";

/// HTTP requests answered by the board, labels `route`, `status`.
pub const BOARD_REQUESTS_TOTAL: &str = "marktwin_board_requests_total";
/// SQL query duration.
pub const BOARD_QUERY_DURATION_SECONDS: &str = "marktwin_board_query_duration_seconds";

/// Whether the embedded broker process is running (1) or not (0).
pub const BROKER_EMBEDDED_UP: &str = "marktwin_broker_embedded_up";
