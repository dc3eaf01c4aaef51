//! Fleet-level guards: shared cause, the Ready floor, crash-loop evictions keyed by ReplicaSet.

use super::*;

#[test]
fn a_shared_cause_is_not_a_reason_to_restart() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let t0 = Instant::now();
    let l = limits();
    // A provider outage: every worker fails its jobs. No pod is an outlier.
    let outage = bare((1..=4).map(|i| PodObservation { error_rate: Some(0.9), ..pod(&format!("w-{i}")) }).collect());
    let got = decide(&outage, &l, &Memory::default(), t0);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|d| d.verdict == Skipped(Guard::SharedCause)), "{got:?}");
    // Three of five slow is a majority too; one of five is an outlier.
    let slow = |n: &str| PodObservation { p95_seconds: Some(99.0), ..judged_ok(n) };
    let f = bare(vec![slow("w-1"), slow("w-2"), slow("w-3"), judged_ok("w-4"), judged_ok("w-5")]);
    assert!(decide(&f, &l, &Memory::default(), t0).iter().all(|d| d.verdict == Skipped(Guard::SharedCause)));
    let f = bare(vec![slow("w-1"), judged_ok("w-2"), judged_ok("w-3"), judged_ok("w-4"), judged_ok("w-5")]);
    assert_eq!(
        summary(&decide(&f, &l, &Memory::default(), t0)),
        vec![row("pod/w-1", GracefulRestart, SlowProcessing, Act)]
    );
    // Most of the fleet failing /health at once: hold, with an Event once per cooldown.
    let failing = |n: &str| PodObservation { ready: false, health_failing_for: Some(120 * S), ..pod(n) };
    let f = bare(vec![failing("w-1"), failing("w-2"), judged_ok("w-3")]);
    let mut m = Memory::default();
    let got = decide(&f, &l, &m, t0);
    assert!(got.iter().all(|d| d.verdict == Skipped(Guard::SharedCause)), "{got:?}");
    m.record(&got, t0, &l);
    assert!(decide(&f, &l, &m, t0 + S).iter().all(|d| d.verdict == Suppressed(Guard::SharedCause)));
}

#[test]
fn a_restart_keeps_a_ready_majority_and_two_ready_pods() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let t0 = Instant::now();
    let l = limits();
    let slow = PodObservation { p95_seconds: Some(99.0), ..judged_ok("w-1") };
    // The only Ready worker is never restarted, even when it alone is slow.
    let not_ready_ok = |n: &str| PodObservation { ready: false, ..judged_ok(n) };
    let f = bare(vec![slow.clone(), not_ready_ok("w-2"), not_ready_ok("w-3")]);
    assert_eq!(
        summary(&decide(&f, &l, &Memory::default(), t0)),
        vec![row("pod/w-1", GracefulRestart, SlowProcessing, Skipped(Guard::ReadyFloor))]
    );
    // Two Ready of which one slow: one would stay, fewer than two.
    let f = bare(vec![slow.clone(), judged_ok("w-2"), judged_ok("w-3")]);
    let f2 = bare(vec![slow.clone(), judged_ok("w-2")]);
    assert_eq!(decide(&f2, &l, &Memory::default(), t0)[0].verdict, Skipped(Guard::ReadyFloor));
    // Three Ready: two stay, 67 % of the fleet.
    assert_eq!(decide(&f, &l, &Memory::default(), t0)[0].verdict, Act);
    // A not-Ready pod costs no Ready pod, but with most of the fleet down it is held too.
    let down = |n: &str| PodObservation { ready: false, ..pod(n) };
    let failing = PodObservation { ready: false, health_failing_for: Some(120 * S), ..pod("w-1") };
    let f = bare(vec![failing.clone(), down("w-2"), down("w-3"), judged_ok("w-4"), judged_ok("w-5")]);
    assert_eq!(decide(&f, &l, &Memory::default(), t0)[0].verdict, Skipped(Guard::ReadyFloor));
    // The share is configurable.
    let lenient = Limits { min_ready_share: 0.3, ..limits() };
    assert_eq!(decide(&f, &lenient, &Memory::default(), t0)[0].verdict, Act);
}

#[test]
fn crash_loop_evictions_are_keyed_by_replica_set_and_spare_canaries() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let t0 = Instant::now();
    let l = limits();
    let in_set = |name: &str, set: &str, hash: &str, p: PodObservation| PodObservation {
        name: name.to_owned(),
        owner: Some(set.to_owned()),
        template: Some(hash.to_owned()),
        ..p
    };
    let looping = PodObservation { ready: false, critical: Some(Critical::CrashLoop { restarts: 5 }), ..pod("x") };
    let serving = |n: &str| in_set(n, "workers-aaa", "aaa", pod(n));
    // A one-pod canary on another template crash loops: its rollout decides, not an eviction.
    let f = bare(vec![
        in_set("canary-1", "canary-bbb", "bbb", looping.clone()),
        serving("w-2"),
        serving("w-3"),
        serving("w-4"),
    ]);
    assert_eq!(
        summary(&decide(&f, &l, &Memory::default(), t0)),
        vec![
            row("pod/canary-1", Report, CrashLoop, Act),
            row("pod/canary-1", Evict, CrashLoop, Skipped(Guard::OtherTemplate))
        ]
    );
    // A pod of the majority's ReplicaSet is evicted once; its replacement (new name, same
    // ReplicaSet) crash loops too: no second eviction, not even after the cooldown.
    let first = bare(vec![
        in_set("w-1", "workers-aaa", "aaa", looping.clone()),
        serving("w-2"),
        serving("w-3"),
        serving("w-4"),
    ]);
    let mut m = Memory::default();
    let got = decide(&first, &l, &m, t0);
    assert_eq!(got[1].verdict, Act);
    m.record(&got, t0, &l);
    let again =
        bare(vec![in_set("w-9", "workers-aaa", "aaa", looping), serving("w-2"), serving("w-3"), serving("w-4")]);
    for later in [60 * S, 601 * S, 3600 * S] {
        let got = decide(&again, &l, &m, t0 + later);
        assert_eq!(got[1].verdict, Suppressed(Guard::Cooldown), "after {later:?}");
    }
}
