//! Table-driven tests of the schedule (`slot.rs`): pure functions of the schedule and the
//! clock, each in milliseconds.

use super::*;

const SYNC: Duration = Duration::from_secs(1);
const SNAP: Duration = Duration::from_secs(3600);

fn plan(s: &Sched, now: Instant, final_step: bool, forced: bool) -> Option<StepPlan> {
    s.plan(now, SYNC, SNAP, final_step, forced)
}

fn step() -> Option<StepPlan> {
    Some(StepPlan::default())
}

/// When a step is due and which kind: each row is a schedule, the clock and the
/// expected plan. (Long because it is the table: one case per row, read top to bottom.)
#[test]
fn step_plans() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let dirty = || Sched {
        dirty_since: Some(t0),
        ..Sched::default()
    };
    // (why, schedule, clock after t0, final step, snapshot asked for, expected plan)
    type Row = (&'static str, Sched, Duration, bool, bool, Option<StepPlan>);
    let rows: Vec<Row> = vec![
        (
            "idle: nothing",
            Sched::default(),
            ms(5000),
            false,
            false,
            None,
        ),
        (
            "changes batched for the sync interval",
            dirty(),
            ms(999),
            false,
            false,
            None,
        ),
        (
            "changes due after it",
            dirty(),
            ms(1000),
            false,
            false,
            step(),
        ),
        (
            "hurried: a few ms",
            Sched {
                hurry: true,
                ..dirty()
            },
            ms(5),
            false,
            false,
            step(),
        ),
        (
            "WAL near the threshold: batched no longer than due_in",
            Sched {
                due_in: Some(ms(300)),
                ..dirty()
            },
            ms(300),
            false,
            false,
            step(),
        ),
        (
            "a timer while pinned is a probe",
            Sched {
                wake_at: Some(t0),
                ..Sched::default()
            },
            ms(1),
            false,
            false,
            Some(StepPlan {
                probe: true,
                ..StepPlan::default()
            }),
        ),
        (
            "a timer with changes due is a step",
            Sched {
                wake_at: Some(t0),
                ..dirty()
            },
            ms(1000),
            false,
            false,
            step(),
        ),
        (
            "after a failure, changes wait for the backoff",
            Sched {
                failures: 1,
                wake_at: Some(t0 + ms(4000)),
                ..dirty()
            },
            ms(2000),
            false,
            false,
            None,
        ),
        (
            "the retry after a failure is a step, not a probe",
            Sched {
                failures: 1,
                wake_at: Some(t0 + ms(4000)),
                ..dirty()
            },
            ms(4000),
            false,
            false,
            step(),
        ),
        (
            "a running step: nothing",
            Sched {
                in_flight: true,
                ..dirty()
            },
            ms(5000),
            false,
            false,
            None,
        ),
        (
            "final step at once, uploads included",
            Sched::default(),
            ms(0),
            true,
            false,
            Some(StepPlan {
                release: true,
                ..StepPlan::default()
            }),
        ),
        (
            "final step waits for the running upload job",
            Sched {
                uploading: true,
                ..Sched::default()
            },
            ms(0),
            true,
            false,
            None,
        ),
        (
            "final step held by no failure backoff",
            Sched {
                failures: 2,
                wake_at: Some(t0 + ms(9000)),
                ..dirty()
            },
            ms(0),
            true,
            false,
            Some(StepPlan {
                release: true,
                ..StepPlan::default()
            }),
        ),
        (
            "a snapshot asked for: at once",
            Sched::default(),
            ms(0),
            false,
            true,
            Some(StepPlan {
                snapshot: true,
                forced: true,
                ..StepPlan::default()
            }),
        ),
        (
            "snapshot interval passed with changes",
            Sched {
                changed_since_snapshot: true,
                last_snapshot: Some(t0),
                wake_at: Some(t0 + SNAP),
                ..Sched::default()
            },
            SNAP,
            false,
            false,
            Some(StepPlan {
                snapshot: true,
                ..StepPlan::default()
            }),
        ),
        (
            "done with the final step: nothing",
            Sched {
                final_done: true,
                ..dirty()
            },
            ms(5000),
            true,
            false,
            None,
        ),
    ];
    for (why, s, at, final_step, forced, want) in rows {
        assert_eq!(plan(&s, t0 + at, final_step, forced), want, "{why}");
    }
}

#[test]
fn dispatch_keeps_changes_for_a_probe() {
    let t0 = Instant::now();
    let mut s = Sched {
        dirty_since: Some(t0),
        wake_at: Some(t0),
        ..Sched::default()
    };
    s.dispatched(&StepPlan {
        probe: true,
        ..StepPlan::default()
    });
    assert_eq!(s.dirty_since, Some(t0), "a probe captures nothing");
    assert!(s.in_flight && s.wake_at.is_none());
    s.in_flight = false;
    s.dispatched(&StepPlan::default());
    assert_eq!(s.dirty_since, None);
    assert!(!s.step_uploads);
    s.in_flight = false;
    s.dispatched(&StepPlan {
        release: true,
        ..StepPlan::default()
    });
    assert!(s.step_uploads, "a final step uploads itself");
}

#[test]
fn next_due_and_step_reports() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut s = Sched::default();
    assert_eq!(s.next_due(SYNC), None, "idle: no deadline at all");
    s.dirty_since = Some(t0);
    assert_eq!(s.next_due(SYNC), Some(t0 + SYNC));
    s.failures = 1;
    s.wake_at = Some(t0 + ms(3000));
    assert_eq!(s.next_due(SYNC), Some(t0 + ms(3000)), "held by the backoff");
    s.in_flight = true;
    assert_eq!(s.next_due(SYNC), None, "a running step reports back first");

    let mut s = Sched {
        failures: 3,
        ..Sched::default()
    };
    let pinned = StepReport {
        pinned: true,
        ..StepReport::default()
    };
    s.step_ok(&pinned, t0, SNAP, false, false);
    assert_eq!(s.failures, 0);
    assert_eq!(s.wake_at, Some(t0 + PIN_PROBE), "pinned: probed soon");
    let tail = StepReport {
        tail: true,
        ..StepReport::default()
    };
    s.step_ok(&tail, t0, SNAP, false, false);
    assert_eq!(s.wake_at, Some(t0 + TAIL_RECHECK));
    s.changed_since_snapshot = true;
    s.last_snapshot = Some(t0);
    s.step_ok(&StepReport::default(), t0, SNAP, false, false);
    assert_eq!(s.wake_at, Some(t0 + SNAP), "the next snapshot");
    // Finishing: only a final step with nothing pending and no pin is done.
    s.step_ok(&StepReport::default(), t0, SNAP, true, false);
    assert!(
        !s.final_done,
        "a step started before the signal proves nothing"
    );
    let pending = StepReport {
        pending: 1,
        ..StepReport::default()
    };
    s.step_ok(&pending, t0, SNAP, true, true);
    assert!(!s.final_done);
    s.step_ok(&StepReport::default(), t0, SNAP, true, true);
    assert!(s.final_done);
}

#[test]
fn refusals_back_off_slower_than_outages() {
    let denied = Error::other("x");
    assert!(!denied.is_transient());
    assert_eq!(failure_backoff(&denied, 1, 0), Duration::from_secs(2));
    assert_eq!(failure_backoff(&denied, 9, 0), Duration::from_secs(60));
}
