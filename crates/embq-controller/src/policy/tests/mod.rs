//! Decision tables for the policy.

use super::*;

mod capacity;
mod fleet_guards;

const S: Duration = Duration::from_secs(1);

fn limits() -> Limits {
    Limits {
        health_failure_after: 60 * S,
        error_rate_max: 0.5,
        p95_max_seconds: 30.0,
        crash_loop_restarts: 3,
        oom_repeat: 2,
        pod_cooldown: 600 * S,
        max_actions: 3,
        action_window: 600 * S,
        max_disrupted: 1,
        pressure_window: 120 * S,
        calm_window: 600 * S,
        scale_cooldown: 180 * S,
        signal_window: 300 * S,
        min_ready_share: 0.51,
        min_ready_pods: 2,
        dry_run: false,
    }
}

fn pod(name: &str) -> PodObservation {
    PodObservation::healthy(name)
}

/// Exactly these pods.
fn bare(pods: Vec<PodObservation>) -> FleetObservation {
    FleetObservation { pods, max_unavailable: 1, in_flight: vec![], capacity: CapacityObservation::default() }
}

/// These pods among four healthy, Ready, judged ones: what is asked about is an outlier.
fn fleet(mut pods: Vec<PodObservation>) -> FleetObservation {
    pods.extend((1..=4).map(|i| judged_ok(&format!("h-{i}"))));
    bare(pods)
}

/// A Ready pod whose window shows no failures and fast jobs.
fn judged_ok(name: &str) -> PodObservation {
    PodObservation { error_rate: Some(0.0), p95_seconds: Some(1.0), ..pod(name) }
}

/// (action, reason, verdict) per decision, for compact table rows.
fn summary(ds: &[Decision]) -> Vec<(String, Action, Reason, Verdict)> {
    ds.iter().map(|d| (d.subject.to_string(), d.action, d.reason, d.verdict)).collect()
}

fn row(subject: &str, action: Action, reason: Reason, verdict: Verdict) -> (String, Action, Reason, Verdict) {
    (subject.to_owned(), action, reason, verdict)
}

#[test]
fn pod_states_map_to_actions() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let with = |f: &dyn Fn(&mut PodObservation)| {
        let mut p = pod("w-1");
        f(&mut p);
        p
    };
    type Row = (String, Action, Reason, Verdict);
    let cases: Vec<(&str, PodObservation, Vec<Row>)> = vec![
        ("healthy pod: nothing", pod("w-1"), vec![]),
        (
            "image pull failure: report only, a restart pulls the same image",
            with(&|p| {
                p.ready = false;
                p.critical = Some(Critical::ImagePull)
            }),
            vec![row("pod/w-1", Report, ImagePull, Act)],
        ),
        (
            "fresh single OOM kill: report",
            with(&|p| p.critical = Some(Critical::OomKilled { restarts: 1, fresh: true })),
            vec![row("pod/w-1", Report, OomKilled, Act)],
        ),
        (
            "repeated OOM kills: memory limit too low",
            with(&|p| p.critical = Some(Critical::OomKilled { restarts: 4, fresh: true })),
            vec![row("pod/w-1", Report, OomRepeated, Act)],
        ),
        (
            "an old OOM kill remembered in lastState: nothing new to say",
            with(&|p| p.critical = Some(Critical::OomKilled { restarts: 4, fresh: false })),
            vec![],
        ),
        (
            "young crash loop: report, the kubelet's back-off is doing its job",
            with(&|p| {
                p.ready = false;
                p.critical = Some(Critical::CrashLoop { restarts: 1 })
            }),
            vec![row("pod/w-1", Report, CrashLoop, Act)],
        ),
        (
            "health failing below the threshold: wait",
            with(&|p| {
                p.ready = false;
                p.health_failing_for = Some(59 * S)
            }),
            vec![],
        ),
        (
            "health failing past the threshold, kubelet agrees (not Ready): graceful restart",
            with(&|p| {
                p.ready = false;
                p.health_failing_for = Some(60 * S)
            }),
            vec![row("pod/w-1", GracefulRestart, HealthCheck, Act)],
        ),
        (
            "health failing, still Ready and no restarts: only the controller's view, nothing",
            with(&|p| p.health_failing_for = Some(600 * S)),
            vec![],
        ),
        (
            "health failing on a Ready pod whose restarts moved: the kubelet saw it too",
            with(&|p| {
                p.restarts_moved = true;
                p.health_failing_for = Some(60 * S)
            }),
            vec![row("pod/w-1", GracefulRestart, HealthCheck, Act)],
        ),
        (
            "error rate above the threshold: graceful restart",
            with(&|p| p.error_rate = Some(0.6)),
            vec![row("pod/w-1", GracefulRestart, ErrorRate, Act)],
        ),
        ("error rate at the threshold: nothing", with(&|p| p.error_rate = Some(0.5)), vec![]),
        (
            "slow p95: graceful restart",
            with(&|p| p.p95_seconds = Some(31.0)),
            vec![row("pod/w-1", GracefulRestart, SlowProcessing, Act)],
        ),
        (
            "health outranks error rate and latency",
            with(&|p| {
                p.ready = false;
                p.health_failing_for = Some(90 * S);
                p.error_rate = Some(0.9);
                p.p95_seconds = Some(99.0)
            }),
            vec![row("pod/w-1", GracefulRestart, HealthCheck, Act)],
        ),
    ];
    for (name, p, want) in cases {
        let f = fleet(vec![p, pod("w-2"), pod("w-3")]);
        let got = decide(&f, &limits(), &Memory::default(), Instant::now());
        assert_eq!(summary(&got), want, "{name}");
    }
}

