//! Leader election through a coordination.k8s.io Lease, so that two controller replicas
//! never act twice. The leader renews the Lease every tick; a follower takes it over
//! only once it has expired. Writes carry the resourceVersion that was read, so of two
//! replicas racing for an expired Lease exactly one wins (the other gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use crate::controller::Context;
use crate::policy::MEMORY_ANNOTATION;
use crate::Error;

/// What to do with the Lease, given what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but it expired (or nobody holds it): take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Follow { holder: String },
}

/// Pure decision on the Lease. `unchanged_for` is how long, by this replica's own
/// monotonic clock, the Lease has been seen with the same holder and renewal: another
/// pod's `renewTime` is never compared with the local wall clock, so clock skew between
/// nodes cannot make a live Lease look expired (client-go judges it the same way).
pub fn lease_step(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> LeaseStep {
    let Some(spec) = spec else {
        return LeaseStep::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return LeaseStep::Renew;
    }
    if holder.is_empty() {
        return LeaseStep::TakeOver;
    }
    let duration =
        spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map_or(default_duration, Duration::from_secs);
    if unchanged_for > duration {
        LeaseStep::TakeOver
    } else {
        LeaseStep::Follow { holder: holder.to_owned() }
    }
}

/// What identifies one renewal of a Lease: any write changes it.
fn renewal_key(lease: &Lease) -> String {
    let spec = lease.spec.as_ref();
    format!(
        "{}|{:?}|{:?}",
        lease.metadata.resource_version.as_deref().unwrap_or_default(),
        spec.and_then(|s| s.holder_identity.as_deref()),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0)
    )
}

/// What one attempt to hold the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Another replica leads.
    Follow,
    /// This replica leads until the Lease duration has passed from before the write.
    Lead {
        /// The guards' memory the Lease carried (written by this or an earlier holder).
        carried: Option<String>,
    },
}

/// Acquires or renews the Lease, writing the guards' memory into it.
pub async fn hold_lease(ctx: &Context) -> Result<Hold, Error> {
    let cfg = &ctx.config;
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let now = chrono::Utc::now();
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let current = api.get_opt(&cfg.lease_name).await?;
    let carried = current.as_ref().and_then(|l| l.metadata.annotations.as_ref()?.get(MEMORY_ANNOTATION).cloned());
    let unchanged_for = ctx.lease_unchanged_for(current.as_ref().map(renewal_key));
    let step =
        lease_step(current.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, unchanged_for, cfg.lease_duration);
    // Before the first write as leader, the memory to write is what the Lease carried.
    let memory = match (&carried, ctx.memory_loaded()) {
        (Some(c), false) => c.clone(),
        _ => ctx.memory_annotation(),
    };
    let result = match step {
        LeaseStep::Follow { holder } => {
            tracing::debug!(%holder, "following");
            return Ok(Hold::Follow);
        }
        LeaseStep::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    annotations: Some([(MEMORY_ANNOTATION.to_owned(), memory)].into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        LeaseStep::Renew | LeaseStep::TakeOver => {
            let mut lease = current.unwrap_or_default();
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(MEMORY_ANNOTATION.to_owned(), memory);
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if step == LeaseStep::TakeOver {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                tracing::info!("taking over the expired lease");
            }
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(MicroTime(now));
            api.replace(&cfg.lease_name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(Hold::Lead { carried }),
        // Another replica wrote first: it leads this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Hold::Follow),
        Err(e) => Err(e.into()),
    }
}

/// The fence before every drain and eviction: renews the Lease (so a replica that lost it,
/// or stalled past it, finds out now) and says whether this replica still leads. An API
/// error reads as "no": not knowing is no licence to act.
pub async fn still_leading(ctx: &Context) -> bool {
    if !ctx.config.leader_election {
        return true;
    }
    // Shutting down: the Lease is about to be released; nothing new starts.
    if ctx.shutdown.is_cancelled() {
        return false;
    }
    match hold_lease(ctx).await {
        Ok(Hold::Lead { .. }) => true,
        Ok(Hold::Follow) => false,
        Err(e) => {
            tracing::warn!(error = %e, "lease check failed");
            false
        }
    }
}

/// Gives the Lease up on shutdown (holder cleared), so the next replica takes over at
/// once instead of after a full Lease duration. Keeps the memory annotation.
pub async fn release(ctx: &Context) -> Result<(), Error> {
    let cfg = &ctx.config;
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        return Ok(());
    };
    if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MEMORY_ANNOTATION.to_owned(), ctx.memory_annotation());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(String::new());
    spec.renew_time = Some(MicroTime(chrono::Utc::now()));
    api.replace(&cfg.lease_name, &PostParams::default(), &lease).await?;
    tracing::info!("lease released");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn spec(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(30),
            // A renewTime an hour old by this clock: skew, not expiry, unless it stays unchanged.
            renew_time: Some(MicroTime(Utc::now() - chrono::Duration::seconds(3600))),
            ..Default::default()
        }
    }

    #[test]
    fn lease_steps() {
        let d = Duration::from_secs(30);
        let s = Duration::from_secs;
        let cases = [
            ("no lease", None, s(0), LeaseStep::Create),
            ("ours", Some(spec("me")), s(5), LeaseStep::Renew),
            ("ours, even if late", Some(spec("me")), s(300), LeaseStep::Renew),
            (
                "theirs, just seen, old renewTime",
                Some(spec("other")),
                s(0),
                LeaseStep::Follow { holder: "other".into() },
            ),
            (
                "theirs, unchanged for the duration",
                Some(spec("other")),
                s(30),
                LeaseStep::Follow { holder: "other".into() },
            ),
            ("theirs, unchanged past the duration", Some(spec("other")), s(31), LeaseStep::TakeOver),
            ("released", Some(spec("")), s(0), LeaseStep::TakeOver),
            (
                "theirs, never renewed, just seen",
                Some(LeaseSpec { holder_identity: Some("other".into()), ..Default::default() }),
                s(0),
                LeaseStep::Follow { holder: "other".into() },
            ),
        ];
        for (name, sp, unchanged, want) in cases {
            assert_eq!(lease_step(sp.as_ref(), "me", unchanged, d), want, "{name}");
        }
    }
}
