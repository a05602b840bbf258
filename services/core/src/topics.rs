//! Every Kafka topic marktwin uses, declared in one place.
//!
//! [`topics`] lists them with their defaults; the `[topics.<id>]` config
//! sections may change partitions, retention and encoding per topic, and
//! [`crate::config::Config::topic`] gives the resolved declaration. Services
//! create missing topics at start-up from this list.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::EventKind;

/// How records on a topic are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON envelopes (the default).
    #[default]
    Json,
    /// Protobuf messages of `proto/marktwin/v1`.
    Protobuf,
}

/// What the broker does with old records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cleanup {
    /// Delete records older than the retention.
    Delete,
    /// Keep the latest record per key.
    Compact,
}

impl Cleanup {
    /// The broker's `cleanup.policy` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cleanup::Delete => "delete",
            Cleanup::Compact => "compact",
        }
    }
}

/// A topic's declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSpec {
    /// Stable id used in config (`[topics.<id>]`) and code.
    pub id: &'static str,
    /// Name on the broker, without the configured prefix.
    pub name: &'static str,
    /// Partition count.
    pub partitions: i32,
    /// What the record key is.
    pub key: &'static str,
    /// Delete or compact.
    pub cleanup: Cleanup,
    /// Retention in ms for `delete` topics; `-1` keeps forever.
    pub retention_ms: i64,
    /// Encoding of the values.
    pub encoding: Encoding,
    /// The event kind carried, when the topic carries source events.
    pub kind: Option<EventKind>,
}

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// Topic ids, so code never spells a topic by hand.
pub mod id {
    /// Telemetry readings from OPC UA and Modbus.
    pub const TELEMETRY: &str = "telemetry";
    /// Production records.
    pub const PRODUCTION: &str = "production";
    /// Production plans.
    pub const PRODUCTION_PLAN: &str = "production_plan";
    /// Line capacities.
    pub const LINE_CAPACITY: &str = "line_capacity";
    /// Inventory snapshots.
    pub const INVENTORY: &str = "inventory";
    /// Allocation orders.
    pub const ALLOCATION_ORDERS: &str = "allocation_orders";
    /// Retailer master data.
    pub const RETAILERS: &str = "retailers";
    /// POS transaction lines.
    pub const POS: &str = "pos";
    /// Market price observations.
    pub const PRICES: &str = "prices";
    /// Records that were rejected, with the reason.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// Events that arrived after their windows closed, with the reason.
    pub const LATE: &str = "late";
    /// Twin state changes, the latest row per table and key.
    pub const TWIN: &str = "twin";
    /// Alerts raised and cleared, the latest row per table and key.
    pub const ALERTS: &str = "alerts";
    /// Customer profiles (retailer profiles, mix, cohorts), the latest row
    /// per table and key.
    pub const PROFILES: &str = "profiles";
    /// Every record that counts or moves stock (inventory counts,
    /// allocation orders, production), written again by the edge keyed by
    /// the warehouse's stock region, so the inventory twin finds all of a
    /// region in one partition.
    pub const STOCK: &str = "stock";
    /// POS lines that name a consumer, written again by the edge keyed by
    /// the (pseudonymised) consumer id, so the consumer profiles find all
    /// of a consumer's lines in one partition.
    pub const CONSUMER_POS: &str = "consumer_pos";
}

fn source(id: &'static str, name: &'static str, key: &'static str, kind: EventKind) -> TopicSpec {
    TopicSpec {
        id,
        name,
        partitions: 3,
        key,
        cleanup: Cleanup::Delete,
        retention_ms: -1,
        encoding: Encoding::Json,
        kind: Some(kind),
    }
}

/// All topics with their defaults.
///
/// Source topics keep their history (`retention_ms = -1`) by default: the
/// worker rebuilds state by replaying them until checkpoints exist, and the
/// annual outlook needs two years of sales. Operators with checkpoints may
/// shorten it per topic.
pub fn topics() -> Vec<TopicSpec> {
    use EventKind as K;
    let dead_letter = TopicSpec {
        id: id::DEAD_LETTER,
        name: "dead-letter",
        partitions: 1,
        key: "source",
        cleanup: Cleanup::Delete,
        retention_ms: 4 * WEEK_MS,
        encoding: Encoding::Json,
        kind: None,
    };
    let twin = TopicSpec {
        id: id::TWIN,
        name: "twin",
        partitions: 3,
        key: "table/key",
        cleanup: Cleanup::Compact,
        retention_ms: -1,
        encoding: Encoding::Json,
        kind: None,
    };
    vec![
        source(id::TELEMETRY, "telemetry", "asset", K::TelemetryReading),
        source(id::PRODUCTION, "production", "line_id", K::ProductionRecord),
        source(
            id::PRODUCTION_PLAN,
            "production-plan",
            "line_id",
            K::ProductionPlan,
        ),
        source(
            id::LINE_CAPACITY,
            "line-capacity",
            "line_id",
            K::LineCapacity,
        ),
        source(
            id::INVENTORY,
            "inventory",
            "warehouse_id",
            K::InventorySnapshot,
        ),
        source(
            id::ALLOCATION_ORDERS,
            "allocation-orders",
            "to_id (retailer)",
            K::AllocationOrder,
        ),
        TopicSpec {
            cleanup: Cleanup::Compact,
            ..source(id::RETAILERS, "retailers", "retailer_id", K::Retailer)
        },
        source(id::POS, "pos", "store_code", K::PosTransaction),
        source(id::PRICES, "prices", "region", K::PriceObservation),
        dead_letter.clone(),
        TopicSpec {
            id: id::LATE,
            name: "late-events",
            ..dead_letter
        },
        TopicSpec {
            id: id::STOCK,
            name: "stock",
            key: "stock region of the warehouse",
            kind: None,
            ..source(id::STOCK, "stock", "", K::InventorySnapshot)
        },
        TopicSpec {
            id: id::CONSUMER_POS,
            name: "consumer-pos",
            key: "consumer_id (pseudonymised)",
            kind: None,
            ..source(id::CONSUMER_POS, "consumer-pos", "", K::PosTransaction)
        },
        twin.clone(),
        TopicSpec {
            id: id::ALERTS,
            name: "alerts",
            ..twin.clone()
        },
        TopicSpec {
            id: id::PROFILES,
            name: "profiles",
            ..twin
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_and_names_are_unique_and_every_kind_has_a_topic() {
        let all = topics();
        let ids: HashSet<_> = all.iter().map(|t| t.id).collect();
        let names: HashSet<_> = all.iter().map(|t| t.name).collect();
        assert_eq!(ids.len(), all.len());
        assert_eq!(names.len(), all.len());
        for k in EventKind::ALL {
            assert_eq!(all.iter().filter(|t| t.kind == Some(k)).count(), 1, "{k:?}");
        }
        assert!(all.iter().any(|t| t.id == id::DEAD_LETTER));
    }
}
