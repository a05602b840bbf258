//! Creating the declared topics.

use std::time::Duration;

use marktwin_core::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use crate::error::{Error, Result};

/// "Keep for ever" as sent to the broker: a hundred years.
///
/// Kafka reads `retention.ms = -1` as unlimited, but Tansu 0.6 compares it
/// literally (`now - timestamp > -1`) and its maintenance task deletes every
/// record of such a topic; seen here as a topic that was empty after a
/// broker restart (tests/tests/broker_restart.rs). A hundred years means the
/// same on every broker.
pub const FOREVER_MS: i64 = 100 * 365 * 24 * 3_600_000;

/// The `retention.ms` value sent for a configured retention: negative
/// (unlimited) becomes [`FOREVER_MS`].
pub fn broker_retention_ms(configured: i64) -> i64 {
    if configured < 0 {
        FOREVER_MS
    } else {
        configured
    }
}

/// Creates every declared topic that does not exist yet, with its partition
/// count and cleanup policy. Existing topics are left as they are; when all
/// exist, nothing is asked of the broker but metadata, so topics created
/// ahead by an operator (a cluster whose ACLs deny CreateTopics) or a
/// broker without the admin API (librdkafka's mock cluster) are fine.
pub async fn ensure_topics(cfg: &Config, bootstrap: &str) -> Result<()> {
    let client = crate::client_config(cfg, bootstrap);
    let existing = tokio::task::spawn_blocking({
        let client = client.clone();
        move || existing_topics(&client)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let specs: Vec<_> = cfg
        .all_topics()
        .into_iter()
        .filter(|t| !existing.contains(&cfg.topic_name(t.id)))
        .collect();
    if specs.is_empty() {
        info!(existing = existing.len(), "Topics ensured; all exist.");
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let names: Vec<String> = specs.iter().map(|t| cfg.topic_name(t.id)).collect();
    let retention: Vec<String> = specs
        .iter()
        .map(|t| broker_retention_ms(t.retention_ms).to_string())
        .collect();
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
    info!(created, missing = names.len(), "Topics ensured.");
    Ok(())
}

/// The names of the topics the broker knows.
fn existing_topics(client: &rdkafka::ClientConfig) -> Result<std::collections::HashSet<String>> {
    let consumer: rdkafka::consumer::BaseConsumer = client.create()?;
    let md = rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(30))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_retention_is_never_sent_as_minus_one() {
        assert_eq!(broker_retention_ms(-1), FOREVER_MS);
        assert_eq!(broker_retention_ms(86_400_000), 86_400_000);
    }
}
