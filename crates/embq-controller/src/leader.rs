//! Leader election through a coordination.k8s.io Lease, so that two controller replicas
//! never act twice. The leader renews the Lease every tick; a follower takes it over
//! only once it has expired. Writes carry the resourceVersion that was read, so of two
//! replicas racing for an expired Lease exactly one wins (the other gets 409 Conflict).

use std::time::Duration;

use chrono::{DateTime, Utc};
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

/// Pure decision on the Lease as read at `now`.
pub fn lease_step(spec: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>, default_duration: Duration) -> LeaseStep {
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
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let expired = match (last, chrono::Duration::from_std(duration)) {
        (Some(last), Ok(d)) => last + d < now,
        // A Lease that never says when it was renewed cannot be judged live.
        (None, _) => true,
        (Some(_), Err(_)) => false,
    };
    if expired {
        LeaseStep::TakeOver
    } else {
        LeaseStep::Follow { holder: holder.to_owned() }
    }
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
    let step = lease_step(current.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, now, cfg.lease_duration);
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

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(30),
            renew_time: Some(MicroTime(Utc::now() - chrono::Duration::seconds(renewed_secs_ago))),
            ..Default::default()
        }
    }

    #[test]
    fn lease_steps() {
        let d = Duration::from_secs(30);
        let now = Utc::now();
        let cases = [
            ("no lease", None, LeaseStep::Create),
            ("ours", Some(spec("me", 5)), LeaseStep::Renew),
            ("ours, even if late", Some(spec("me", 300)), LeaseStep::Renew),
            ("theirs, live", Some(spec("other", 5)), LeaseStep::Follow { holder: "other".into() }),
            ("theirs, expired", Some(spec("other", 31)), LeaseStep::TakeOver),
            ("released", Some(spec("", 1)), LeaseStep::TakeOver),
            (
                "theirs, never renewed",
                Some(LeaseSpec { holder_identity: Some("other".into()), ..Default::default() }),
                LeaseStep::TakeOver,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(lease_step(s.as_ref(), "me", now, d), want, "{name}");
        }
    }
}
