//! Creating the declared topics.

use std::time::Duration;

use marktwin_core::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use crate::error::{Error, Result};

/// Creates every declared topic that does not exist yet, with its partition
/// count and cleanup policy. Existing topics are left as they are.
pub async fn ensure_topics(cfg: &Config, bootstrap: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = crate::client_config(cfg, bootstrap).create()?;
    let specs = cfg.all_topics();
    let names: Vec<String> = specs.iter().map(|t| cfg.topic_name(t.id)).collect();
    let retention: Vec<String> = specs.iter().map(|t| t.retention_ms.to_string()).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&names)
        .zip(&retention)
        .map(|((t, name), ret)| {
            NewTopic::new(
                name,
                t.partitions,
                TopicReplication::Fixed(cfg.kafka.replication_factor),
            )
            .set("cleanup.policy", t.cleanup.as_str())
            .set("retention.ms", ret)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new.iter(), &opts).await?;
    let mut created = 0;
    for r in results {
        match r {
            Ok(_) => created += 1,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    info!(created, declared = names.len(), "Topics ensured.");
    Ok(())
}
