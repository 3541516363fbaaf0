//! rsandbox-bench: start-up latency, throughput, memory per live sandbox and the cost of each
//! option, for rsandbox side by side with bare fork+exec, the namespace floor, bubblewrap and
//! crun, measured interleaved in one run (see scripts/bench, which builds and stages everything).
//!
//! Run it as the unprivileged user whose numbers you want. Every candidate runs the same payload
//! (`/bin/true`, or busybox `true` in crun's bundle) to completion, stdio on /dev/null.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child as Proc, ChildStdin, ChildStdout, Command, Stdio as PStdio};
use std::time::{Duration, Instant};

use rsandbox::{Network, Overlay, OverlayDriver, Root, Seccomp, Spec, Stdio, Want};

const USAGE: &str = "\
usage: rsandbox-bench [OPTIONS]
  --runs N          interleaved start-ups per candidate (default 400)
  --warmup N        untimed start-ups per candidate first (default 20)
  --throughput N    runs per candidate for the 2-worker throughput (default 2000, 0: skip)
  --live N          sandboxes kept alive for the memory figure (default 100, 0: skip)
  --options N       runs per variant of the option breakdown (default 200, 0: skip)
  --rsandbox PATH   the CLI (default: rsandbox beside this binary)
  --floor PATH      the namespace floor program (default: floor beside this binary)
  --python PATH     a python with the rsandbox module (default: none, Python rows skipped)
  --py-worker PATH  bench/py_worker.py (default: beside this binary)
  --busybox PATH    static busybox for crun's bundle and the overlay lower (default /bin/busybox)
  --work DIR        scratch directory (default: a new one in /tmp)
  --sections LIST   only these sections, comma-separated (default: all): startup, throughput,
                    memory, options, big-caller, pool, libc
";

/// The benchmark's sections, in the order they run.
const SECTIONS: [&str; 7] = [
    "startup",
    "throughput",
    "memory",
    "options",
    "big-caller",
    "pool",
    "libc",
];

