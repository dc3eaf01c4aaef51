//! One batch's provider requests: inputs longer than the model accepts are truncated or
//! rejected, the rest are packed into requests by count and tokens, each request waits for
//! its RPM/TPM budget, and each error is acted on where it belongs — a 429 pauses the
//! provider for every task, an exhausted quota parks it, a too-large request is split in
//! halves, a bad input dead-letters only its own job.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Ctx;
use crate::batching::{self, PlanCaps};
use crate::limiter::Billed;
use crate::metrics::{KindLabel, ProviderLabel, RequestLabel};
use crate::outcome::{self, Decision};
use crate::provider::ProviderError;
use crate::queue::{ClaimedJob, Outcome};
use crate::tokens::OverlongInput;

/// How long an exhausted quota parks the provider before one batch probes it again.
pub(super) const QUOTA_PARK: Duration = Duration::from_secs(300);

/// One input ready to send.
#[derive(Clone)]
struct Input<'a> {
    job: &'a ClaimedJob,
    text: Cow<'a, str>,
    tokens: usize,
}

/// Embeds `todo` and appends one outcome per job.
pub(super) async fn embed_jobs(ctx: &Ctx, provider: &'static str, todo: &[&ClaimedJob], out: &mut Vec<(i64, Outcome)>) {
    let counter = ctx.provider.token_counter();
    let caps = ctx.provider.caps();
    let mut inputs: Vec<Input<'_>> = Vec::with_capacity(todo.len());
    for &job in todo {
        let n = counter.count(&job.text);
        if n <= caps.max_tokens_per_input {
            inputs.push(Input { job, text: Cow::Borrowed(&job.text), tokens: n });
            continue;
        }
        let max = caps.max_tokens_per_input;
        match ctx.cfg.overlong_input {
            OverlongInput::Reject => {
                ctx.metrics.overlong_inputs.get_or_create(&KindLabel { kind: "rejected" }).inc();
                let why = format!("input has {n} tokens, the model accepts at most {max} (OVERLONG_INPUT=reject)");
                out.push((job.id, Outcome::Dead(why)));
            }
            OverlongInput::Truncate => {
                ctx.metrics.overlong_inputs.get_or_create(&KindLabel { kind: "truncated" }).inc();
                let text = counter.truncate(&job.text, max);
                let tokens = counter.count(&text);
                inputs.push(Input { job, text: Cow::Owned(text), tokens });
            }
        }
    }
    // A request never holds more than a minute's token budget, so it can always be admitted.
    let max_tokens = caps.max_tokens_per_request.min(ctx.cfg.max_tokens_per_minute.get() as usize);
    let counts: Vec<usize> = inputs.iter().map(|i| i.tokens).collect();
    let plan = batching::plan(&counts, PlanCaps { max_inputs: caps.max_inputs, max_tokens });
    // Requests still to send, last one on top; a too-large request pushes its halves back.
    let mut pending: Vec<Vec<Input<'_>>> =
        plan.into_iter().rev().map(|idx| idx.into_iter().map(|i| inputs[i].clone()).collect()).collect();
    while let Some(request) = pending.pop() {
        if ctx.hard.is_cancelled() || ctx.parked.load(Ordering::Relaxed) {
            release(&request, Duration::ZERO, out);
            continue;
        }
        if let Some(halves) = send(ctx, provider, request, out).await {
            pending.push(halves.1);
            pending.push(halves.0);
        }
    }
}

