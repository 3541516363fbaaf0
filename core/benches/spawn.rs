//! Micro-benchmarks of the in-process spawn path, stage by stage:
//!
//! - `spec/from-json`: reading a spec from JSON, as the C and Python bindings do on every call;
//! - `spawn/plan`: everything `spawn` does before it clones (checks, id maps, the mount plan,
//!   the seccomp filter, Landlock rules, pipes, stacks), without starting anything;
//! - `spawn/spawn+wait`: a cold start of `/bin/true` under the default isolation, to its result;
//! - `pool/spawn+wait`: the same job in a warm pool's sandbox (the refill runs between samples,
//!   outside the timing).
//!
//! `cargo bench -p rsandbox --bench spawn` (or `./scripts/bench --micro`, which runs them as an
//! unprivileged user). Run without `--bench` (as the test suite does), each benchmark runs once
//! as a check. Where the host cannot start sandboxes, the spawning benchmarks say why and are
//! left out, unless RSANDBOX_MUST_WORK=1.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rsandbox::{Pool, Process, Spec, Stdio};

fn payload() -> Spec {
    let mut spec = Spec::new(["/bin/true"]);
    spec.process.stdin = Stdio::Null;
    spec.process.stdout = Stdio::Null;
    spec.process.stderr = Stdio::Null;
    spec
}

/// Whether this host starts sandboxes; if not, says why (and fails under RSANDBOX_MUST_WORK=1).
fn can_spawn(spec: &Spec) -> bool {
    match rsandbox::run(spec) {
        Ok(r) if r.status.success() => true,
        outcome => {
            let why = match outcome {
                Ok(r) => format!("/bin/true ended with {:?}", r.status),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("RSANDBOX_MUST_WORK").is_some_and(|v| v == "1") {
                panic!("RSANDBOX_MUST_WORK=1 but a sandbox cannot start: {why}");
            }
            eprintln!("spawn and pool benchmarks skipped: a sandbox cannot start here: {why}");
            false
        }
    }
}

fn spec_from_json(c: &mut Criterion) {
    let json = serde_json::to_string(&payload()).expect("a spec serializes");
    c.bench_function("spec/from-json", |b| {
        b.iter(|| serde_json::from_str::<Spec>(black_box(&json)).expect("the spec reads back"))
    });
}

fn spawn(c: &mut Criterion) {
    let spec = payload();
    if !can_spawn(&spec) {
        return;
    }
    let mut group = c.benchmark_group("spawn");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("plan", |b| {
        b.iter(|| rsandbox::__bench_plan(black_box(&spec)).expect("plan"))
    });
    group.bench_function("spawn+wait", |b| {
        b.iter(|| {
            let mut child = rsandbox::spawn(black_box(&spec)).expect("spawn");
            let result = child.wait().expect("wait");
            assert!(result.status.success(), "{:?}", result.status);
        })
    });
    group.finish();
}

fn pool(c: &mut Criterion) {
    let spec = payload();
    if !can_spawn(&spec) {
        return;
    }
    let pool = Pool::new(&spec, 2).expect("a pool starts");
    let job = Process {
        args: vec!["/bin/true".into()],
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: Stdio::Null,
        ..Default::default()
    };
    let mut group = c.benchmark_group("pool");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("spawn+wait", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Each job takes a ready sandbox, as a job arriving at a settled pool does.
                assert!(pool.wait_full(Duration::from_secs(30)), "the pool refills");
                let begun = Instant::now();
                let mut child = pool.spawn(black_box(&job)).expect("pool spawn");
                let result = child.wait().expect("wait");
                total += begun.elapsed();
                assert!(result.status.success(), "{:?}", result.status);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, spec_from_json, spawn, pool);
criterion_main!(benches);
