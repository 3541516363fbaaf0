//! Spawning from a multi-threaded host: 8 threads spawn 500 sandboxes each while 4 threads
//! allocate and free in a loop. A child that took the allocator's lock across clone, or any other
//! post-fork hazard, shows up here as a deadlock (the run's timeout) or a failed spawn.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsandbox::{Spec, Stdio};

#[test]
fn concurrent_spawns_while_other_threads_allocate() {
    let per_thread: usize = std::env::var("RSANDBOX_STRESS_SPAWNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let stop = Arc::new(AtomicBool::new(false));
    let allocations = Arc::new(AtomicUsize::new(0));
    let allocators: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            let allocations = allocations.clone();
            std::thread::spawn(move || {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let size = 16 + (n * 7919 + i * 104729) % 65536;
                    keep.push(vec![n as u8; size]);
                    if keep.len() > 64 {
                        keep.drain(..32);
                    }
                    n += 1;
                }
                allocations.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    let start = Instant::now();
    let spawners: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let mut spec = Spec::new([
                        "/bin/sh",
                        "-c",
                        "exit $0",
                        &((t * 31 + i) % 200).to_string(),
                    ]);
                    spec.process.stdout = Stdio::Null;
                    spec.process.stderr = Stdio::Null;
                    spec.timeout = Some(60.0);
                    let mut child = rsandbox::spawn(&spec)
                        .unwrap_or_else(|e| panic!("thread {t} spawn {i}: {e}"));
                    let r = child.wait().unwrap();
                    assert_eq!(
                        r.status.code(),
                        Some(((t * 31 + i) % 200) as i32),
                        "thread {t} spawn {i}"
                    );
                }
            })
        })
        .collect();
    let mut failures = 0;
    for s in spawners {
        if s.join().is_err() {
            failures += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in allocators {
        a.join().unwrap();
    }
    let took = start.elapsed();
    eprintln!(
        "{} spawns in {:.1}s ({:.0}/s) while {} allocations ran",
        8 * per_thread,
        took.as_secs_f64(),
        (8 * per_thread) as f64 / took.as_secs_f64(),
        allocations.load(Ordering::Relaxed)
    );
    assert_eq!(failures, 0);
    assert!(took < Duration::from_secs(1200));
    // No zombies or leaked sandboxes: this process has no children left once the library's
    // reaper has collected the inits still tearing their namespaces down.
    let until = Instant::now() + Duration::from_secs(10);
    while common::children_of_this_process(false) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        common::children_of_this_process(false),
        0,
        "a child was left behind"
    );
}