fn release(inputs: &[Input<'_>], after: Duration, out: &mut Vec<(i64, Outcome)>) {
    out.extend(inputs.iter().map(|i| (i.job.id, Outcome::Released { after })));
}

type Halves<'a> = (Vec<Input<'a>>, Vec<Input<'a>>);

/// Sends one request and records its outcomes; returns the halves when it was too large.
async fn send<'a>(
    ctx: &Ctx,
    provider: &'static str,
    request: Vec<Input<'a>>,
    out: &mut Vec<(i64, Outcome)>,
) -> Option<Halves<'a>> {
    let counted: u64 = request.iter().map(|i| i.tokens as u64).sum();
    let permit = match &ctx.limiter {
        Some(limiter) => {
            let permit = tokio::select! {
                p = limiter.acquire(counted) => p,
                _ = ctx.hard.cancelled() => {
                    release(&request, Duration::ZERO, out);
                    return None;
                }
            };
            ctx.metrics
                .rate_limit_wait_seconds
                .get_or_create(&ProviderLabel { provider })
                .inc_by(permit.waited.as_secs_f64());
            Some((limiter, permit))
        }
        None => None,
    };
    let texts: Vec<&str> = request.iter().map(|i| i.text.as_ref()).collect();
    let call_started = Instant::now();
    let call = async {
        match &permit {
            Some((limiter, permit)) => limiter.during(permit, ctx.provider.embed(&texts)).await,
            None => ctx.provider.embed(&texts).await,
        }
    };
    let result = tokio::select! {
        r = call => Some(r),
        _ = ctx.hard.cancelled() => None,
    };
    ctx.metrics.provider_request_seconds.observe(call_started.elapsed().as_secs_f64());
    let Some(result) = result else {
        if let Some((limiter, permit)) = &permit {
            // Cancelled mid-call: whether the provider billed it is unknown.
            limiter.settle(permit, Billed::Unknown);
        }
        release(&request, Duration::ZERO, out);
        return None;
    };
    let result = match result {
        Ok(embedded) => {
            count_request(ctx, provider, "2xx");
            let used = embedded.tokens.unwrap_or(counted);
            ctx.metrics.provider_tokens.get_or_create(&ProviderLabel { provider }).inc_by(used);
            tracing::Span::current().record("tokens", used);
            if let Some((limiter, permit)) = &permit {
                limiter.settle(permit, embedded.tokens.map_or(Billed::Unknown, Billed::Tokens));
            }
            match crate::vector::validate(&embedded.vectors, request.len(), ctx.provider.dimensions()) {
                Ok(()) => Ok(embedded.vectors),
                Err(why) => {
                    ctx.metrics.error("invalid_response");
                    warn!(error = %why, "provider returned unusable vectors");
                    Err(ProviderError::InvalidResponse(why))
                }
            }
        }
        Err(err) => {
            // Neither the budget nor the released jobs wait longer than MAX_PROVIDER_PAUSE.
            let err = err.with_pause_at_most(ctx.cfg.max_provider_pause);
            count_request(ctx, provider, status_class(&err));
            ctx.metrics.error(err.kind());
            warn!(error = %err, inputs = request.len(), "provider call failed");
            if let Some((limiter, permit)) = &permit {
                // A refused request is not billed. A 429 already paused (and emptied) the whole
                // budget: the provider reported it to the limiter before returning.
                let billed =
                    if matches!(err, ProviderError::RateLimited { .. }) { Billed::Unknown } else { Billed::Nothing };
                limiter.settle(permit, billed);
            }
            Err(err)
        }
    };
    let attempts: Vec<u32> = request.iter().map(|i| i.job.attempt).collect();
    let outcomes = match outcome::decide(result, &attempts, &ctx.cfg.retry, &mut rand::thread_rng()) {
        Decision::Split => return Some(batching::halves(&request)),
        Decision::Park(outcomes) => {
            park(ctx);
            outcomes
        }
        Decision::Jobs(outcomes) => outcomes,
    };
    out.extend(request.iter().map(|i| i.job.id).zip(outcomes));
    None
}

/// Quota exhausted: stop claiming, report not ready and raise the alert metric; after
/// [`QUOTA_PARK`] the next batch probes the provider again.
fn park(ctx: &Ctx) {
    if ctx.parked.swap(true, Ordering::SeqCst) {
        return;
    }
    warn!(for_secs = QUOTA_PARK.as_secs(), "provider quota exhausted: parking the provider");
    ctx.health.set_provider_parked(true);
    ctx.metrics.provider_parked.set(1);
    let (parked, health, metrics) = (ctx.parked.clone(), ctx.health.clone(), ctx.metrics.clone());
    let stop = ctx.health.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(QUOTA_PARK) => info!("probing the parked provider again"),
            _ = stop.cancelled() => {}
        }
        health.set_provider_parked(false);
        metrics.provider_parked.set(0);
        parked.store(false, Ordering::SeqCst);
    });
}

/// The `status_class` label of a failed request.
fn status_class(err: &ProviderError) -> &'static str {
    match err {
        ProviderError::RateLimited { .. } => "429",
        ProviderError::Transient(_) => "5xx",
        ProviderError::InvalidResponse(_) => "2xx",
        _ => "4xx",
    }
}

/// Counts one provider request (and a 429 as throttled).
fn count_request(ctx: &Ctx, provider: &'static str, status_class: &'static str) {
    ctx.metrics.provider_requests.get_or_create(&RequestLabel { provider, status_class }).inc();
    if status_class == "429" {
        ctx.metrics.provider_rate_limited.get_or_create(&ProviderLabel { provider }).inc();
    }
}
