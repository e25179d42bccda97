//! `$AIS_SOCKET` names the executive's socket. A test binary of its own: it changes the
//! process environment, which no other test may be reading at the same time.

mod fake_exec;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fake_exec::{FakeExec, Mode, NODEID};
use libais::cpg::{Cpg, CpgCallbacks};
use libais::SaError;

#[test]
fn ais_socket_is_honoured() {
    let exec = FakeExec::start(Mode::Normal);
    let path = exec.path().to_owned();
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        std::env::set_var("AIS_SOCKET", &path);
        assert_eq!(libais::socket_path(), path);
        let cpg = Cpg::initialize(CpgCallbacks::default()).unwrap();
        assert_eq!(cpg.local_get(), Ok(NODEID));
        cpg.finalize().unwrap();

        std::env::set_var("AIS_SOCKET", path.with_file_name("nobody-listens.sock"));
        let missing = Cpg::initialize(CpgCallbacks::default()).err();
        std::env::remove_var("AIS_SOCKET");
        assert_eq!(libais::socket_path(), libais::default_socket_path());
        let _ = tx.send(missing);
    });
    let missing = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("test did not finish in time");
    t.join().unwrap();
    assert_eq!(missing, Some(SaError::TryAgain));
    assert_eq!(exec.accepted(), 1);
}
