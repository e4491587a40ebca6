//! `Leases`: who is connected, where no bus sees connections. A master or slave holds a key
//! for its name (one connection per name) and a master one more for the log (one master
//! at a time), in the key-value bucket `P_AGENTS`, each created only when absent and kept
//! alive by a task that renews it every `RENEW` with compare-and-swap; a key not renewed
//! for `LEASE_TTL` expires with the bucket's `max_age`, so a killed agent's name is free
//! again within it. Dropped, the leases are deleted at once.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::{lost, NatsAddress};
use crate::bus::client::{ClientError, Hello};
use crate::event::Role;

/// How long a lease outlives its holder's last renewal.
const LEASE_TTL: Duration = Duration::from_secs(2);

/// How often a holder renews its leases.
const RENEW: Duration = Duration::from_millis(500);

/// The leases one link holds; deleted when dropped.
pub(super) struct Leases {
    store: kv::Store,
    keys: Vec<String>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// Takes the leases `hello` needs (none for a listener): `Busy` when another holds one.
    pub(super) async fn take(
        js: &jetstream::Context,
        address: &NatsAddress,
        hello: &Hello,
    ) -> Result<Option<Leases>, ClientError> {
        let keys: Vec<(String, String)> = match hello.role {
            Role::Listener => return Ok(None),
            Role::Slave => vec![name_key(&hello.name)],
            Role::Master => vec![
                name_key(&hello.name),
                ("master".into(), "one master per log".into()),
            ],
        };
        let config = kv::Config {
            bucket: bucket(address),
            history: 1,
            max_age: LEASE_TTL,
            num_replicas: address.replicas,
            ..Default::default()
        };
        // Created (never updated: the shipped permissions deny stream updates) by the first
        // agent; another may have made it meanwhile.
        let store = match js.get_key_value(&config.bucket).await {
            Ok(store) => store,
            Err(_) => match js.create_key_value(config.clone()).await {
                Ok(store) => store,
                Err(_) => js.get_key_value(&config.bucket).await.map_err(lost)?,
            },
        };
        let holder = format!(
            "{} {:?} ({} on {})",
            hello.role,
            hello.name,
            hello.dir.as_deref().unwrap_or("no directory"),
            hello.host.as_deref().unwrap_or("?")
        );
        let mut taken: Vec<(String, u64)> = Vec::new();
        for (key, rule) in keys {
            match store.create(&key, holder.clone().into()).await {
                Ok(revision) => taken.push((key, revision)),
                Err(err) => {
                    for (key, revision) in &taken {
                        let _ = store.delete_expect_revision(key, Some(*revision)).await;
                    }
                    if err.kind() != kv::CreateErrorKind::AlreadyExists {
                        return Err(lost(err));
                    }
                    let other = match store.get(&key).await {
                        Ok(Some(value)) => String::from_utf8_lossy(&value).into_owned(),
                        _ => "another agent".into(),
                    };
                    return Err(ClientError::Busy(format!(
                        "{other} is already connected: {rule}"
                    )));
                }
            }
        }
        let keys = taken.iter().map(|(key, _)| key.clone()).collect();
        let renewing = tokio::spawn(renew(store.clone(), taken, holder));
        Ok(Some(Leases {
            store,
            keys,
            renewing,
        }))
    }
}

/// The leases' bucket.
fn bucket(address: &NatsAddress) -> String {
    format!("{}_AGENTS", address.prefix)
}

/// Who holds a name's lease now: each master and slave connected (a listener holds none).
pub(super) async fn holders(
    js: &jetstream::Context,
    address: &NatsAddress,
) -> Result<Vec<(String, Role)>, ClientError> {
    use futures_util::StreamExt;
    // No bucket: no master or slave ever connected.
    let Ok(store) = js.get_key_value(bucket(address)).await else {
        return Ok(Vec::new());
    };
    let mut keys = store.keys().await.map_err(lost)?;
    let mut holders = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(lost)?;
        let Some(name) = key
            .strip_prefix("agent.")
            .and_then(|hex| hex::decode(hex).ok())
            .and_then(|name| String::from_utf8(name).ok())
        else {
            continue;
        };
        // Its value is the holder, its role first (`Leases::take`); gone meanwhile: away.
        let Ok(Some(holder)) = store.get(&key).await else {
            continue;
        };
        let role = String::from_utf8_lossy(&holder)
            .split_whitespace()
            .next()
            .and_then(|role| serde_json::from_value(role.into()).ok());
        if let Some(role) = role {
            holders.push((name, role));
        }
    }
    Ok(holders)
}

/// The key of an agent name (names may hold a `.`, which a key may not start a token with).
fn name_key(name: &str) -> (String, String) {
    (
        format!("agent.{}", hex::encode(name)),
        "one connection per name".into(),
    )
}

/// Renews each lease every `RENEW`, for as long as the link lives.
async fn renew(store: kv::Store, mut taken: Vec<(String, u64)>, holder: String) {
    loop {
        tokio::time::sleep(RENEW).await;
        for (key, revision) in &mut taken {
            match store
                .update(key.as_str(), holder.clone().into(), *revision)
                .await
            {
                Ok(next) => *revision = next,
                // Renewed, but the answer lost: the key still holds our value.
                Err(err) => match store.entry(key.as_str()).await {
                    Ok(Some(entry))
                        if entry.value == holder.as_bytes()
                            && entry.operation == kv::Operation::Put =>
                    {
                        *revision = entry.revision
                    }
                    // Expired while the bucket could not be written (an election): ours
                    // again if nobody took it meanwhile.
                    Ok(None)
                    | Ok(Some(kv::Entry {
                        operation: kv::Operation::Delete | kv::Operation::Purge,
                        ..
                    })) => match store.create(key.as_str(), holder.clone().into()).await {
                        Ok(next) => *revision = next,
                        Err(again) => tracing::warn!("lost the lease on {key}: {again}"),
                    },
                    _ => tracing::warn!("cannot renew the lease on {key}: {err}"),
                },
            }
        }
    }
}

impl Leases {
    /// Gives the leases up now (an agent leaving), so that its name is free at once.
    pub(super) async fn release(&mut self) {
        self.renewing.abort();
        for key in std::mem::take(&mut self.keys) {
            let _ = self.store.delete(key).await;
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.renewing.abort();
        let (store, keys) = (self.store.clone(), std::mem::take(&mut self.keys));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for key in keys {
                    let _ = store.delete(key).await;
                }
            });
        }
    }
}
