//! Creating the table `profile-sync bootstrap` needs (idempotently): keys, the email GSI, the
//! audit TTL, and waiting until all of it is ACTIVE (writes before that fail).

use super::items::{EMAIL_GSI, EMAIL_INDEX, PK, SK, TTL};
use super::{dynamo_err, DynamoStore};
use crate::stores::StoreError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, GlobalSecondaryIndexUpdate,
    IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use std::time::{Duration, Instant};

/// What `ensure_table` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub created: bool,
    pub index_added: bool,
    pub ttl_enabled: bool,
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("name and type set")
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("name and type set")
}

fn email_gsi() -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(EMAIL_GSI)
        .key_schema(key(EMAIL_INDEX, KeyType::Hash))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .expect("name, keys and projection set")
}

impl DynamoStore {
    /// Creates the table, its GSI and its TTL if missing, then waits until they are ACTIVE.
    pub async fn ensure_table(&self) -> Result<TableReport, StoreError> {
        let mut report = TableReport {
            table: self.table.clone(),
            ..TableReport::default()
        };
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let has_gsi = match described {
            Ok(d) => d.table().is_some_and(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .any(|g| g.index_name() == Some(EMAIL_GSI))
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr(PK))
                    .attribute_definitions(attr(SK))
                    .attribute_definitions(attr(EMAIL_INDEX))
                    .key_schema(key(PK, KeyType::Hash))
                    .key_schema(key(SK, KeyType::Range))
                    .global_secondary_indexes(email_gsi())
                    .send()
                    .await
                    .map_err(|e| dynamo_err("CreateTable", &e))?;
                report.created = true;
                true
            }
            Err(e) => return Err(dynamo_err("DescribeTable", &e)),
        };
        self.wait_active().await?;
        if !has_gsi {
            self.client
                .update_table()
                .table_name(&self.table)
                .attribute_definitions(attr(EMAIL_INDEX))
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .create(
                            aws_sdk_dynamodb::types::CreateGlobalSecondaryIndexAction::builder()
                                .index_name(EMAIL_GSI)
                                .key_schema(key(EMAIL_INDEX, KeyType::Hash))
                                .projection(
                                    Projection::builder()
                                        .projection_type(ProjectionType::KeysOnly)
                                        .build(),
                                )
                                .build()
                                .expect("name, keys and projection set"),
                        )
                        .build(),
                )
                .send()
                .await
                .map_err(|e| dynamo_err("UpdateTable", &e))?;
            report.index_added = true;
            self.wait_active().await?;
        }
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| dynamo_err("DescribeTimeToLive", &e))?;
        let enabled = ttl
            .time_to_live_description()
            .and_then(|d| d.time_to_live_status())
            .is_some_and(|s| matches!(s, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling));
        if !enabled {
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(TTL)
                        .enabled(true)
                        .build()
                        .expect("name and flag set"),
                )
                .send()
                .await
                .map_err(|e| dynamo_err("UpdateTimeToLive", &e))?;
            report.ttl_enabled = true;
        }
        Ok(report)
    }

    /// Polls until the table and every GSI are ACTIVE (at most two minutes).
    async fn wait_active(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        loop {
            let d = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| dynamo_err("DescribeTable", &e))?;
            let ready = d.table().is_some_and(|t| {
                t.table_status() == Some(&TableStatus::Active)
                    && t.global_secondary_indexes()
                        .iter()
                        .all(|g| g.index_status() == Some(&IndexStatus::Active))
            });
            if ready {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(StoreError::Unavailable(format!(
                    "table {} is not ACTIVE after two minutes: check it in the AWS console and run bootstrap again",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
