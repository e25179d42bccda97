//! The CLM API against a fake executive (tests/fake_clm): the version handshake, track
//! with each flag and with a caller's capacity (NoSpace), callbacks in every dispatch
//! mode, track stop, node get and node get async, finalize, and an undecodable
//! callback. Every test runs under a time limit.

mod fake_clm;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fake_clm::{record, FakeClm, LOCAL};
use libais::clm::{
    Clm, ClmCallbacks, ClusterChange, ClusterNotificationBuffer, TrackError, TrackFlags,
    LOCAL_NODE_ID,
};
use libais::{DispatchFlags, SaError, SaVersion};

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(r) => {
            t.join().unwrap();
            r
        }
        Err(RecvTimeoutError::Disconnected) => std::panic::resume_unwind(t.join().unwrap_err()),
        Err(RecvTimeoutError::Timeout) => panic!("test did not finish within {LIMIT:?}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Track(ClusterNotificationBuffer, u32),
    NodeGet(u64, Result<u32, SaError>),
}

fn recorder() -> (ClmCallbacks, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let callbacks = ClmCallbacks::default()
        .on_track(move |view, members| {
            let _ = tx.send(Ev::Track(view.clone(), members));
        })
        .on_node_get(move |invocation, result| {
            let _ = tx2.send(Ev::NodeGet(invocation, result.map(|n| n.node_id)));
        });
    (callbacks, rx)
}

fn open(exec: &FakeClm) -> (Clm, Receiver<Ev>) {
    let (callbacks, rx) = recorder();
    let mut v = SaVersion::B_01_01;
    (
        Clm::initialize_at(exec.path(), callbacks, &mut v).unwrap(),
        rx,
    )
}