#[test]
fn crash_loops_are_evicted_only_when_isolated_and_persistent() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let looping = |name: &str, restarts| PodObservation {
        ready: false,
        critical: Some(Critical::CrashLoop { restarts }),
        ..pod(name)
    };
    let cases = vec![
        (
            "one persistent crash loop among serving pods: reschedule it",
            vec![looping("w-1", 5), pod("w-2"), pod("w-3")],
            vec![row("pod/w-1", Report, CrashLoop, Act), row("pod/w-1", Evict, CrashLoop, Act)],
        ),
        (
            "every pod crash looping: the image or config is at fault, report only",
            vec![looping("w-1", 5), looping("w-2", 5)],
            vec![row("pod/w-1", Report, CrashLoop, Act), row("pod/w-2", Report, CrashLoop, Act)],
        ),
        (
            "the only pod crash looping: nothing serves, deleting it resets the back-off",
            vec![looping("w-1", 5)],
            vec![row("pod/w-1", Report, CrashLoop, Act)],
        ),
    ];
    for (name, pods, want) in cases {
        let got = decide(&bare(pods), &limits(), &Memory::default(), Instant::now());
        assert_eq!(summary(&got), want, "{name}");
    }
}

#[test]
fn rate_limited_provider_turns_error_and_latency_restarts_into_reports() {
    let mut f = fleet(vec![
        PodObservation { error_rate: Some(0.9), ..pod("w-1") },
        PodObservation { p95_seconds: Some(90.0), ..pod("w-2") },
        PodObservation { health_failing_for: Some(120 * S), ready: false, ..pod("w-3") },
    ]);
    f.capacity.rate_limited = true;
    let got = decide(&f, &limits(), &Memory::default(), Instant::now());
    assert_eq!(
        summary(&got),
        vec![
            row("pod/w-1", Action::Report, Reason::ErrorRate, Verdict::Act),
            row("pod/w-2", Action::Report, Reason::SlowProcessing, Verdict::Act),
            // A dead /health is the pod's own problem whatever the provider does.
            row("pod/w-3", Action::GracefulRestart, Reason::HealthCheck, Verdict::Act),
        ]
    );
}

