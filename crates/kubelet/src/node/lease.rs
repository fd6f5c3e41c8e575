//! The node Lease heartbeat (the kubelet's `nodelease` controller): a Lease named after the
//! node in `kube-node-lease`, owned by the Node, renewed every quarter of its duration. The node
//! lifecycle controller reads it to decide whether the node is alive.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Longest wait between retries of a failed renewal.
const MAX_BACKOFF: Duration = Duration::from_secs(7);

/// Renews one node's Lease.
pub struct LeaseRenewer {
    clients: watch::Receiver<kube::Client>,
    node_name: String,
    duration_seconds: u32,
}

impl LeaseRenewer {
    /// A renewer for `node_name`'s lease of `duration_seconds`, using the newest client.
    pub fn new(
        clients: watch::Receiver<kube::Client>,
        node_name: String,
        duration_seconds: u32,
    ) -> Self {
        Self {
            clients,
            node_name,
            duration_seconds,
        }
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.clients.borrow().clone(), LEASE_NAMESPACE)
    }

    /// How often the lease is renewed: a quarter of its duration, as the kubelet does.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.duration_seconds)) / 4
    }

    /// Renews the lease once, creating it if it does not exist (first start, or the garbage
    /// collector removed it with a deleted Node). `node_uid` makes the Node its owner.
    pub async fn renew(&self, node_uid: Option<&str>) -> Result<(), kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let patch = serde_json::json!({
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": self.duration_seconds,
                "renewTime": now,
            }
        });
        match self
            .api()
            .patch(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(lease) => {
                let owner = lease
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .next()
                    .map(|o| o.uid.as_str());
                if node_uid.is_some() && owner != node_uid {
                    // The Node was re-registered: the old lease belongs to the old UID and
                    // would be garbage-collected, so replace it.
                    self.api()
                        .delete(&self.node_name, &Default::default())
                        .await?;
                    return self.create(now, node_uid).await;
                }
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => self.create(now, node_uid).await,
            Err(error) => Err(error),
        }
    }

    async fn create(&self, now: MicroTime, node_uid: Option<&str>) -> Result<(), kube::Error> {
        let owner_references = node_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node_name.clone(),
                uid: uid.to_string(),
                ..Default::default()
            }]
        });
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.node_name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                owner_references,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node_name.clone()),
                lease_duration_seconds: Some(self.duration_seconds as i32),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        match self.api().create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            // Someone (a previous us) created it meanwhile: the next renewal patches it.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Renews every [`Self::interval`] until `shutdown` is cancelled. A failed renewal is
    /// retried with backoff from 200 ms doubling to 7 s; errors never end the loop.
    pub async fn run(self, node_uid: watch::Receiver<Option<String>>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let uid = node_uid.borrow().clone();
            let wait = match self.renew(uid.as_deref()).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    self.interval()
                }
                Err(error) => {
                    tracing::warn!(node = %self.node_name, %error, retry_in = ?backoff, "lease renewal failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