/// Dispatches `One` until a callback has run.
fn next_event(clm: &Clm, rx: &Receiver<Ev>) -> Ev {
    let deadline = Instant::now() + WAIT;
    loop {
        clm.dispatch(DispatchFlags::One).unwrap();
        if let Ok(ev) = rx.try_recv() {
            return ev;
        }
        assert!(Instant::now() < deadline, "no callback within {WAIT:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn changes(view: &ClusterNotificationBuffer) -> Vec<(u32, ClusterChange)> {
    view.notifications
        .iter()
        .map(|n| (n.node.node_id, n.change))
        .collect()
}

#[test]
fn initialize_follows_the_sa_forum_version_rule() {
    let exec = FakeClm::start(&[1]);
    let path = exec.path().to_owned();
    within(move || {
        let mut v = SaVersion {
            release_code: b'B',
            major: 1,
            minor: 9,
        };
        let clm = Clm::initialize_at(&path, ClmCallbacks::default(), &mut v).unwrap();
        assert_eq!(v, SaVersion::B_01_01, "the executive's version is reported");
        clm.finalize().unwrap();
        for (release_code, major) in [(b'A', 1), (b'B', 2), (b'C', 1)] {
            let mut v = SaVersion {
                release_code,
                major,
                minor: 1,
            };
            let r = Clm::initialize_at(&path, ClmCallbacks::default(), &mut v);
            assert_eq!(r.err(), Some(SaError::Version));
            assert_eq!(v, SaVersion::B_01_01, "names the version to retry with");
        }
    });
}

#[test]
fn track_current_returns_the_view_and_tracks_nothing() {
    let exec = FakeClm::start(&[1, 2, 3]);
    let exec = Arc::new(exec);
    let e = Arc::clone(&exec);
    within(move || {
        let (clm, rx) = open(&e);
        let view = clm.track(TrackFlags::CURRENT).unwrap().expect("a view");
        assert_eq!(view.view_number, 1);
        assert_eq!(view.member_ids(), [1, 2, 3]);
        assert_eq!(view.notifications[1].node, record(2, true, 1));
        assert_eq!(e.trackers(), 0);
        e.set_view(&[1, 2]);
        thread::sleep(Duration::from_millis(50));
        clm.dispatch(DispatchFlags::All).unwrap();
        assert!(rx.try_recv().is_err(), "no callback without a change flag");
    });
}

#[test]
fn a_capacity_too_small_is_no_space_with_the_needed_count() {
    let exec = FakeClm::start(&[1, 2, 3]);
    let path = exec.path().to_owned();
    within(move || {
        let mut v = SaVersion::B_01_01;
        let clm = Clm::initialize_at(&path, ClmCallbacks::default(), &mut v).unwrap();
        assert_eq!(
            clm.track_into(TrackFlags::CURRENT, 2),
            Err(TrackError::NoSpace { needed: 3 })
        );
        assert_eq!(
            TrackError::NoSpace { needed: 3 }.sa_error(),
            SaError::NoSpace
        );
        let view = clm.track_into(TrackFlags::CURRENT, 3).unwrap();
        assert_eq!(view.member_ids(), [1, 2, 3]);
        assert_eq!(
            clm.track_into(TrackFlags::CHANGES, 8),
            Err(TrackError::Sa(SaError::BadFlags)),
            "a buffer needs CURRENT"
        );
    });
}

#[test]
fn changes_and_changes_only_callbacks_report_each_node_with_its_change() {
    let exec = Arc::new(FakeClm::start(&[1, 2, 3]));
    let e = Arc::clone(&exec);
    within(move || {
        let (all, all_rx) = open(&e);
        let (only, only_rx) = open(&e);
        assert_eq!(all.track(TrackFlags::CHANGES), Ok(None));
        assert_eq!(only.track(TrackFlags::CHANGES_ONLY), Ok(None));
        e.set_view(&[1, 3, 4]);
        let Ev::Track(view, members) = next_event(&all, &all_rx) else {
            panic!("not a track callback")
        };
        assert_eq!(view.view_number, 2);
        assert_eq!(members, 3);
        assert_eq!(
            changes(&view),
            [
                (1, ClusterChange::NoChange),
                (2, ClusterChange::Left),
                (3, ClusterChange::NoChange),
                (4, ClusterChange::Joined)
            ]
        );
        assert!(!view.notifications[1].node.member);
        let Ev::Track(view, members) = next_event(&only, &only_rx) else {
            panic!("not a track callback")
        };
        assert_eq!((view.view_number, members), (2, 3));
        assert_eq!(
            changes(&view),
            [(2, ClusterChange::Left), (4, ClusterChange::Joined)]
        );
    });
}

#[test]
fn current_with_changes_delivers_the_view_through_the_callback() {
    let exec = FakeClm::start(&[1, 2]);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let mut v = SaVersion::B_01_01;
        let clm = Clm::initialize_at(&path, callbacks, &mut v).unwrap();
        assert_eq!(
            clm.track(TrackFlags::CURRENT | TrackFlags::CHANGES_ONLY),
            Ok(None)
        );
        let Ev::Track(view, 2) = next_event(&clm, &rx) else {
            panic!("no current view")
        };
        assert_eq!(view.member_ids(), [1, 2]);
    });
}

#[test]
fn blocking_dispatch_runs_track_callbacks_until_finalize() {
    let exec = Arc::new(FakeClm::start(&[1]));
    let e = Arc::clone(&exec);
    within(move || {
        let (clm, rx) = open(&e);
        let clm = Arc::new(clm);
        clm.track(TrackFlags::CHANGES).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let d = Arc::clone(&clm);
        let dispatcher = thread::spawn(move || {
            let _ = done_tx.send(d.dispatch(DispatchFlags::Blocking));
        });
        for k in 2..=6u32 {
            let members: Vec<u32> = (1..=k).collect();
            e.set_view(&members);
            match rx.recv_timeout(WAIT) {
                Ok(Ev::Track(view, n)) => {
                    assert_eq!(view.view_number, u64::from(k));
                    assert_eq!(n, k);
                }
                other => panic!("view {k}: {other:?}"),
            }
            // Requests go on while another thread dispatches.
            assert_eq!(clm.node_get(k, WAIT).unwrap().node_id, k);
        }
        assert!(done_rx.try_recv().is_err(), "still dispatching");
        clm.finalize().unwrap();
        assert_eq!(done_rx.recv_timeout(WAIT), Ok(Ok(())));
        dispatcher.join().unwrap();
    });
}

