//! The CPG API and its connection against a fake executive (tests/fake_exec): the
//! handshake, requests, callbacks queued while a request waits, every dispatch mode,
//! flow control and size errors, finalize, and the failures a connection must survive.
//! Every test runs under a time limit.

mod fake_exec;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use fake_exec::{FakeExec, Mode, NODEID};
use libais::cpg::{Address, Cpg, CpgCallbacks, GroupName, Guarantee, Reason, CPG_MSG_MAX};
use libais::{Connection, DispatchFlags, SaError, SaVersion, ServiceId};

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

/// Runs `f` on its own thread; fails the test if it does not finish within `LIMIT`.
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
    Deliver {
        group: GroupName,
        nodeid: u32,
        pid: u32,
        data: Vec<u8>,
    },
    Confchg {
        group: GroupName,
        members: Vec<Address>,
        left: Vec<Address>,
        joined: Vec<Address>,
    },
}

/// Callbacks that send every event to the returned receiver.
fn recorder() -> (CpgCallbacks, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let callbacks = CpgCallbacks::default()
        .on_deliver(move |group, nodeid, pid, data| {
            let _ = tx.send(Ev::Deliver {
                group: group.clone(),
                nodeid,
                pid,
                data: data.to_vec(),
            });
        })
        .on_confchg(move |group, members, left, joined| {
            let _ = tx2.send(Ev::Confchg {
                group: group.clone(),
                members: members.to_vec(),
                left: left.to_vec(),
                joined: joined.to_vec(),
            });
        });
    (callbacks, rx)
}

fn group(name: &str) -> GroupName {
    GroupName::new(name.as_bytes().to_vec()).unwrap()
}

fn me(reason: Reason) -> Address {
    Address {
        nodeid: NODEID,
        pid: std::process::id(),
        reason,
    }
}

fn deliver(g: &GroupName, data: &[u8]) -> Ev {
    Ev::Deliver {
        group: g.clone(),
        nodeid: NODEID,
        pid: std::process::id(),
        data: data.to_vec(),
    }
}

/// Dispatches `One` (non-blocking) until a callback has run, for callbacks that may
/// still be on their way.
fn next_event(cpg: &Cpg, rx: &Receiver<Ev>) -> Ev {
    let deadline = Instant::now() + WAIT;
    loop {
        cpg.dispatch(DispatchFlags::One).unwrap();
        if let Ok(ev) = rx.try_recv() {
            return ev;
        }
        assert!(Instant::now() < deadline, "no callback within {WAIT:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn handshake_binds_the_service_and_reports_the_executive_version() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let mut v = SaVersion {
            release_code: b'B',
            major: 1,
            minor: 0,
        };
        let conn = Connection::connect_at(&path, ServiceId::CPG, &mut v).unwrap();
        assert_eq!(v, SaVersion::B_01_01);
        assert_eq!(conn.version(), SaVersion::B_01_01);
        assert_eq!(conn.service(), ServiceId::CPG);
    });
}

#[test]
fn release_a_is_refused_with_version_naming_the_supported_one() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        for (release_code, major) in [(b'A', 1), (b'B', 2)] {
            let mut v = SaVersion {
                release_code,
                major,
                minor: 1,
            };
            let r = Connection::connect_at(&path, ServiceId::CPG, &mut v);
            assert_eq!(r.err(), Some(SaError::Version));
            assert_eq!(v, SaVersion::B_01_01);
        }
    });
}

#[test]
fn no_executive_is_try_again() {
    let dir = std::env::temp_dir().join(format!("libais-test-noexec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.sock");
    assert_eq!(
        Cpg::initialize_at(&missing, CpgCallbacks::default()).err(),
        Some(SaError::TryAgain)
    );
    // A socket file left behind by an executive that is gone: connection refused.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert_eq!(
        Cpg::initialize_at(&stale, CpgCallbacks::default()).err(),
        Some(SaError::TryAgain)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn join_mcast_and_queries_on_a_one_node_group() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Cpg::initialize_at(&path, callbacks).unwrap();
        let g = group("one-node");
        cpg.join(&g).unwrap();
        assert_eq!(
            next_event(&cpg, &rx),
            Ev::Confchg {
                group: g.clone(),
                members: vec![me(Reason::Join)],
                left: vec![],
                joined: vec![me(Reason::Join)],
            }
        );
        cpg.mcast_joined(Guarantee::Agreed, b"hello").unwrap();
        assert_eq!(next_event(&cpg, &rx), deliver(&g, b"hello"));
        assert_eq!(cpg.membership_get(&g).unwrap(), vec![me(Reason::Join)]);
        assert_eq!(cpg.membership_get(&group("other")).unwrap(), vec![]);
        assert_eq!(cpg.local_get().unwrap(), NODEID);
        assert_eq!(cpg.join(&g), Err(SaError::Exist));
        cpg.leave(&g).unwrap();
        assert_eq!(
            next_event(&cpg, &rx),
            Ev::Confchg {
                group: g.clone(),
                members: vec![],
                left: vec![me(Reason::Leave)],
                joined: vec![],
            }
        );
        assert_eq!(
            cpg.mcast_joined(Guarantee::Agreed, b"x"),
            Err(SaError::NotExist)
        );
        assert!(cpg.fd().unwrap() >= 0);
        cpg.finalize().unwrap();
    });
}