struct Args {
    runs: usize,
    warmup: usize,
    throughput: usize,
    live: usize,
    options: usize,
    rsandbox: PathBuf,
    floor: PathBuf,
    python: Option<PathBuf>,
    py_worker: PathBuf,
    busybox: PathBuf,
    work: Option<PathBuf>,
    sections: Vec<String>,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn parse_args() -> Args {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut a = Args {
        runs: 400,
        warmup: 20,
        throughput: 2000,
        live: 100,
        options: 200,
        rsandbox: here.join("rsandbox"),
        floor: here.join("floor"),
        python: None,
        py_worker: here.join("py_worker.py"),
        busybox: PathBuf::from("/bin/busybox"),
        work: None,
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let Some(value) = it.next() else {
            eprintln!("rsandbox-bench: {flag} needs a value\n{USAGE}");
            std::process::exit(2);
        };
        let number = || {
            value.parse::<usize>().unwrap_or_else(|_| {
                eprintln!("rsandbox-bench: {flag}: not a number: {value}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--runs" => a.runs = number().max(1),
            "--warmup" => a.warmup = number(),
            "--throughput" => a.throughput = number(),
            "--live" => a.live = number(),
            "--options" => a.options = number(),
            "--rsandbox" => a.rsandbox = value.into(),
            "--floor" => a.floor = value.into(),
            "--python" => a.python = Some(value.into()),
            "--py-worker" => a.py_worker = value.into(),
            "--busybox" => a.busybox = value.into(),
            "--work" => a.work = Some(value.into()),
            "--sections" => {
                a.sections = value.split(',').map(str::to_string).collect();
                if let Some(bad) = a.sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    eprintln!("rsandbox-bench: --sections: unknown section {bad}\n{USAGE}");
                    std::process::exit(2);
                }
            }
            _ => {
                eprintln!("rsandbox-bench: unknown option {flag}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    a
}

// ------------------------------------------------------------------------------- candidates

/// A long-lived Python process that runs one start-up per request and reports its own timing.
struct PyWorker {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PyWorker {
    fn start(python: &Path, script: &Path) -> Result<PyWorker, String> {
        let mut proc = Command::new(python)
            .arg(script)
            .stdin(PStdio::piped())
            .stdout(PStdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", python.display()))?;
        let stdin = proc.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(proc.stdout.take().ok_or("no stdout")?);
        let mut w = PyWorker {
            proc,
            stdin,
            stdout,
        };
        w.run("rsandbox")?;
        Ok(w)
    }

    fn run(&mut self, mode: &str) -> Result<Duration, String> {
        writeln!(self.stdin, "{mode}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let ns: i64 = line
            .trim()
            .parse()
            .map_err(|_| format!("python worker said {line:?}"))?;
        if ns < 0 {
            return Err(format!("python {mode} run failed"));
        }
        Ok(Duration::from_nanos(ns as u64))
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Runs programs on request from inside namespaces made once beforehand, and reports how long
/// each took. crun refuses this host's hybrid cgroup layout, so it runs in a user, mount and cgroup
/// namespace of the benchmark's own with cgroup2 mounted at /sys/fs/cgroup (the host is not
/// touched); making that namespace is not part of any timing.
struct ExecWorker {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ExecWorker {
    fn start_with_cgroup2() -> Result<ExecWorker, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut proc = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--cgroup",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" --exec-worker",
            ])
            .arg(me)
            .stdin(PStdio::piped())
            .stdout(PStdio::piped())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let stdin = proc.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(proc.stdout.take().ok_or("no stdout")?);
        Ok(ExecWorker {
            proc,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, argv: &[String]) -> Result<Duration, String> {
        let request = serde_json::to_string(argv).map_err(|e| e.to_string())?;
        writeln!(self.stdin, "{request}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.trim().parse::<u64>() {
            Ok(ns) => Ok(Duration::from_nanos(ns)),
            Err(_) if line.is_empty() => Err("the exec worker ended".into()),
            Err(_) => Err(line.trim().to_string()),
        }
    }
}

impl Drop for ExecWorker {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// `rsandbox-bench --exec-worker`: one JSON argv per line in, the nanoseconds its run took (or
/// why it failed, on one line) out.
fn exec_worker() -> ! {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str::<Vec<String>>(&line) {
            Ok(argv) if !argv.is_empty() => {
                let start = Instant::now();
                let result = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(PStdio::null())
                    .stdout(PStdio::null())
                    .stderr(PStdio::piped())
                    .output();
                let took = start.elapsed();
                match result {
                    Ok(o) if o.status.success() => took.as_nanos().to_string(),
                    Ok(o) => format!(
                        "{} exited with {}: {}",
                        argv[0],
                        o.status,
                        one_line(&String::from_utf8_lossy(&o.stderr))
                    ),
                    Err(e) => format!("{}: {e}", argv[0]),
                }
            }
            _ => format!("bad request {line:?}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::exit(0)
}

/// How to run crun: its argv (a container name is appended per run), and the workers to run it
/// in when it cannot run on this host directly.
#[derive(Clone)]
struct Crun {
    argv: Vec<String>,
    workers: Option<std::sync::Arc<std::sync::Mutex<Vec<ExecWorker>>>>,
}

impl Crun {
    fn run(&self, name: String) -> Result<Duration, String> {
        let mut argv = self.argv.clone();
        argv.push(name);
        let Some(workers) = &self.workers else {
            return run_once(&How::Exec(argv), None);
        };
        let taken = workers.lock().map_err(|e| e.to_string())?.pop();
        let mut worker = match taken {
            Some(w) => w,
            None => ExecWorker::start_with_cgroup2()?,
        };
        let took = worker.run(&argv);
        if let Ok(mut w) = workers.lock() {
            w.push(worker);
        }
        took
    }

    /// Where it ran, for a note under the tables.
    fn note(&self) -> Option<&'static str> {
        self.workers.as_ref().map(|_| {
            "crun refuses this host's hybrid cgroup layout, so it ran in a user, mount and cgroup namespace made once by the benchmark, with cgroup2 mounted at /sys/fs/cgroup (not part of the timings)"
        })
    }
}

enum How {
    /// Start a program and wait for it.
    Exec(Vec<String>),
    /// `rsandbox::spawn` + `wait` in this process.
    Library(Box<Spec>),
    /// One start-up in the Python worker (`rsandbox`, `pool` or `subprocess`).
    Python(&'static str),
    /// A job in a warm pool of this process.
    Pool(std::sync::Arc<rsandbox::Pool>),
    /// `crun run` with this container name.
    Crun(Crun, String),
    /// The namespace floor's syscalls from this process (no launcher executed).
    Floor(std::sync::Arc<InProcessFloor>),
}

struct Candidate {
    name: String,
    how: How,
    samples: Vec<Duration>,
    /// Why it is not measured.
    missing: Option<String>,
}

impl Candidate {
    fn new(name: &str, how: How) -> Candidate {
        Candidate {
            name: name.into(),
            how,
            samples: Vec::new(),
            missing: None,
        }
    }

    fn unavailable(name: &str, why: String) -> Candidate {
        Candidate {
            name: name.into(),
            how: How::Exec(Vec::new()),
            samples: Vec::new(),
            missing: Some(why),
        }
    }
}

fn run_once(how: &How, py: Option<&mut PyWorker>) -> Result<Duration, String> {
    match how {
        How::Exec(argv) => {
            let start = Instant::now();
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(PStdio::null())
                .stdout(PStdio::null())
                .stderr(PStdio::null())
                .status()
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            let took = start.elapsed();
            if !status.success() {
                return Err(format!("{} exited with {status}", argv.join(" ")));
            }
            Ok(took)
        }
        How::Library(spec) => {
            let start = Instant::now();
            let mut child = rsandbox::spawn(spec).map_err(|e| e.to_string())?;
            let r = child.wait().map_err(|e| e.to_string())?;
            let took = start.elapsed();
            if !r.status.success() {
                return Err(format!("library run ended {:?}", r.status));
            }
            Ok(took)
        }
        How::Python(mode) => py.ok_or("no python worker")?.run(mode),
        How::Crun(crun, name) => crun.run(name.clone()),
        How::Floor(floor) => floor.run(),
        How::Pool(pool) => {
            let process = rsandbox::Process {
                args: vec!["/bin/true".into()],
                stdin: Stdio::Null,
                stdout: Stdio::Null,
                stderr: Stdio::Null,
                ..Default::default()
            };
            let start = Instant::now();
            let mut child = pool.spawn(&process).map_err(|e| e.to_string())?;
            let r = child.wait().map_err(|e| e.to_string())?;
            let took = start.elapsed();
            if !r.status.success() {
                return Err(format!("pooled run ended {:?}", r.status));
            }
            Ok(took)
        }
    }
}

/// The namespace floor made from this process: bench/floor.c's syscalls (user, mount, PID, IPC,
/// UTS and network namespaces, id maps, a private tree, a fresh /proc, exec of the payload as
/// pid 1) in a child started the way the library starts its sandboxes (`clone` sharing this
/// memory until the exec, namespaces in the clone flags), so no launcher program is executed
/// first. What the kernel itself charges for a start, the ceiling for in-process throughput.
struct InProcessFloor {
    uid_map: std::ffi::CString,
    gid_map: std::ffi::CString,
    program: std::ffi::CString,
}

impl InProcessFloor {
    fn new(program: &str) -> InProcessFloor {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let cstring = |s: String| std::ffi::CString::new(s).expect("no NUL");
        InProcessFloor {
            uid_map: cstring(format!("{uid} {uid} 1\n")),
            gid_map: cstring(format!("{gid} {gid} 1\n")),
            program: cstring(program.into()),
        }
    }

    fn run(&self) -> Result<Duration, String> {
        const STACK: usize = 64 * 1024;
        let mut stack = vec![0u8; STACK];
        let flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::SIGCHLD;
        let start = Instant::now();
        // SAFETY: the child runs floor_child on its own stack (the top of `stack`, 16-aligned)
        // with `self`, both alive until it has executed or exited: CLONE_VFORK suspends this
        // thread until then. floor_child makes only raw syscalls on memory prepared here.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(STACK) as usize & !15;
            libc::clone(
                floor_child,
                top as *mut libc::c_void,
                flags,
                self as *const InProcessFloor as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(format!("clone: {}", std::io::Error::last_os_error()));
        }
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; pid is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        let took = start.elapsed();
        drop(stack);
        if status != 0 {
            return Err(format!("in-process floor: wait status {status:#x}"));
        }
        Ok(took)
    }
}

/// The in-process floor's child: pid 1 of its namespaces. Exits 125 when a syscall fails.
extern "C" fn floor_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the InProcessFloor the parent keeps alive while suspended (CLONE_VFORK).
    let f = unsafe { &*(arg as *const InProcessFloor) };
    let write_file = |path: &std::ffi::CStr, text: &std::ffi::CStr| -> bool {
        let len = text.to_bytes().len();
        // SAFETY: path and text are NUL-terminated and outlive the calls.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return false;
            }
            let n = libc::write(fd, text.as_ptr().cast(), len);
            libc::close(fd);
            n == len as isize
        }
    };
    let ok = write_file(c"/proc/self/uid_map", &f.uid_map)
        && write_file(c"/proc/self/setgroups", c"deny")
        && write_file(c"/proc/self/gid_map", &f.gid_map);
    // SAFETY: mount and execve read only the NUL-terminated strings and arrays given; _exit ends
    // this child without touching the shared memory.
    unsafe {
        let none = std::ptr::null::<libc::c_void>();
        if !ok
            || libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                none,
            ) < 0
            || libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                none,
            ) < 0
        {
            libc::_exit(125);
        }
        let argv = [f.program.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        libc::execve(f.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// The library's candidates: the full default isolation, without a cgroup of its own (bwrap
/// makes none; where the caller's cgroup is delegated, as scripts/bench arranges for the option
/// table, the default would make one per sandbox). The option table shows what one costs.
fn payload_spec() -> Spec {
    let mut spec = Spec::new(["/bin/true"]);
    spec.cgroup.want = Want::Off;
    spec.process.stdin = Stdio::Null;
    spec.process.stdout = Stdio::Null;
    spec.process.stderr = Stdio::Null;
    spec
}

/// The library's payload with every tree built in full: what the mount tree's template saves.
fn full_tree_spec() -> Spec {
    let mut spec = payload_spec();
    spec.filesystem.template = false;
    spec
}

// ------------------------------------------------------------------------------- statistics

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(samples: &[Duration]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2
    };
    Some(Stats {
        median,
        p99: rank(0.99),
        mean: s.iter().sum::<Duration>() / s.len() as u32,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Option<Duration>) -> String {
    match b {
        Some(b) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

// ------------------------------------------------------------------------------- set-up

/// The run's figures that the performance targets are stated in, as the sections find them.
#[derive(Default)]
struct Targets {
    /// `rsandbox run` against bwrap, start-up medians.
    cli_vs_bwrap: Option<f64>,
    /// The library against the namespace floor program, start-up medians.
    library_vs_floor: Option<f64>,
    /// The library's warm pool against fork+exec, start-up medians.
    pool_vs_fork: Option<f64>,
    /// Python `Pool.run` against `subprocess.run`, start-up medians.
    py_pool_vs_subprocess: Option<f64>,
    /// The library's sandboxes per second against bwrap's, 2 workers.
    throughput_vs_bwrap: Option<f64>,
    /// The caller's growth per live sandbox, KiB.
    caller_kib: Option<f64>,
}

impl Targets {
    /// Prints each figure beside its target; a figure the run did not measure is left out.
    fn print(&self) {
        let ratio = |x: f64| format!("{x:.3}x");
        let rows = [
            (
                "`rsandbox run` start-up, against bwrap",
                self.cli_vs_bwrap,
                0.65,
                true,
                ratio as fn(f64) -> String,
            ),
            (
                "library start-up, against the namespace floor (C)",
                self.library_vs_floor,
                1.05,
                true,
                ratio,
            ),
            (
                "warm pool job, against fork+exec",
                self.pool_vs_fork,
                1.5,
                true,
                ratio,
            ),
            (
                "Python `Pool.run`, against `subprocess.run`",
                self.py_pool_vs_subprocess,
                1.3,
                true,
                ratio,
            ),
            (
                "library throughput (2 workers), against bwrap",
                self.throughput_vs_bwrap,
                2.0,
                false,
                ratio,
            ),
            (
                "the caller's memory per live sandbox",
                self.caller_kib,
                1024.0,
                true,
                |k| format!("{k:.0} KiB"),
            ),
        ];
        if rows.iter().all(|r| r.1.is_none()) {
            return;
        }
        println!("\n## Against the targets (this run)\n");
        println!("| figure | measured | target | met |");
        println!("|---|---:|---:|---|");
        for (name, value, target, at_most, show) in rows {
            let Some(v) = value else { continue };
            let (bound, met) = if at_most {
                (format!("<= {}", show(target)), v <= target)
            } else {
                (format!(">= {}", show(target)), v >= target)
            };
            println!(
                "| {name} | {} | {bound} | {} |",
                show(v),
                if met { "yes" } else { "no" }
            );
        }
    }
}

fn busybox_root(busybox: &Path, dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc", "work", "sys"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))
        .map_err(|e| format!("{}: {e}", busybox.display()))?;
    for tool in ["sh", "true", "sleep"] {
        let link = root.join("bin").join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| e.to_string())?;
        }
    }
    Ok(root)
}

/// A rootless crun bundle running busybox `true`, or why there is none.
fn crun_bundle(work: &Path, rootfs: &Path) -> Result<Crun, String> {
    let crun = which("crun").ok_or("crun is not installed (apt-get install crun)")?;
    let bundle = work.join("crun-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    let out = Command::new(&crun)
        .args(["spec", "--rootless"])
        .current_dir(&bundle)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "crun spec --rootless: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["root"]["path"] = serde_json::json!(rootfs.display().to_string());
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    let state = work.join("crun-state");
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let argv: Vec<String> = vec![
        crun.display().to_string(),
        "--root".into(),
        state.display().to_string(),
        "--cgroup-manager=disabled".into(),
        "run".into(),
        "--bundle".into(),
        bundle.display().to_string(),
    ];
    // One trial run tells whether crun works on this host as it is; if not, whether it works in
    // a cgroup2 view of the benchmark's own.
    let mut trial: Vec<String> = argv.clone();
    trial.push("rsandbox-bench-trial".into());
    let out = Command::new(&trial[0])
        .args(&trial[1..])
        .stdin(PStdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(Crun {
            argv,
            workers: None,
        });
    }
    let direct = one_line(String::from_utf8_lossy(&out.stderr).trim());
    let crun = Crun {
        argv,
        workers: Some(std::sync::Arc::new(std::sync::Mutex::new(Vec::new()))),
    };
    match crun.run("rsandbox-bench-trial2".into()) {
        Ok(_) => Ok(crun),
        Err(e) => Err(format!(
            "crun run failed here ({direct}), and in a cgroup2 namespace of its own ({})",
            one_line(&e)
        )),
    }
}

/// bwrap with the isolation the issue compares against, running `payload`.
fn bwrap_argv(bwrap: &Path, payload: &[&str]) -> Vec<String> {
    let mut argv = vec![bwrap.display().to_string()];
    argv.extend(
        [
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--die-with-parent",
        ]
        .map(String::from),
    );
    argv.extend(payload.iter().map(|s| s.to_string()));
    argv
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/bin:/bin".into())
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ------------------------------------------------------------------------------- sections

fn startup(a: &Args, work: &Path, rootfs: &Path, py: &mut Option<PyWorker>, targets: &mut Targets) {
    let true_bin = "/bin/true".to_string();
    let mut cands = vec![
        Candidate::new("fork+exec", How::Exec(vec![true_bin.clone()])),
        if a.floor.is_file() {
            Candidate::new(
                "namespace floor (C)",
                How::Exec(vec![a.floor.display().to_string(), true_bin.clone()]),
            )
        } else {
            Candidate::unavailable(
                "namespace floor (C)",
                format!("{} missing", a.floor.display()),
            )
        },
        Candidate::new(
            "namespace floor, in-process",
            How::Floor(std::sync::Arc::new(InProcessFloor::new(&true_bin))),
        ),
        Candidate::new("rsandbox library", How::Library(Box::new(payload_spec()))),
        Candidate::new(
            "rsandbox library, tree built in full",
            How::Library(Box::new(full_tree_spec())),
        ),
        if a.rsandbox.is_file() {
            Candidate::new(
                "rsandbox run (CLI)",
                How::Exec(vec![
                    a.rsandbox.display().to_string(),
                    "run".into(),
                    "--".into(),
                    true_bin.clone(),
                ]),
            )
        } else {
            Candidate::unavailable(
                "rsandbox run (CLI)",
                format!("{} missing", a.rsandbox.display()),
            )
        },
    ];
    cands.push(match rsandbox::Pool::new(&payload_spec(), 2) {
        Ok(pool) => Candidate::new(
            "rsandbox library, warm pool",
            How::Pool(std::sync::Arc::new(pool)),
        ),
        Err(e) => Candidate::unavailable("rsandbox library, warm pool", e.to_string()),
    });
    if py.is_some() {
        cands.push(Candidate::new(
            "python rsandbox.run",
            How::Python("rsandbox"),
        ));
        cands.push(Candidate::new("python Pool.run", How::Python("pool")));
        cands.push(Candidate::new(
            "python subprocess.run",
            How::Python("subprocess"),
        ));
    } else {
        for name in [
            "python rsandbox.run",
            "python Pool.run",
            "python subprocess.run",
        ] {
            cands.push(Candidate::unavailable(name, "no --python given".into()));
        }
    }
    cands.push(match which("bwrap") {
        Some(b) => Candidate::new("bwrap", How::Exec(bwrap_argv(&b, &["/bin/true"]))),
        None => Candidate::unavailable("bwrap", "bubblewrap is not installed".into()),
    });
    let crun = crun_bundle(work, rootfs);
    cands.push(match &crun {
        Ok(c) => Candidate::new("crun run (rootless)", How::Crun(c.clone(), String::new())),
        Err(why) => Candidate::unavailable("crun run (rootless)", why.clone()),
    });

    let total = a.warmup + a.runs;
    eprintln!(
        "start-up: {} candidates x {} runs (+{} warm-up), interleaved",
        cands.iter().filter(|c| c.missing.is_none()).count(),
        a.runs,
        a.warmup
    );
    // The pools refill in the background after each pooled job; every measurement starts once
    // they are full again, so that no candidate is timed while a refill competes with it (the
    // refill's cost shows in the throughput section instead).
    let pools: Vec<std::sync::Arc<rsandbox::Pool>> = cands
        .iter()
        .filter_map(|c| match &c.how {
            How::Pool(p) if c.missing.is_none() => Some(p.clone()),
            _ => None,
        })
        .collect();
    for round in 0..total {
        // Rotate the order so that no candidate always follows the same one.
        let n = cands.len();
        for k in 0..n {
            let i = (round + k) % n;
            if cands[i].missing.is_some() {
                continue;
            }
            for p in &pools {
                p.wait_full(Duration::from_secs(30));
            }
            if let Some(w) = py.as_mut() {
                let _ = w.run("settle");
            }
            let how = match &cands[i].how {
                How::Exec(v) => How::Exec(v.clone()),
                How::Library(s) => How::Library(s.clone()),
                How::Python(m) => How::Python(m),
                How::Pool(p) => How::Pool(p.clone()),
                How::Floor(f) => How::Floor(f.clone()),
                // crun needs a fresh container name per run.
                How::Crun(c, _) => How::Crun(c.clone(), format!("rsbx-bench-{round}")),
            };
            match run_once(&how, py.as_mut()) {
                Ok(d) if round >= a.warmup => cands[i].samples.push(d),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}: {e}", cands[i].name);
                    cands[i].missing = Some(e);
                }
            }
        }
    }
    let median_of = |name: &str| {
        cands
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| stats(&c.samples))
            .map(|s| s.median)
    };
    let (bwrap, fork, floor) = (
        median_of("bwrap"),
        median_of("fork+exec"),
        median_of("namespace floor (C)"),
    );
    println!(
        "\n## Start-up of `/bin/true` ({} interleaved runs each; ms)\n",
        a.runs
    );
    println!("| candidate | median | p99 | mean | vs bwrap | vs floor | vs fork+exec |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in &cands {
        match (stats(&c.samples), &c.missing) {
            (Some(s), None) => println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                ms(s.median),
                ms(s.p99),
                ms(s.mean),
                ratio(s.median, bwrap),
                ratio(s.median, floor),
                ratio(s.median, fork)
            ),
            (_, Some(why)) => println!("| {} | n/a: {} | | | | | |", c.name, one_line(why)),
            (None, None) => println!("| {} | n/a | | | | | |", c.name),
        }
    }
    if let Some(note) = crun.as_ref().ok().and_then(Crun::note) {
        println!("\n{note}.");
    }
    let against = |name: &str, base: Option<Duration>| {
        Some(median_of(name)?.as_secs_f64() / base?.as_secs_f64())
    };
    targets.cli_vs_bwrap = against("rsandbox run (CLI)", bwrap);
    targets.library_vs_floor = against("rsandbox library", floor);
    targets.pool_vs_fork = against("rsandbox library, warm pool", fork);
    targets.py_pool_vs_subprocess = against("python Pool.run", median_of("python subprocess.run"));
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(100).collect()
}

fn throughput(a: &Args, work: &Path, rootfs: &Path, targets: &mut Targets) {
    if a.throughput == 0 {
        return;
    }
    type Job<'a> = Box<dyn Fn(usize) -> Result<(), String> + Sync + 'a>;
    // What the jobs borrow, declared before them.
    let spec = payload_spec();
    let full = full_tree_spec();
    let floor = InProcessFloor::new("/bin/true");
    let pool = rsandbox::Pool::new(&payload_spec(), 4).map(std::sync::Arc::new);
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let mut candidates: Vec<(String, Result<Job, String>)> = Vec::new();
    // The floor's throughput is the kernel's own ceiling for these namespaces on this machine.
    if a.floor.is_file() {
        let argv = vec![a.floor.display().to_string(), "/bin/true".into()];
        candidates.push((
            "namespace floor (C)".into(),
            Ok(Box::new(move |_| {
                run_once(&How::Exec(argv.clone()), None).map(|_| ())
            })),
        ));
    } else {
        let why = format!("{} missing", a.floor.display());
        candidates.push(("namespace floor (C)".into(), Err(why)));
    }
    candidates.push((
        "namespace floor, in-process".into(),
        Ok(Box::new(|_| floor.run().map(|_| ()))),
    ));
    candidates.push((
        "rsandbox library".into(),
        Ok(Box::new(|_| {
            run_once(&How::Library(Box::new(spec.clone())), None).map(|_| ())
        })),
    ));
    candidates.push((
        "rsandbox library, tree built in full".into(),
        Ok(Box::new(|_| {
            run_once(&How::Library(Box::new(full.clone())), None).map(|_| ())
        })),
    ));
    match &pool {
        Ok(pool) => {
            pool.wait_full(Duration::from_secs(30));
            candidates.push((
                "rsandbox library, warm pool of 4".into(),
                Ok(Box::new(move |_| {
                    run_once(&How::Pool(pool.clone()), None).map(|_| ())
                })),
            ));
        }
        Err(e) => candidates.push((
            "rsandbox library, warm pool of 4".into(),
            Err(e.to_string()),
        )),
    }
    let cli = vec![
        a.rsandbox.display().to_string(),
        "run".into(),
        "--".into(),
        "/bin/true".into(),
    ];
    candidates.push((
        "rsandbox run (CLI)".into(),
        Ok(Box::new(move |_| {
            run_once(&How::Exec(cli.clone()), None).map(|_| ())
        })),
    ));
    match which("bwrap") {
        Some(b) => {
            let argv: Vec<String> = bwrap_argv(&b, &["/bin/true"]);
            candidates.push((
                "bwrap".into(),
                Ok(Box::new(move |_| {
                    run_once(&How::Exec(argv.clone()), None).map(|_| ())
                })),
            ));
        }
        None => candidates.push(("bwrap".into(), Err("bwrap not installed".into()))),
    }
    match crun_bundle(work, rootfs) {
        Ok(crun) => candidates.push((
            "crun run (rootless)".into(),
            Ok(Box::new({
                let counter = &counter;
                move |_| {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crun.run(format!("rsbx-tp-{n}")).map(|_| ())
                }
            })),
        )),
        Err(why) => candidates.push(("crun run (rootless)".into(), Err(why))),
    }
    // In rounds, each candidate in turn, so that the machine's drift over the minutes this takes
    // (other load, the kernel's deferred namespace teardown) is shared by all.
    const ROUNDS: usize = 5;
    let each = (a.throughput / 2 / ROUNDS).max(1);
    // Runs, wall seconds and busy CPU seconds (all CPUs, kernel threads included) per candidate.
    type Totals = (usize, f64, Option<f64>);
    let mut done: Vec<Result<Totals, String>> = candidates
        .iter()
        .map(|(_, job)| {
            job.as_ref()
                .map(|_| (0, 0.0, Some(0.0)))
                .map_err(Clone::clone)
        })
        .collect();
    // Each candidate's rate in each round, to show how far one run's ratios spread.
    let mut by_round: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    for _ in 0..ROUNDS {
        for (((_, job), total), rounds) in candidates
            .iter()
            .zip(done.iter_mut())
            .zip(by_round.iter_mut())
        {
            let (Ok(job), Ok((runs, secs, cpu))) = (job, total.as_mut()) else {
                continue;
            };
            let busy = cpu_busy_secs();
            match timed_workers(each, job) {
                Ok(rate) => {
                    rounds.push(rate);
                    *runs += each * 2;
                    *secs += (each * 2) as f64 / rate;
                    *cpu = match (*cpu, busy, cpu_busy_secs()) {
                        (Some(sum), Some(before), Some(after)) => Some(sum + after - before),
                        _ => None,
                    };
                }
                Err(e) => *total = Err(e),
            }
        }
    }
    // Sandboxes per second and CPU milliseconds per sandbox.
    type Rate = (f64, Option<f64>);
    let rows: Vec<(String, Result<Rate, String>)> = candidates
        .iter()
        .zip(done)
        .map(|((name, _), total)| {
            let per = total
                .map(|(runs, secs, cpu)| (runs as f64 / secs, cpu.map(|c| c * 1e3 / runs as f64)));
            (name.clone(), per)
        })
        .collect();
    let each = each * ROUNDS;
    let bwrap = rows
        .iter()
        .find(|r| r.0 == "bwrap")
        .and_then(|r| r.1.as_ref().ok().map(|(rate, _)| *rate));
    println!(
        "\n## Throughput: 2 workers, {} runs each candidate (sandboxes/s; CPU: all CPUs' busy time per sandbox, kernel threads included, ms)\n",
        each * 2
    );
    println!("| candidate | per second | vs bwrap | CPU |");
    println!("|---|---:|---:|---:|");
    for (name, r) in rows {
        if let (Ok((rate, _)), Some(b), "rsandbox library") = (&r, bwrap, name.as_str()) {
            targets.throughput_vs_bwrap = Some(rate / b);
        }
        match r {
            Ok((rate, cpu)) => println!(
                "| {name} | {rate:.0} | {} | {} |",
                bwrap.map_or("-".into(), |b| format!("{:.2}x", rate / b)),
                cpu.map_or("-".into(), |c| format!("{c:.2}"))
            ),
            Err(e) => println!("| {name} | n/a: {} | | |", one_line(&e)),
        }
    }
    // The library against bwrap round by round (each pair ran minutes apart at most).
    let rounds_of = |name: &str| {
        candidates
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| &by_round[i])
    };
    if let (Some(lib), Some(bw)) = (rounds_of("rsandbox library"), rounds_of("bwrap")) {
        if lib.len() == bw.len() && !lib.is_empty() {
            let ratios: Vec<String> = lib
                .iter()
                .zip(bw)
                .map(|(l, b)| format!("{:.2}x", l / b))
                .collect();
            println!(
                "\nThe library against bwrap, round by round: {}.",
                ratios.join(", ")
            );
        }
    }
}

/// Busy time of all CPUs since boot (user, nice, system, irq and softirq; not idle, iowait or
/// the hypervisor's steal), in seconds, from /proc/stat.
fn cpu_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied())
        .sum::<Option<u64>>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// Runs `job` `each` times on each of 2 threads; returns runs per second.
fn timed_workers<F>(each: usize, job: &F) -> Result<f64, String>
where
    F: Fn(usize) -> Result<(), String> + Sync + ?Sized,
{
    let start = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..each {
                        job(i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let took = start.elapsed();
    for r in results {
        r?;
    }
    Ok((each * 2) as f64 / took.as_secs_f64())
}

/// Resident and proportional set size (KiB) of a process.
fn rss_pss_kib(pid: u32) -> (Option<u64>, Option<u64>) {
    let field = |path: String, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    (
        field(format!("/proc/{pid}/status"), "VmRSS:"),
        field(format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    )
}

fn memory(a: &Args, targets: &mut Targets) {
    if a.live == 0 {
        return;
    }
    println!(
        "\n## Memory while {} sandboxes run `sleep 60` (KiB per sandbox)\n",
        a.live
    );
    println!("| what | RSS | PSS |");
    println!("|---|---:|---:|");
    // The library: this process is the supervisor of every sandbox.
    let me = std::process::id();
    let (before, _) = rss_pss_kib(me);
    let mut spec = payload_spec();
    spec.process.args = vec!["/bin/sleep".into(), "60".into()];
    let mut children = Vec::new();
    for _ in 0..a.live {
        match rsandbox::spawn(&spec) {
            Ok(c) => children.push(c),
            Err(e) => {
                println!("| library | n/a: {e} | |");
                return;
            }
        }
    }
    let (after, _) = rss_pss_kib(me);
    let per = |total: u64| format!("{:.0}", total as f64 / a.live as f64);
    if let (Some(b), Some(x)) = (before, after) {
        println!(
            "| library: the caller's growth | {} | |",
            per(x.saturating_sub(b))
        );
        targets.caller_kib = Some(x.saturating_sub(b) as f64 / a.live as f64);
    }
    let (mut rss, mut pss, mut seen) = (0, 0, 0);
    for c in &children {
        let (r, p) = rss_pss_kib(c.pid() as u32);
        if let Some(r) = r {
            rss += r;
            pss += p.unwrap_or(0);
            seen += 1;
        }
    }
    if seen > 0 {
        println!(
            "| library: each sandbox's init process | {:.0} | {:.0} |",
            rss as f64 / seen as f64,
            pss as f64 / seen as f64
        );
    }
    for mut c in children {
        let _ = c.kill(libc::SIGKILL);
        let _ = c.wait();
    }
    // Supervisor processes of the command-line tools.
    let mut tools: Vec<(String, Vec<String>)> = vec![(
        "rsandbox run: the CLI process".into(),
        vec![
            a.rsandbox.display().to_string(),
            "run".into(),
            "--".into(),
            "/bin/sleep".into(),
            "60".into(),
        ],
    )];
    if let Some(b) = which("bwrap") {
        tools.push((
            "bwrap: the bwrap process".into(),
            bwrap_argv(&b, &["/bin/sleep", "60"]),
        ));
    }
    for (name, argv) in tools {
        let mut procs = Vec::new();
        for _ in 0..a.live {
            match Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(PStdio::null())
                .stdout(PStdio::null())
                .stderr(PStdio::null())
                .spawn()
            {
                Ok(p) => procs.push(p),
                Err(e) => {
                    println!("| {name} | n/a: {e} | |");
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let (mut rss, mut pss, mut seen) = (0, 0, 0);
        for p in &procs {
            if let (Some(r), p) = rss_pss_kib(p.id()) {
                rss += r;
                pss += p.unwrap_or(0);
                seen += 1;
            }
        }
        if seen > 0 {
            println!(
                "| {name} | {:.0} | {:.0} |",
                rss as f64 / seen as f64,
                pss as f64 / seen as f64
            );
        }
        for mut p in procs {
            // SAFETY: kill(2) on the pid of a child this function started and has not reaped.
            unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
            let _ = p.wait();
        }
    }
}

fn option_costs(a: &Args, rootfs: &Path) {
    if a.options == 0 {
        return;
    }
    let base = payload_spec();
    let mut variants: Vec<(String, Result<Spec, String>)> =
        vec![("default (no cgroup)".into(), Ok(base.clone()))];
    let mut v = base.clone();
    v.security.seccomp = Seccomp::None;
    variants.push(("without seccomp".into(), Ok(v)));
    let mut v = base.clone();
    v.security.landlock.want = Want::Off;
    variants.push(("without Landlock".into(), Ok(v)));
    let mut v = base.clone();
    v.network = Network::Host;
    variants.push(("without a network namespace".into(), Ok(v)));
    let mut v = base.clone();
    v.security.seccomp = Seccomp::None;
    v.security.landlock.want = Want::Off;
    v.security.mask_proc = false;
    variants.push((
        "namespaces only (no seccomp, Landlock, /proc masks)".into(),
        Ok(v),
    ));
    let cgroup_parent = std::env::var_os("RSANDBOX_CGROUP_PARENT")
        .or_else(|| std::env::var_os("RSANDBOX_TEST_CGROUP"))
        .map(PathBuf::from);
    variants.push((
        "with its own cgroup".into(),
        match cgroup_parent {
            Some(p) => {
                let mut v = base.clone();
                v.cgroup.parent = Some(p);
                v.cgroup.want = Want::Required;
                Ok(v)
            }
            None => Err("no delegated cgroup (set RSANDBOX_CGROUP_PARENT)".into()),
        },
    ));
    for (name, driver) in [
        ("overlay root, kernel overlayfs", OverlayDriver::Kernel),
        ("overlay root, fuse-overlayfs", OverlayDriver::Fuse),
    ] {
        let mut v = base.clone();
        v.process.args = vec!["/bin/true".into()];
        v.filesystem.root = Root::Overlay(Overlay {
            lowers: vec![rootfs.to_path_buf()],
            driver,
            ..Overlay::default()
        });
        variants.push((name.into(), Ok(v)));
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut missing: Vec<Option<String>> = variants
        .iter()
        .map(|(_, s)| s.as_ref().err().cloned())
        .collect();
    for round in 0..(a.options + a.warmup) {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let (Ok(spec), None) = (&variants[i].1, &missing[i]) else {
                continue;
            };
            match run_once(&How::Library(Box::new(spec.clone())), None) {
                Ok(d) if round >= a.warmup => samples[i].push(d),
                Ok(_) => {}
                Err(e) => missing[i] = Some(e),
            }
        }
    }
    let base_median = stats(&samples[0]).map(|s| s.median);
    println!(
        "\n## Cost of each option (library spawn + wait, {} interleaved runs each; ms)\n",
        a.options
    );
    println!("| variant | median | p99 | vs default |");
    println!("|---|---:|---:|---:|");
    for (i, (name, _)) in variants.iter().enumerate() {
        match (stats(&samples[i]), &missing[i]) {
            (Some(s), None) => {
                let delta = base_median.map_or("-".into(), |b| {
                    format!("{:+.3}", (s.median.as_secs_f64() - b.as_secs_f64()) * 1e3)
                });
                println!("| {name} | {} | {} | {delta} |", ms(s.median), ms(s.p99));
            }
            (_, Some(why)) => println!("| {name} | n/a: {} | | |", one_line(why)),
            (None, None) => println!("| {name} | n/a | | |"),
        }
    }
}

/// Start-up from a caller with a large resident heap: the cost of copying the caller's page
/// tables at clone shows here (fork+exec through std's vfork-based spawn does not pay it).
fn big_caller(a: &Args) {
    if a.options == 0 {
        return;
    }
    const MIB: usize = 1 << 20;
    let runs = a.options.min(100);
    println!("\n## Start-up from a caller with a large resident heap ({runs} runs each; ms)\n");
    println!("| caller's extra resident memory | rsandbox library | fork+exec |");
    println!("|---|---:|---:|");
    for size in [0, 256 * MIB, 1024 * MIB] {
        let heap: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect();
        let lib = How::Library(Box::new(payload_spec()));
        let exec = How::Exec(vec!["/bin/true".into()]);
        let (mut l, mut e) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if let (Ok(x), Ok(y)) = (run_once(&lib, None), run_once(&exec, None)) {
                l.push(x);
                e.push(y);
            }
        }
        std::hint::black_box(&heap);
        let med = |v: &[Duration]| stats(v).map_or("n/a".into(), |s| ms(s.median));
        println!("| {} MiB | {} | {} |", size / MIB, med(&l), med(&e));
    }
}

/// The C library's own start: an empty static glibc program against one with no C library and,
/// where musl-gcc is installed, one with musl (all built by scripts/bench beside the floor
/// program). Every dynamic or static glibc program pays the difference at each exec: the
/// payload, bwrap, crun and the floor program (the CLI is a static musl executable where Rust's
/// musl target is installed).
fn libc_start(a: &Args) {
    if a.options == 0 {
        return;
    }
    let dir = a.floor.parent().unwrap_or(Path::new("."));
    let (glibc, nolibc) = (dir.join("empty-glibc"), dir.join("empty-nolibc"));
    if !glibc.is_file() || !nolibc.is_file() {
        println!("\n## The C library's start: n/a: empty-glibc or empty-nolibc missing beside the floor program");
        return;
    }
    let musl = dir.join("empty-musl");
    let mut hows = vec![
        ("static, no C library", nolibc.display().to_string()),
        ("static glibc", glibc.display().to_string()),
        ("/bin/true (dynamic glibc)", "/bin/true".into()),
    ];
    if musl.is_file() {
        hows.insert(1, ("static musl", musl.display().to_string()));
    }
    let (names, hows): (Vec<&str>, Vec<How>) = hows
        .into_iter()
        .map(|(name, path)| (name, How::Exec(vec![path])))
        .unzip();
    let mut samples = vec![Vec::new(); hows.len()];
    for i in 0..(a.options + a.warmup) {
        for (how, s) in hows.iter().zip(samples.iter_mut()) {
            if let Ok(d) = run_once(how, None) {
                if i >= a.warmup {
                    s.push(d);
                }
            }
        }
    }
    println!(
        "\n## The C library's start (fork+exec of an empty program, {} interleaved runs each; ms)\n",
        a.options
    );
    println!("| program | median | p99 |");
    println!("|---|---:|---:|");
    for (name, s) in names.iter().zip(samples.iter()) {
        match stats(s) {
            Some(st) => println!("| {name} | {} | {} |", ms(st.median), ms(st.p99)),
            None => println!("| {name} | n/a | |"),
        }
    }
}

/// A warm pool given time to refill before each job (no other candidate running), side by side
/// with fork+exec: the latency a caller sees when jobs arrive slower than the pool refills.
fn pool_alone(a: &Args) {
    if a.options == 0 {
        return;
    }
    let pool = match rsandbox::Pool::new(&payload_spec(), 2) {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => {
            println!("\n## Warm pool, one job at a time: n/a: {e}");
            return;
        }
    };
    let (mut pooled, mut exec) = (Vec::new(), Vec::new());
    let fork = How::Exec(vec!["/bin/true".into()]);
    for i in 0..(a.options + a.warmup) {
        pool.wait_full(Duration::from_secs(30));
        if let (Ok(p), Ok(e)) = (
            run_once(&How::Pool(pool.clone()), None),
            run_once(&fork, None),
        ) {
            if i >= a.warmup {
                pooled.push(p);
                exec.push(e);
            }
        }
    }
    let (Some(p), Some(e)) = (stats(&pooled), stats(&exec)) else {
        return;
    };
    println!(
        "\n## Warm pool, one job at a time ({} runs; the pool refilled before each; ms)\n",
        pooled.len()
    );
    println!("| candidate | median | p99 | vs fork+exec |");
    println!("|---|---:|---:|---:|");
    println!(
        "| rsandbox library, warm pool | {} | {} | {} |",
        ms(p.median),
        ms(p.p99),
        ratio(p.median, Some(e.median))
    );
    println!("| fork+exec | {} | {} | 1.00x |", ms(e.median), ms(e.p99));
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    format!("kernel {}, {cpus} CPUs ({model}), uid {uid}", kernel.trim())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--exec-worker") {
        exec_worker();
    }
    let a = parse_args();
    let work = match &a.work {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("rsandbox-bench-{}", std::process::id())),
    };
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("rsandbox-bench: {}: {e}", work.display());
        std::process::exit(1);
    }
    let rootfs = match busybox_root(&a.busybox, &work) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rsandbox-bench: cannot make the busybox rootfs: {e}");
            std::process::exit(1);
        }
    };
    let mut py = match &a.python {
        Some(p) => match PyWorker::start(p, &a.py_worker) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("rsandbox-bench: python worker: {e}");
                None
            }
        },
        None => None,
    };
    println!("# rsandbox-bench: {}", machine());
    let mut targets = Targets::default();
    if a.wants("startup") {
        startup(&a, &work, &rootfs, &mut py, &mut targets);
    }
    drop(py);
    if a.wants("throughput") {
        throughput(&a, &work, &rootfs, &mut targets);
    }
    if a.wants("memory") {
        memory(&a, &mut targets);
    }
    if a.wants("options") {
        option_costs(&a, &rootfs);
    }
    if a.wants("big-caller") {
        big_caller(&a);
    }
    if a.wants("pool") {
        pool_alone(&a);
    }
    if a.wants("libc") {
        libc_start(&a);
    }
    targets.print();
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}
