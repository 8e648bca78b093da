//! RDS: the snapshot taken before the workers write (`database.snapshot_before`), of a DB
//! instance (CreateDBSnapshot) or an Aurora cluster (CreateDBClusterSnapshot).

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_rds::types::Tag;
use ephemera_core::snapshot::SnapshotKind;

use crate::error::Error;

pub trait Snapshots: Send + Sync {
    /// Asks for the snapshot `identifier` of `source`, tagged; its status. A snapshot of that
    /// name that already exists (a retried call) is read instead.
    fn create(
        &self,
        kind: SnapshotKind,
        source: &str,
        identifier: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, Error>> + Send;
    /// The snapshot's status; None when it does not exist.
    fn status(
        &self,
        kind: SnapshotKind,
        identifier: &str,
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;
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
    ) -> Result<String, Error> {
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
                Err(e) => Err(Error::aws("rds", "CreateDBSnapshot", e)),
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
                Err(e) => Err(Error::aws("rds", "CreateDBClusterSnapshot", e)),
            },
        }?;
        match created {
            Some(status) => Ok(status),
            None => self.status(kind, identifier).await?.ok_or_else(|| {
                Error::Internal(format!(
                    "RDS says snapshot {identifier} exists, and then that it does not"
                ))
            }),
        }
    }

    async fn status(&self, kind: SnapshotKind, identifier: &str) -> Result<Option<String>, Error> {
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
                    Err(e) => Err(Error::aws("rds", "DescribeDBSnapshots", e)),
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
                    Err(e) => Err(Error::aws("rds", "DescribeDBClusterSnapshots", e)),
                }
            }
        }
    }
}
