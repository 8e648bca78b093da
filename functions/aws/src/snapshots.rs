//! RDS: the snapshot taken before the workers write (`database.snapshot_before`), of a DB
//! instance (CreateDBSnapshot) or an Aurora cluster (CreateDBClusterSnapshot).

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_rds::types::Tag;
use ephemera_core::snapshot::{Listed, SnapshotKind};
use ephemera_core::tags;

use crate::error::AwsError;

pub trait Snapshots: Send + Sync {
    /// Asks for the snapshot `identifier` of `source`, tagged; its status. A snapshot of that
    /// name that already exists (a retried call) is read instead.
    fn create(
        &self,
        kind: SnapshotKind,
        source: &str,
        identifier: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;
    /// The snapshot's status; None when it does not exist.
    fn status(
        &self,
        kind: SnapshotKind,
        identifier: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
    /// The source's manual snapshots, with their creation times and whether ephemera made them.
    fn list(
        &self,
        kind: SnapshotKind,
        source: &str,
    ) -> impl Future<Output = Result<Vec<Listed>, AwsError>> + Send;
    /// Deletes one snapshot; one already gone counts as deleted.
    fn delete(
        &self,
        kind: SnapshotKind,
        identifier: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// `ephemera:managed=true` among a snapshot's tags.
fn managed(tags: &[Tag]) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(tags::MANAGED) && t.value() == Some("true"))
}

/// The `ephemera:stack` tag's value: the stack that took the snapshot.
fn stack_of(tags: &[Tag]) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(tags::STACK))
        .and_then(|t| t.value())
        .map(str::to_string)
}

fn time(t: Option<&aws_smithy_types::DateTime>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

fn tags_of(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Snapshots for aws_sdk_rds::Client {
    async fn create(
        &self,
        kind: SnapshotKind,
        source: &str,
        identifier: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, AwsError> {
        let created = match kind {
            SnapshotKind::Instance => match self
                .create_db_snapshot()
                .db_instance_identifier(source)
                .db_snapshot_identifier(identifier)
                .set_tags(Some(tags_of(tags)))
                .send()
                .await
            {
                Ok(o) => Ok(o.db_snapshot().and_then(|s| s.status()).map(str::to_string)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_snapshot_already_exists_fault()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(AwsError::sdk("rds", "CreateDBSnapshot", e)),
            },
            SnapshotKind::Cluster => match self
                .create_db_cluster_snapshot()
                .db_cluster_identifier(source)
                .db_cluster_snapshot_identifier(identifier)
                .set_tags(Some(tags_of(tags)))
                .send()
                .await
            {
                Ok(o) => Ok(o
                    .db_cluster_snapshot()
                    .and_then(|s| s.status())
                    .map(str::to_string)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_cluster_snapshot_already_exists_fault()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(AwsError::sdk("rds", "CreateDBClusterSnapshot", e)),
            },
        }?;
        match created {
            Some(status) => Ok(status),
            None => self.status(kind, identifier).await?.ok_or_else(|| {
                AwsError::Internal(format!(
                    "RDS says snapshot {identifier} exists, and then that it does not"
                ))
            }),
        }
    }

    async fn status(
        &self,
        kind: SnapshotKind,
        identifier: &str,
    ) -> Result<Option<String>, AwsError> {
        match kind {
            SnapshotKind::Instance => {
                match self
                    .describe_db_snapshots()
                    .db_snapshot_identifier(identifier)
                    .send()
                    .await
                {
                    Ok(o) => Ok(o
                        .db_snapshots()
                        .first()
                        .and_then(|s| s.status())
                        .map(str::to_string)),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_db_snapshot_not_found_fault()) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(AwsError::sdk("rds", "DescribeDBSnapshots", e)),
                }
            }
            SnapshotKind::Cluster => {
                match self
                    .describe_db_cluster_snapshots()
                    .db_cluster_snapshot_identifier(identifier)
                    .send()
                    .await
                {
                    Ok(o) => Ok(o
                        .db_cluster_snapshots()
                        .first()
                        .and_then(|s| s.status())
                        .map(str::to_string)),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_db_cluster_snapshot_not_found_fault()) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(AwsError::sdk("rds", "DescribeDBClusterSnapshots", e)),
                }
            }
        }
    }

    async fn list(&self, kind: SnapshotKind, source: &str) -> Result<Vec<Listed>, AwsError> {
        // A source has tens of snapshots at most (RDS allows 100 manual ones a region): the
        // pages are read whole.
        let mut out = vec![];
        let mut marker: Option<String> = None;
        loop {
            let page_marker = marker.take();
            let next = match kind {
                SnapshotKind::Instance => {
                    let o = self
                        .describe_db_snapshots()
                        .db_instance_identifier(source)
                        .snapshot_type("manual")
                        .set_marker(page_marker)
                        .send()
                        .await
                        .map_err(|e| AwsError::sdk("rds", "DescribeDBSnapshots", e))?;
                    out.extend(o.db_snapshots().iter().map(|s| Listed {
                        identifier: s.db_snapshot_identifier().unwrap_or_default().to_string(),
                        created: time(s.snapshot_create_time()),
                        managed: managed(s.tag_list()),
                        stack: stack_of(s.tag_list()),
                    }));
                    o.marker().map(str::to_string)
                }
                SnapshotKind::Cluster => {
                    let o = self
                        .describe_db_cluster_snapshots()
                        .db_cluster_identifier(source)
                        .snapshot_type("manual")
                        .set_marker(page_marker)
                        .send()
                        .await
                        .map_err(|e| AwsError::sdk("rds", "DescribeDBClusterSnapshots", e))?;
                    out.extend(o.db_cluster_snapshots().iter().map(|s| {
                        Listed {
                            identifier: s
                                .db_cluster_snapshot_identifier()
                                .unwrap_or_default()
                                .to_string(),
                            created: time(s.snapshot_create_time()),
                            managed: managed(s.tag_list()),
                            stack: stack_of(s.tag_list()),
                        }
                    }));
                    o.marker().map(str::to_string)
                }
            };
            match next {
                Some(m) if !m.is_empty() => marker = Some(m),
                _ => return Ok(out),
            }
        }
    }

    async fn delete(&self, kind: SnapshotKind, identifier: &str) -> Result<(), AwsError> {
        let gone = match kind {
            SnapshotKind::Instance => match self
                .delete_db_snapshot()
                .db_snapshot_identifier(identifier)
                .send()
                .await
            {
                Ok(_) => false,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_snapshot_not_found_fault()) =>
                {
                    true
                }
                Err(e) => return Err(AwsError::sdk("rds", "DeleteDBSnapshot", e)),
            },
            SnapshotKind::Cluster => match self
                .delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(identifier)
                .send()
                .await
            {
                Ok(_) => false,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_cluster_snapshot_not_found_fault()) =>
                {
                    true
                }
                Err(e) => return Err(AwsError::sdk("rds", "DeleteDBClusterSnapshot", e)),
            },
        };
        tracing::info!(identifier, already_gone = gone, "snapshot deleted");
        Ok(())
    }
}
