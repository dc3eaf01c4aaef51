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

/// Acquires or renews the Lease; `Ok(true)` when this replica leads for this tick.
pub async fn hold_lease(ctx: &Context) -> Result<bool, Error> {
    let cfg = &ctx.config;
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let now = chrono::Utc::now();
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let current = api.get_opt(&cfg.lease_name).await?;
    let step = lease_step(current.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, now, cfg.lease_duration);
    let result = match step {
        LeaseStep::Follow { holder } => {
            tracing::debug!(%holder, "following");
            return Ok(false);
        }
        LeaseStep::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    namespace: Some(cfg.namespace.clone()),
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
        Ok(_) => Ok(true),
        // Another replica wrote first: it leads this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
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