/// Whether `cpg`'s selection fd becomes readable within `timeout` (poll, POLLIN).
fn readable_within(cpg: &Cpg, timeout: Duration) -> bool {
    let fd = cpg.fd().unwrap();
    // SAFETY: `fd` is the socket of `cpg`, which is alive (and not finalized) for the
    // whole call; the borrow ends with it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let n = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
    n == 1 && fds[0].revents().contains(rustix::event::PollFlags::IN)
}

#[test]
fn the_selection_fd_is_readable_exactly_when_a_callback_waits_on_it() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let a = Cpg::initialize_at(&path, callbacks).unwrap();
        assert!(
            !readable_within(&a, Duration::from_millis(100)),
            "readable before any callback"
        );
        let g = group("polled");
        a.join(&g).unwrap();
        // Its own join's callback may have been read with the join's answer: dispatch
        // until it has run, then nothing is left, in the library or on the socket.
        assert!(matches!(next_event(&a, &rx), Ev::Confchg { .. }));
        assert_eq!(a.callbacks_pending(), Ok(false));
        assert!(
            !readable_within(&a, Duration::from_millis(100)),
            "readable with every callback dispatched"
        );

        // Another member's join and message reach `a` while it makes no request: only
        // the socket can tell.
        let b = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
        b.join(&g).unwrap();
        b.mcast_joined(Guarantee::Agreed, b"polled").unwrap();
        assert_eq!(b.local_get(), Ok(NODEID)); // the multicast has been answered
        assert!(rx.try_recv().is_err(), "callbacks run only in dispatch");
        assert!(
            readable_within(&a, Duration::from_secs(2)),
            "not readable with callbacks sent"
        );
        a.dispatch(DispatchFlags::All).unwrap();
        let got: Vec<Ev> = rx.try_iter().collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], Ev::Confchg { joined, .. } if joined.len() == 1),
            "{got:?}"
        );
        assert_eq!(got[1], deliver(&g, b"polled"));
        assert!(
            !readable_within(&a, Duration::from_millis(100)),
            "still readable after dispatch(All)"
        );
        b.finalize().unwrap();
        a.finalize().unwrap();
    });
}

#[test]
fn callbacks_that_arrive_during_requests_are_queued_and_dispatched_in_order() {
    let exec = FakeExec::start(Mode::CallbacksFirst);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Cpg::initialize_at(&path, callbacks).unwrap();
        let g = group("queued");
        cpg.join(&g).unwrap();
        for m in [&b"1"[..], b"2", b"3"] {
            cpg.mcast_joined(Guarantee::Agreed, m).unwrap();
        }
        assert_eq!(cpg.local_get().unwrap(), NODEID);
        assert!(rx.try_recv().is_err(), "callbacks run only in dispatch");
        assert_eq!(cpg.callbacks_pending(), Ok(true));

        cpg.dispatch(DispatchFlags::All).unwrap();
        let got: Vec<Ev> = rx.try_iter().collect();
        assert_eq!(got.len(), 4);
        assert!(matches!(got[0], Ev::Confchg { .. }));
        assert_eq!(
            got[1..],
            [deliver(&g, b"1"), deliver(&g, b"2"), deliver(&g, b"3")]
        );
        assert_eq!(cpg.callbacks_pending(), Ok(false));
        cpg.dispatch(DispatchFlags::One).unwrap();
        cpg.dispatch(DispatchFlags::All).unwrap();
        assert!(rx.try_recv().is_err());
    });
}

