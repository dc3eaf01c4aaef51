//! Capacity decisions: report, give back, never add pods; the scaling cooldown and the pressure tracker.

use super::*;

fn capacity(kind: ScaleKind, current: i32, original: Option<i32>) -> CapacityObservation {
    CapacityObservation { target: Some(ScaleTarget { kind, current, original }), ..Default::default() }
}

#[test]
fn capacity_decisions() {
    use ScaleKind::*;
    let t0 = Instant::now();
    let l = limits();
    let pressed = |mut c: CapacityObservation, reason, d| {
        c.pressure = Some(reason);
        c.pressure_for = Some(d);
        c
    };
    let calm = |mut c: CapacityObservation, d| {
        c.calm_for = Some(d);
        c
    };
    type Row = (&'static str, CapacityObservation, Option<(Action, Reason, Option<i32>)>);
    let cases: Vec<Row> = vec![
        ("no target known", CapacityObservation::default(), None),
        (
            "lasting backlog with an HPA: the HPA adds pods, not the controller",
            pressed(capacity(Hpa, 2, None), Reason::QueueDepth, 300 * S),
            None,
        ),
        (
            "lasting saturation with KEDA: same",
            pressed(capacity(ScaledObject, 1, None), Reason::Saturation, 300 * S),
            None,
        ),
        (
            "no autoscaler listed: never the Deployment's replicas",
            pressed(CapacityObservation::default(), Reason::QueueDepth, 300 * S),
            None,
        ),
        (
            "provider rate limited: say so, more pods mean more 429s",
            {
                let mut c = pressed(capacity(Hpa, 2, None), Reason::QueueDepth, 300 * S);
                c.rate_limited = true;
                c
            },
            Some((Action::HoldScale, Reason::RateLimited, None)),
        ),
        ("calm but never raised: nothing", calm(capacity(Hpa, 2, None), 900 * S), None),
        ("calm, raised earlier, too soon: nothing", calm(capacity(Hpa, 4, Some(2)), 599 * S), None),
        (
            "calm long enough: give an earlier raise of the HPA minimum back",
            calm(capacity(Hpa, 4, Some(2)), 600 * S),
            Some((Action::ScaleDown, Reason::PressureGone, Some(2))),
        ),
        (
            "no autoscaler: a Deployment is never written, not even to step down",
            calm(CapacityObservation::default(), 600 * S),
            None,
        ),
    ];
    for (name, c, want) in cases {
        let got = decide_capacity(&c, &l, &Memory::default(), t0).map(|d| {
            assert_eq!(d.verdict, Verdict::Act, "{name}");
            (d.action, d.reason, d.scale_to)
        });
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn scaling_waits_for_its_cooldown() {
    let l = limits();
    let t0 = Instant::now();
    let mut c = capacity(ScaleKind::Hpa, 4, Some(2));
    c.calm_for = Some(900 * S);
    let mut m = Memory::default();
    let first = decide_capacity(&c, &l, &m, t0).expect("scale down");
    m.record(std::slice::from_ref(&first), t0, &l);
    let again = decide_capacity(&c, &l, &m, t0 + 60 * S).expect("decided");
    assert_eq!(again.verdict, Verdict::Suppressed(Guard::Cooldown));
    let later = decide_capacity(&c, &l, &m, t0 + 180 * S).expect("decided");
    assert_eq!(later.verdict, Verdict::Act);
}

#[test]
fn pressure_tracker_measures_unbroken_spells() {
    let t0 = Instant::now();
    let mut t = PressureTracker::default();
    assert_eq!(t.observe(t0, true), (Some(Duration::ZERO), None));
    assert_eq!(t.observe(t0 + 30 * S, true), (Some(30 * S), None));
    assert_eq!(t.observe(t0 + 40 * S, false), (None, Some(Duration::ZERO)));
    assert_eq!(t.observe(t0 + 50 * S, true), (Some(Duration::ZERO), None));
}