#[test]
fn guards_cooldown_cap_budget_and_dry_run() {
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let t0 = Instant::now();
    let failing = |name: &str, ready| PodObservation { ready, health_failing_for: Some(120 * S), ..pod(name) };

    // Two ready pods slow: the budget (max_disrupted 1) lets one go at a time.
    let f = fleet(vec![
        PodObservation { p95_seconds: Some(99.0), ..pod("w-1") },
        PodObservation { p95_seconds: Some(99.0), ..pod("w-2") },
    ]);
    let got = decide(&f, &limits(), &Memory::default(), t0);
    assert_eq!(
        summary(&got),
        vec![
            row("pod/w-1", GracefulRestart, SlowProcessing, Act),
            row("pod/w-2", GracefulRestart, SlowProcessing, Suppressed(Guard::DisruptionBudget)),
        ]
    );

    // Pods already not Ready cost no availability: both go, bounded by the cap only.
    let f = fleet(vec![failing("w-1", false), failing("w-2", false)]);
    let got = decide(&f, &limits(), &Memory::default(), t0);
    assert!(got.iter().all(|d| d.verdict == Act), "{got:?}");

    // A restart in flight on a ready pod uses the budget; the in-flight pod is skipped.
    let mut f = fleet(vec![pod("w-1"), PodObservation { error_rate: Some(1.0), ..pod("w-2") }]);
    f.in_flight = vec!["w-1".into()];
    let got = decide(&f, &limits(), &Memory::default(), t0);
    assert_eq!(summary(&got), vec![row("pod/w-2", GracefulRestart, ErrorRate, Suppressed(Guard::DisruptionBudget))]);

    // maxUnavailable 0 on the Deployment: ready pods are never disrupted.
    let mut f = fleet(vec![PodObservation { error_rate: Some(1.0), ..pod("w-1") }]);
    f.max_unavailable = 0;
    let got = decide(&f, &limits(), &Memory::default(), t0);
    assert_eq!(got[0].verdict, Suppressed(Guard::DisruptionBudget));

    // Cooldown per pod: acted at t0, suppressed until t0 + cooldown.
    let l = limits();
    let f = fleet(vec![failing("w-1", false)]);
    let mut m = Memory::default();
    let first = decide(&f, &l, &m, t0);
    m.record(&first, t0, &l);
    assert_eq!(decide(&f, &l, &m, t0 + 599 * S)[0].verdict, Suppressed(Guard::Cooldown));
    assert_eq!(decide(&f, &l, &m, t0 + 600 * S)[0].verdict, Act);

    // Reports of a lasting condition also wait for the cooldown.
    let f = fleet(vec![PodObservation { critical: Some(Critical::ImagePull), ready: false, ..pod("w-1") }]);
    let mut m = Memory::default();
    m.record(&decide(&f, &l, &m, t0), t0, &l);
    assert_eq!(decide(&f, &l, &m, t0 + 60 * S)[0].verdict, Suppressed(Guard::Cooldown));

    // Dry run: same decisions, verdict DryRun, and recorded so the cadence is real.
    let dry = Limits { dry_run: true, ..limits() };
    let f = fleet(vec![failing("w-1", false)]);
    let mut m = Memory::default();
    let got = decide(&f, &dry, &m, t0);
    assert_eq!(summary(&got), vec![row("pod/w-1", GracefulRestart, HealthCheck, DryRun)]);
    m.record(&got, t0, &dry);
    assert_eq!(decide(&f, &dry, &m, t0 + S)[0].verdict, Suppressed(Guard::Cooldown));
}

#[test]
fn the_fleet_cap_holds_across_looks_and_frees_up_after_the_window() {
    let l = limits();
    let t0 = Instant::now();
    let storm: Vec<_> = (0..20)
        .map(|i| PodObservation { ready: false, health_failing_for: Some(300 * S), ..pod(&format!("w-{i:02}")) })
        .collect();
    // Twenty failing among twenty-five serving: still a minority, still most of the fleet Ready.
    let f = bare(storm.into_iter().chain((0..25).map(|i| judged_ok(&format!("h-{i:02}")))).collect());
    let mut m = Memory::default();
    let mut acted = 0;
    for look in 0..30u32 {
        let now = t0 + look * 10 * S; // 5 minutes of looks, within one window
        let got = decide(&f, &l, &m, now);
        acted += got.iter().filter(|d| d.verdict == Verdict::Act).count();
        m.record(&got, now, &l);
    }
    assert_eq!(acted, 3, "never more than max_actions in one window");
    let later = decide(&f, &l, &m, t0 + 600 * S);
    assert_eq!(later.iter().filter(|d| d.verdict == Verdict::Act).count(), 3);
}
