//! The guards' memory carried in the Lease, so a controller rollout or a failover does
//! not grant a fresh action cap or forget the cooldowns.
//!
//! Instants are local to one process; the Lease holds wall-clock times (Unix
//! milliseconds). Clock skew between two controller pods shifts a cooldown by the skew,
//! which is small next to a ten-minute cooldown and errs towards acting later when the
//! new holder's clock is behind.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::Memory;

/// The Lease annotation holding [`Memory`].
pub const MEMORY_ANNOTATION: &str = "restart-controller.embq.dev/memory";

fn to_wall(t: Instant, now: Instant, wall: DateTime<Utc>) -> i64 {
    let age = chrono::Duration::from_std(now.duration_since(t)).unwrap_or_default();
    (wall - age).timestamp_millis()
}

/// A wall-clock time back to a local instant; times in the future read as now.
fn from_wall(ms: i64, now: Instant, wall: DateTime<Utc>) -> Instant {
    let age = (wall.timestamp_millis() - ms).max(0);
    now.checked_sub(std::time::Duration::from_millis(age.unsigned_abs())).unwrap_or(now)
}

impl Memory {
    /// The disruptions in the window and the per-key cooldown starts, as JSON.
    pub fn to_annotation(&self, now: Instant, wall: DateTime<Utc>) -> String {
        let disruptions: Vec<i64> = self.disruptions.iter().map(|t| to_wall(*t, now, wall)).collect();
        let cooldowns: Map<String, Value> =
            self.last_disruption.iter().map(|(k, t)| (k.clone(), json!(to_wall(*t, now, wall)))).collect();
        let evicted: Map<String, Value> =
            self.evicted_sets.iter().map(|(k, t)| (k.clone(), json!(to_wall(*t, now, wall)))).collect();
        let scale = self.last_scale.map(|t| to_wall(t, now, wall));
        json!({"disruptions": disruptions, "cooldowns": cooldowns, "evicted": evicted, "scale": scale}).to_string()
    }

    /// Reads what [`Memory::to_annotation`] wrote. A malformed annotation (hand-edited,
    /// another version) yields what could be read: never a panic, never a refusal to lead.
    pub fn from_annotation(text: &str, now: Instant, wall: DateTime<Utc>) -> Memory {
        let mut m = Memory::default();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("unreadable controller memory in the Lease; starting without it");
            return m;
        };
        if let Some(list) = v["disruptions"].as_array() {
            let mut times: Vec<Instant> =
                list.iter().filter_map(Value::as_i64).map(|ms| from_wall(ms, now, wall)).collect();
            times.sort();
            m.disruptions = times.into();
        }
        for (field, into) in [("cooldowns", &mut m.last_disruption), ("evicted", &mut m.evicted_sets)] {
            for (k, ms) in v[field].as_object().into_iter().flatten() {
                if let Some(ms) = ms.as_i64() {
                    into.insert(k.clone(), from_wall(ms, now, wall));
                }
            }
        }
        m.last_scale = v["scale"].as_i64().map(|ms| from_wall(ms, now, wall));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn memory_survives_a_round_trip_through_the_lease() {
        let now = Instant::now() + Duration::from_secs(3600);
        let wall = Utc::now();
        let mut m = Memory::default();
        m.disruptions.push_back(now - Duration::from_secs(120));
        m.last_disruption.insert("rs/workers-abc".into(), now - Duration::from_secs(120));
        m.evicted_sets.insert("rs/workers-abc".into(), now - Duration::from_secs(120));
        m.last_scale = Some(now - Duration::from_secs(30));
        let text = m.to_annotation(now, wall);
        // Read by another process five seconds later.
        let later = Instant::now() + Duration::from_secs(7200);
        let back = Memory::from_annotation(&text, later, wall + chrono::Duration::seconds(5));
        let age = |t: Instant| later.duration_since(t).as_secs();
        assert_eq!(back.disruptions.iter().map(|t| age(*t)).collect::<Vec<_>>(), vec![125]);
        assert_eq!(back.last_disruption.get("rs/workers-abc").map(|t| age(*t)), Some(125));
        assert_eq!(back.evicted_sets.get("rs/workers-abc").map(|t| age(*t)), Some(125));
        assert_eq!(back.last_scale.map(age), Some(35));
        for bad in ["", "{", "[]", r#"{"disruptions":"x","cooldowns":[1]}"#] {
            let m = Memory::from_annotation(bad, later, wall);
            assert!(m.disruptions.is_empty() && m.last_disruption.is_empty(), "{bad}");
        }
    }
}