#[test]
fn dispatch_one_runs_exactly_one_callback() {
    let exec = FakeExec::start(Mode::CallbacksFirst);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Cpg::initialize_at(&path, callbacks).unwrap();
        let g = group("one-by-one");
        cpg.join(&g).unwrap();
        cpg.mcast_joined(Guarantee::Fifo, b"a").unwrap();
        cpg.mcast_joined(Guarantee::Safe, b"b").unwrap();
        // Multicasts do not wait for their answers; a request that does waits for
        // theirs first, and the fake sends each one's callbacks before its answer.
        assert_eq!(cpg.local_get(), Ok(NODEID));
        cpg.dispatch(DispatchFlags::One).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ev::Confchg { .. })));
        assert!(rx.try_recv().is_err());
        cpg.dispatch(DispatchFlags::One).unwrap();
        assert_eq!(rx.try_recv(), Ok(deliver(&g, b"a")));
        assert!(rx.try_recv().is_err());
        cpg.dispatch(DispatchFlags::One).unwrap();
        assert_eq!(rx.try_recv(), Ok(deliver(&g, b"b")));
        cpg.dispatch(DispatchFlags::One).unwrap();
        assert!(rx.try_recv().is_err());
    });
}

#[test]
fn blocking_dispatch_runs_callbacks_while_other_threads_make_requests_until_finalize() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Arc::new(Cpg::initialize_at(&path, callbacks).unwrap());
        let (done_tx, done_rx) = mpsc::channel();
        let dispatcher = {
            let cpg = Arc::clone(&cpg);
            thread::spawn(move || {
                let _ = done_tx.send(cpg.dispatch(DispatchFlags::Blocking));
            })
        };
        let g = group("blocking");
        cpg.join(&g).unwrap();
        assert!(matches!(rx.recv_timeout(WAIT), Ok(Ev::Confchg { .. })));
        for i in 0..50u32 {
            cpg.mcast_joined(Guarantee::Agreed, &i.to_be_bytes())
                .unwrap();
            // The dispatching thread holds the read turn: our response reaches us
            // through it.
            assert_eq!(cpg.local_get().unwrap(), NODEID);
        }
        for i in 0..50u32 {
            assert_eq!(rx.recv_timeout(WAIT), Ok(deliver(&g, &i.to_be_bytes())));
        }
        assert!(done_rx.try_recv().is_err(), "still dispatching");
        cpg.finalize().unwrap();
        assert_eq!(done_rx.recv_timeout(WAIT), Ok(Ok(())));
        dispatcher.join().unwrap();
        assert_eq!(
            cpg.dispatch(DispatchFlags::Blocking),
            Err(SaError::BadHandle)
        );
    });
}

#[test]
fn finalize_wakes_an_idle_blocking_dispatch() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let cpg = Arc::new(Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap());
        let (done_tx, done_rx) = mpsc::channel();
        let c = Arc::clone(&cpg);
        let t = thread::spawn(move || {
            let _ = done_tx.send(c.dispatch(DispatchFlags::Blocking));
        });
        // Give it time to block in its read.
        assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
        cpg.finalize().unwrap();
        assert_eq!(done_rx.recv_timeout(WAIT), Ok(Ok(())));
        t.join().unwrap();
    });
}

#[test]
fn flow_control_try_again_reaches_the_caller() {
    let exec = FakeExec::start(Mode::McastTryAgain);
    let path = exec.path().to_owned();
    within(move || {
        let cpg = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
        // Not joined: the multicast waits for its answer, TryAgain included.
        assert_eq!(
            cpg.mcast_joined(Guarantee::Agreed, b"m"),
            Err(SaError::TryAgain)
        );
        cpg.join(&group("busy")).unwrap();
        // Joined: multicasts are pipelined; the executive answers none, so the window
        // fills and then the caller is told to try again.
        let mut sent = 0;
        let refused = loop {
            match cpg.mcast_joined(Guarantee::Agreed, b"m") {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(
                sent <= libais::conn::PIPELINE_MAX,
                "the window never filled"
            );
        };
        assert_eq!(refused, SaError::TryAgain);
        assert!(sent >= 1);
        assert_eq!(cpg.local_get(), Ok(NODEID), "the connection stays usable");
        cpg.mcast_joined(Guarantee::Agreed, b"m")
            .expect("room again once the executive answered");
    });
}

#[test]
fn messages_above_the_maximum_are_too_big_and_the_maximum_round_trips() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Cpg::initialize_at(&path, callbacks).unwrap();
        let g = group("big");
        cpg.join(&g).unwrap();
        next_event(&cpg, &rx);
        let big: Vec<u8> = (0..=CPG_MSG_MAX).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            cpg.mcast_joined(Guarantee::Agreed, &big),
            Err(SaError::TooBig)
        );
        cpg.mcast_joined(Guarantee::Agreed, &big[..CPG_MSG_MAX])
            .unwrap();
        assert_eq!(next_event(&cpg, &rx), deliver(&g, &big[..CPG_MSG_MAX]));
    });
}