#[test]
fn track_stop_ends_tracking_and_a_second_stop_is_not_exist() {
    let exec = Arc::new(FakeClm::start(&[1, 2]));
    let e = Arc::clone(&exec);
    within(move || {
        let (clm, rx) = open(&e);
        assert_eq!(clm.track_stop(), Err(SaError::NotExist));
        clm.track(TrackFlags::CHANGES).unwrap();
        assert_eq!(e.trackers(), 1);
        clm.track_stop().unwrap();
        assert_eq!(e.trackers(), 0);
        e.set_view(&[1]);
        thread::sleep(Duration::from_millis(50));
        clm.dispatch(DispatchFlags::All).unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(clm.track_stop(), Err(SaError::NotExist));
        assert_eq!(clm.track(TrackFlags(0)), Err(SaError::BadFlags));
    });
}

#[test]
fn node_get_and_node_get_async_echo_the_invocation_and_refuse_unknown_nodes() {
    let exec = FakeClm::start(&[1, 2]);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let mut v = SaVersion::B_01_01;
        let clm = Clm::initialize_at(&path, callbacks, &mut v).unwrap();
        let me = clm.node_get(LOCAL_NODE_ID, WAIT).unwrap();
        assert_eq!(me, record(LOCAL, true, 1));
        assert_eq!(me.address.to_string(), "10.0.0.1");
        assert_eq!(
            clm.node_get(2, WAIT).unwrap().node_name.to_string(),
            "node2"
        );
        assert_eq!(clm.node_get(9, WAIT), Err(SaError::InvalidParam));
        clm.node_get_async(700, 2).unwrap();
        clm.node_get_async(701, 9).unwrap();
        assert_eq!(next_event(&clm, &rx), Ev::NodeGet(700, Ok(2)));
        assert_eq!(
            next_event(&clm, &rx),
            Ev::NodeGet(701, Err(SaError::InvalidParam))
        );
    });
}

#[test]
fn finalize_invalidates_the_handle_and_its_selection_object() {
    let exec = FakeClm::start(&[1]);
    let path = exec.path().to_owned();
    within(move || {
        let mut v = SaVersion::B_01_01;
        let clm = Clm::initialize_at(&path, ClmCallbacks::default(), &mut v).unwrap();
        let fd = clm.selection_object().unwrap();
        assert!(fd >= 0);
        assert_eq!(std::os::unix::io::AsRawFd::as_raw_fd(&clm), fd);
        clm.finalize().unwrap();
        assert_eq!(clm.finalize(), Err(SaError::BadHandle));
        assert_eq!(clm.selection_object(), Err(SaError::BadHandle));
        assert_eq!(std::os::unix::io::AsRawFd::as_raw_fd(&clm), -1);
        assert_eq!(clm.track(TrackFlags::CURRENT), Err(SaError::BadHandle));
        assert_eq!(clm.node_get(1, WAIT), Err(SaError::BadHandle));
        assert_eq!(clm.dispatch(DispatchFlags::All), Err(SaError::BadHandle));
    });
}

#[test]
fn an_undecodable_callback_is_message_error_and_dispatch_goes_on() {
    let exec = Arc::new(FakeClm::start(&[1, 2]));
    let e = Arc::clone(&exec);
    within(move || {
        let (clm, rx) = open(&e);
        clm.track(TrackFlags::CHANGES_ONLY).unwrap();
        e.send_garbage();
        e.set_view(&[1]);
        let deadline = Instant::now() + WAIT;
        let mut errors = 0;
        let ev = loop {
            match clm.dispatch(DispatchFlags::One) {
                Err(SaError::MessageError) => errors += 1,
                Ok(()) => {}
                Err(e) => panic!("{e}"),
            }
            if let Ok(ev) = rx.try_recv() {
                break ev;
            }
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(errors, 1);
        let Ev::Track(view, _) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(changes(&view), [(2, ClusterChange::Left)]);
    });
}
