//! The Totem core does not allocate per message on its hot path: three `Srp` instances on
//! the lossless in-memory network of [`ais_test::ring_bench`] (the loop `totem-bench`
//! times), every send queue kept full, and the heap allocations of the whole process
//! counted while 100,000 messages are delivered at one node in steady state. The count
//! is the whole ring's (every node delivers every message), so an allocation per message
//! in each node would add 3 per delivered message.
//!
//! What the core allocates is per frame, not per message: the sender makes the buffer a
//! frame is built in and the shared handle `bytes` makes for it when it is first cloned
//! (kept in the store and put on the wire), and the same for each token it passes;
//! receivers keep and deliver zero-copy slices of the frame. Small messages are packed
//! many to a frame, so per message that is a small fraction of one; a message of 1 KiB
//! fills a frame of the default netmtu by itself, so there the frame's allocations are
//! the message's. The queues and stores reach their size during warm-up and are reused.
//!
//! The application's payloads are not the core's: the driver makes one `Bytes` per size
//! and queues clones of it (a reference count, no allocation), so the count is what the
//! core itself does.
//!
//! One test function for both sizes: the counter is process-wide, and a second test
//! running in parallel would add its allocations to this one's.

use ais_test::alloc_count::{allocations, CountingAlloc};
use ais_test::ring_bench::RingBench;
use bytes::Bytes;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const NODES: u32 = 3;
/// Delivered at the first node before counting: the ring's queues, stores and output
/// buffers reach their steady-state sizes.
const WARM_UP: u64 = 50_000;
/// Delivered at the first node while counting.
const MEASURED: u64 = 100_000;

struct Measured {
    allocs_per_msg: f64,
    allocs_per_frame: f64,
    frames_per_msg: f64,
}

fn measure(size: usize) -> Measured {
    let mut b = RingBench::formed(NODES);
    // The application's payload, made once; every mcast queues a clone of it.
    let msg = Bytes::from(vec![0xA5u8; size]);
    b.run_until(&msg, |b| b.delivered_at_first >= WARM_UP);
    let (frames0, delivered0) = (b.frames, b.delivered_at_first);
    let allocs0 = allocations();
    b.run_until(&msg, |b| b.delivered_at_first - delivered0 >= MEASURED);
    let allocs = allocations() - allocs0;
    let delivered = (b.delivered_at_first - delivered0) as f64;
    let frames = (b.frames - frames0) as f64;
    let m = Measured {
        allocs_per_msg: allocs as f64 / delivered,
        allocs_per_frame: allocs as f64 / frames,
        frames_per_msg: frames / delivered,
    };
    println!(
        "size={size}: {delivered} delivered, {frames} frames, {allocs} allocations: \
         {:.4} per message, {:.3} per frame, {:.4} frames per message",
        m.allocs_per_msg, m.allocs_per_frame, m.frames_per_msg
    );
    m
}

/// Per frame (mcast or token), the core makes its buffer and `bytes`' shared handle for
/// it: 2 (measured 2.02 to 2.07). 3 leaves room for an occasional growth of a queue and
/// fails if one allocation per frame is added.
const MAX_ALLOCS_PER_FRAME: f64 = 3.0;

/// 64 B messages: about 20 per frame, so 2 allocations per frame are about 0.1 per
/// message (measured 0.1005). 0.25 leaves margin for a change in packing and fails
/// long before one allocation per message, even at one node only (above 1.1).
const MAX_ALLOCS_PER_SMALL_MSG: f64 = 0.25;

/// 1 KiB messages: one per frame, so the frame's 2 allocations are the message's
/// (measured 2.03). 2.5 fails if one allocation per message is added, even at one
/// node only (3.03).
const MAX_ALLOCS_PER_KIB_MSG: f64 = 2.5;

#[test]
fn no_heap_allocation_per_message_on_the_hot_path() {
    let small = measure(64);
    assert!(
        small.frames_per_msg < 0.1,
        "64 B messages are packed many to a frame ({:.4} frames per message)",
        small.frames_per_msg
    );
    assert!(
        small.allocs_per_msg < MAX_ALLOCS_PER_SMALL_MSG,
        "64 B: {:.4} allocations per delivered message, bound {MAX_ALLOCS_PER_SMALL_MSG}",
        small.allocs_per_msg
    );
    assert!(
        small.allocs_per_frame < MAX_ALLOCS_PER_FRAME,
        "64 B: {:.3} allocations per frame, bound {MAX_ALLOCS_PER_FRAME}",
        small.allocs_per_frame
    );

    let kib = measure(1024);
    assert!(
        kib.allocs_per_msg < MAX_ALLOCS_PER_KIB_MSG,
        "1 KiB: {:.4} allocations per delivered message, bound {MAX_ALLOCS_PER_KIB_MSG}",
        kib.allocs_per_msg
    );
    assert!(
        kib.allocs_per_frame < MAX_ALLOCS_PER_FRAME,
        "1 KiB: {:.3} allocations per frame, bound {MAX_ALLOCS_PER_FRAME}",
        kib.allocs_per_frame
    );
}