#[test]
fn every_call_after_finalize_is_bad_handle() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let cpg = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
        let g = group("gone");
        cpg.finalize().unwrap();
        let bad = Err(SaError::BadHandle);
        assert_eq!(cpg.finalize(), bad);
        assert_eq!(cpg.join(&g), bad);
        assert_eq!(cpg.leave(&g), bad);
        assert_eq!(cpg.mcast_joined(Guarantee::Agreed, b"x"), bad);
        assert_eq!(
            cpg.mcast_joined(Guarantee::Agreed, &vec![0; CPG_MSG_MAX + 1]),
            bad
        );
        assert_eq!(cpg.membership_get(&g), Err(SaError::BadHandle));
        assert_eq!(cpg.local_get(), Err(SaError::BadHandle));
        assert_eq!(cpg.callbacks_pending(), Err(SaError::BadHandle));
        assert_eq!(cpg.fd(), Err(SaError::BadHandle));
        assert_eq!(std::os::unix::io::AsRawFd::as_raw_fd(&cpg), -1);
        for flags in [
            DispatchFlags::One,
            DispatchFlags::All,
            DispatchFlags::Blocking,
        ] {
            assert_eq!(cpg.dispatch(flags), bad);
        }
        // A new handle works and the old one still does not reach it.
        let again = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
        assert_ne!(again.handle(), cpg.handle());
        assert_eq!(again.local_get(), Ok(NODEID));
        assert_eq!(cpg.local_get(), Err(SaError::BadHandle));
    });
}

#[test]
fn an_oversized_frame_is_message_error_and_ends_the_connection() {
    for mode in [Mode::OversizedFrame, Mode::ShortFrame] {
        let exec = FakeExec::start(mode);
        let path = exec.path().to_owned();
        within(move || {
            let cpg = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
            assert_eq!(cpg.local_get(), Err(SaError::MessageError), "{mode:?}");
            assert_eq!(cpg.local_get(), Err(SaError::MessageError), "{mode:?}");
            assert_eq!(
                cpg.dispatch(DispatchFlags::All),
                Err(SaError::MessageError),
                "{mode:?}"
            );
            cpg.finalize().unwrap();
        });
    }
}

#[test]
fn an_undecodable_callback_is_message_error_and_the_connection_survives() {
    let exec = FakeExec::start(Mode::GarbageCallback);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Cpg::initialize_at(&path, callbacks).unwrap();
        let g = group("garbage");
        cpg.join(&g).unwrap();
        assert_eq!(cpg.dispatch(DispatchFlags::All), Err(SaError::MessageError));
        assert!(matches!(next_event(&cpg, &rx), Ev::Confchg { .. }));
        assert_eq!(cpg.local_get(), Ok(NODEID));
    });
}

#[test]
fn the_executive_hanging_up_is_library() {
    let exec = FakeExec::start(Mode::HangUp);
    let path = exec.path().to_owned();
    within(move || {
        let cpg = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
        assert_eq!(cpg.local_get(), Err(SaError::Library));
        assert_eq!(cpg.dispatch(DispatchFlags::Blocking), Err(SaError::Library));
        assert_eq!(cpg.join(&group("x")), Err(SaError::Library));
        cpg.finalize().unwrap();
    });
}

#[test]
fn two_members_see_the_same_messages_in_the_same_order_and_a_finalize() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let g = group("pair");
        let (cb_a, rx_a) = recorder();
        let (cb_b, rx_b) = recorder();
        let a = Cpg::initialize_at(&path, cb_a).unwrap();
        let b = Cpg::initialize_at(&path, cb_b).unwrap();
        a.join(&g).unwrap();
        b.join(&g).unwrap();
        for i in 0..10u8 {
            a.mcast_joined(Guarantee::Agreed, &[b'a', i]).unwrap();
            b.mcast_joined(Guarantee::Agreed, &[b'b', i]).unwrap();
        }
        let collect = |cpg: &Cpg, rx: &Receiver<Ev>, n: usize| -> Vec<Ev> {
            (0..n).map(|_| next_event(cpg, rx)).collect()
        };
        // a sees its join, b's join, then 20 messages; b sees its join then 20.
        let seen_a = collect(&a, &rx_a, 22);
        let seen_b = collect(&b, &rx_b, 21);
        assert_eq!(seen_a[2..], seen_b[1..]);
        assert_eq!(a.membership_get(&g).unwrap().len(), 2);

        b.finalize().unwrap();
        assert_eq!(
            next_event(&a, &rx_a),
            Ev::Confchg {
                group: g.clone(),
                members: vec![me(Reason::Join)],
                left: vec![me(Reason::ProcDown)],
                joined: vec![],
            }
        );
    });
}

#[test]
fn callbacks_may_make_requests_but_not_dispatch_the_same_handle() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let slot: Arc<OnceLock<Arc<Cpg>>> = Arc::new(OnceLock::new());
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&slot);
        let callbacks = CpgCallbacks::default().on_deliver(move |_, _, _, data| {
            let cpg = s.get().unwrap();
            if data == b"ping" {
                cpg.mcast_joined(Guarantee::Agreed, b"pong").unwrap();
                let _ = tx.send(("nested", cpg.dispatch(DispatchFlags::One)));
            } else {
                let _ = tx.send(("pong", Ok(())));
            }
        });
        let cpg = Arc::new(Cpg::initialize_at(&path, callbacks).unwrap());
        slot.set(Arc::clone(&cpg)).unwrap();
        cpg.join(&group("reentry")).unwrap();
        cpg.mcast_joined(Guarantee::Agreed, b"ping").unwrap();
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < 2 {
            assert!(Instant::now() < deadline);
            cpg.dispatch(DispatchFlags::All).unwrap();
            got.extend(rx.try_iter());
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            got,
            [("nested", Err(SaError::BadOperation)), ("pong", Ok(()))]
        );
        // The callbacks hold the Cpg: finalize breaks the cycle.
        cpg.finalize().unwrap();
    });
}

#[test]
fn one_handle_serves_many_threads_at_once() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let (callbacks, rx) = recorder();
        let cpg = Arc::new(Cpg::initialize_at(&path, callbacks).unwrap());
        let g = group("threads");
        cpg.join(&g).unwrap();
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let cpg = Arc::clone(&cpg);
                let g = g.clone();
                thread::spawn(move || {
                    for i in 0..25u8 {
                        cpg.mcast_joined(Guarantee::Agreed, &[t, i]).unwrap();
                        assert_eq!(cpg.local_get().unwrap(), NODEID);
                        assert_eq!(cpg.membership_get(&g).unwrap().len(), 1);
                        cpg.dispatch(DispatchFlags::All).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        while seen.len() < 101 {
            assert!(Instant::now() < deadline, "saw {} callbacks", seen.len());
            cpg.dispatch(DispatchFlags::All).unwrap();
            seen.extend(rx.try_iter());
            thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(seen[0], Ev::Confchg { .. }));
        // Each thread's messages arrive in the order it sent them.
        for t in 0..4u8 {
            let mine: Vec<u8> = seen
                .iter()
                .filter_map(|e| match e {
                    Ev::Deliver { data, .. } if data[0] == t => Some(data[1]),
                    _ => None,
                })
                .collect();
            assert_eq!(mine, (0..25).collect::<Vec<u8>>());
        }
    });
}

#[test]
fn dropping_a_cpg_closes_its_connection() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    within(move || {
        let g = group("drop");
        let (cb, rx) = recorder();
        let watcher = Cpg::initialize_at(&path, cb).unwrap();
        watcher.join(&g).unwrap();
        {
            let leaver = Cpg::initialize_at(&path, CpgCallbacks::default()).unwrap();
            leaver.join(&g).unwrap();
        }
        let mut last = None;
        for _ in 0..3 {
            last = Some(next_event(&watcher, &rx));
        }
        assert_eq!(
            last,
            Some(Ev::Confchg {
                group: g.clone(),
                members: vec![me(Reason::Join)],
                left: vec![me(Reason::ProcDown)],
                joined: vec![],
            })
        );
    });
}
