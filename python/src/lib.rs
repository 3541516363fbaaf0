//! The native half of `rsandbox`: thin conversions between Python and the library. The public,
//! documented API is the pure-Python package `rsandbox`; this module (`rsandbox._rsandbox`) takes
//! and returns JSON specs and results, releases the GIL around spawn and wait, and raises
//! `NativeError(kind, message, errno, step, remedy, path)`, which the package maps to its exception
//! classes in one place.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rsandbox::{Child, Error, RunResult, Spec};

create_exception!(_rsandbox, NativeError, PyException);

/// The one conversion from the library's error to Python: every field the package maps from.
fn native(e: Error) -> PyErr {
    NativeError::new_err((
        e.kind().name(),
        e.to_string(),
        e.errno().map(|n| n as i32),
        e.step().map(|s| s.name()),
        e.remedy().map(str::to_string),
        e.path().map(|p| p.display().to_string()),
    ))
}

fn spec_from(json: &str) -> PyResult<Spec> {
    Spec::from_json(json).map_err(native)
}

/// (result JSON without the output and the report, the report's JSON (parsed by the package
/// only when asked for), stdout bytes or None, stderr bytes or None)
type Outcome = (String, String, Option<Py<PyBytes>>, Option<Py<PyBytes>>);

fn outcome(py: Python<'_>, mut r: RunResult) -> Outcome {
    let out = r.stdout.take().map(|b| PyBytes::new(py, &b).unbind());
    let err = r.stderr.take().map(|b| PyBytes::new(py, &b).unbind());
    let report = serde_json::to_string(&std::mem::take(&mut r.report)).unwrap_or_default();
    (
        serde_json::to_string(&r).unwrap_or_default(),
        report,
        out,
        err,
    )
}

/// A running sandbox. Once it has been waited for, the library's handle (its pidfd, pipes and
/// cgroup) is released at once, so a finished process holds no descriptor; what is still asked
/// of it is answered from the result kept.
#[pyclass(module = "rsandbox._rsandbox")]
struct NativeProcess {
    state: Mutex<State>,
    pid: i32,
    /// The process that started it: a copy made by fork never locks `state` (another thread
    /// may have held it at the fork, and the copy would stay locked).
    owner: u32,
}

enum State {
    Running(Box<Child>),
    /// The result (as `outcome` returns it, without output) and the report, both JSON.
    Finished {
        result: String,
        report: String,
    },
}

impl NativeProcess {
    fn new(child: Child) -> NativeProcess {
        NativeProcess {
            pid: child.pid(),
            state: Mutex::new(State::Running(Box::new(child))),
            owner: std::process::id(),
        }
    }

    fn lock(&self) -> rsandbox::Result<std::sync::MutexGuard<'_, State>> {
        if std::process::id() != self.owner {
            return Err(Error::Unsupported {
                errno: Some(rsandbox::Errno::ECHILD),
                feature: "a sandbox handle copied by fork".into(),
                reason: format!(
                    "process {} started this sandbox; process {} is a fork of it and holds a \
                     copy of the handle, whose result and end are the starting process's",
                    self.owner,
                    std::process::id()
                ),
                remedy: Some(
                    "wait for and signal a sandbox in the process that started it; a forked \
                     process starts sandboxes of its own"
                        .into(),
                ),
            });
        }
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends a signal to every process of the sandbox (nothing once it has been waited for).
    fn signal(&self, signal: i32) -> rsandbox::Result<()> {
        match &mut *self.lock()? {
            State::Running(c) => c.kill(signal),
            State::Finished { .. } => Ok(()),
        }
    }

    /// Waits up to `slice`; on exit, keeps the result and releases the handle.
    fn wait_slice(&self, slice: Duration) -> rsandbox::Result<Option<RunResult>> {
        let mut state = self.lock()?;
        let State::Running(child) = &mut *state else {
            return Ok(None);
        };
        let Some(r) = child.wait_timeout(slice)? else {
            return Ok(None);
        };
        let report = serde_json::to_string(child.report()).unwrap_or_default();
        let mut kept = r.clone();
        kept.stdout = None;
        kept.stderr = None;
        kept.report = Default::default();
        let result = serde_json::to_string(&kept).unwrap_or_default();
        *state = State::Finished { result, report };
        Ok(Some(r))
    }
}

#[pymethods]
impl NativeProcess {
    /// Host pid of the sandbox's init.
    #[getter]
    fn pid(&self) -> i32 {
        self.pid
    }

    /// Hands the caller's end of stream 0, 1 or 2 (when it is a pipe) over to the caller, who
    /// must close it; None when the stream is not a pipe or was taken already.
    fn take_stream(&self, stream: usize) -> PyResult<Option<i32>> {
        let mut state = self.lock().map_err(native)?;
        let State::Running(c) = &mut *state else {
            return Ok(None);
        };
        let file = match stream {
            0 => c.stdin.take(),
            1 => c.stdout.take(),
            2 => c.stderr.take(),
            _ => None,
        };
        Ok(file.map(IntoRawFd::into_raw_fd))
    }

    /// Waits up to `timeout` seconds (None: without limit). Returns the outcome, or None when it
    /// is still running. A pending Python signal (Ctrl-C) kills the sandbox, reaps it (its result
    /// is kept: a later `wait` returns it at once) and is raised. The waiting itself, which
    /// enforces the spec's limits, never needs the GIL (see `watched`).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Outcome>> {
        if let State::Finished { result, report } = &*self.lock().map_err(native)? {
            return Ok(Some((result.clone(), report.clone(), None, None)));
        }
        // No deadline for a timeout too large for the clock (inf included).
        let deadline = timeout.and_then(|t| Instant::now().checked_add(seconds(t)));
        let wait = |interrupt: &mut dyn FnMut() -> bool| -> rsandbox::Result<Option<RunResult>> {
            loop {
                // In slices: kill() and poll() from other threads take the state between them.
                let slice = match deadline {
                    Some(d) => d
                        .saturating_duration_since(Instant::now())
                        .min(SIGNAL_CHECK),
                    None => SIGNAL_CHECK,
                };
                if let Some(r) = self.wait_slice(slice)? {
                    return Ok(Some(r));
                }
                if interrupt() {
                    // Ctrl-C (or any signal handler raising): the sandbox does not outlive it.
                    let _ = self.signal(SIGKILL);
                    return self.wait_slice(Duration::from_secs(3600));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
        };
        // A wait shorter than a signal check (poll) has no signal to look for: Python handles
        // a pending one as soon as it returns.
        let (r, raised) = if timeout.is_some_and(|t| seconds(t) <= SIGNAL_CHECK) {
            (py.detach(|| wait(&mut || false)), None)
        } else {
            watched(py, wait)
        };
        let r = r.map_err(native)?;
        if let Some(e) = raised {
            return Err(e);
        }
        Ok(r.map(|r| outcome(py, r)))
    }

    /// Sends a signal to every process of the sandbox (nothing once it has been waited for).
    fn kill(&self, signal: i32) -> PyResult<()> {
        self.signal(signal).map_err(native)
    }

    /// Freezes or thaws the sandbox (needs its own cgroup).
    fn freeze(&self, frozen: bool) -> PyResult<()> {
        match &mut *self.lock().map_err(native)? {
            State::Running(c) => if frozen { c.freeze() } else { c.thaw() }.map_err(native),
            State::Finished { .. } => Err(native(Error::Unsupported {
                errno: None,
                feature: "freeze".into(),
                reason: "the sandbox has exited".into(),
                remedy: None,
            })),
        }
    }

    /// The enforcement report as JSON.
    fn report_json(&self) -> PyResult<String> {
        Ok(match &*self.lock().map_err(native)? {
            State::Running(c) => serde_json::to_string(c.report()).unwrap_or_default(),
            State::Finished { report, .. } => report.clone(),
        })
    }
}

/// SIGKILL (9 on every Linux architecture).
const SIGKILL: i32 = 9;

/// Validates a spec; returns it normalised.
#[pyfunction]
fn check_spec(json: &str) -> PyResult<String> {
    let spec = spec_from(json)?;
    spec.check().map_err(native)?;
    spec.to_json().map_err(native)
}

/// Runs a spec to completion, capturing what the spec sends to pipes. A pending Python signal
/// (Ctrl-C) kills the sandbox, reaps it and is raised.
#[pyfunction]
#[pyo3(signature = (spec_json, input=None))]
fn run(py: Python<'_>, spec_json: &str, input: Option<Vec<u8>>) -> PyResult<Outcome> {
    let spec = spec_from(spec_json)?;
    interruptible(py, |interrupt| {
        rsandbox::run_interruptible(&spec, input.as_deref(), SIGNAL_CHECK, interrupt)
    })
}

/// Runs `work` (see `watched`): a raised exception (Ctrl-C) stops it and is re-raised once it
/// has killed and reaped its sandbox.
fn interruptible(
    py: Python<'_>,
    work: impl Send + FnOnce(&mut dyn FnMut() -> bool) -> rsandbox::Result<RunResult>,
) -> PyResult<Outcome> {
    let (r, raised) = watched(py, work);
    let r = r.map_err(native)?;
    if let Some(e) = raised {
        return Err(e);
    }
    Ok(outcome(py, r))
}

/// Runs `work` without the GIL, giving it `interrupt`, which lets Python handle the signals that
/// came (Ctrl-C) and says whether a handler raised: `work` then stops as soon as it can. Returns
/// what `work` returned and the exception raised.
///
/// The waiting in `work` enforces the sandbox's limits (its deadline, its CPU time), so it must
/// not wait for the GIL, which another thread may hold for seconds in one C call: `interrupt`
/// takes the GIL only when a signal has come. Python runs signal handlers in its main thread
/// only; there, its wakeup fd (`signal.set_wakeup_fd`) is a socket of ours while `work` runs,
/// and `interrupt` reads it. In any other thread there is nothing to handle.
fn watched<T: Send>(
    py: Python<'_>,
    work: impl Send + FnOnce(&mut dyn FnMut() -> bool) -> T,
) -> (T, Option<PyErr>) {
    let mut raised: Option<PyErr> = None;
    let main = handles_signals(py);
    let mut wakeup = if main { Wakeup::install(py).ok() } else { None };
    // Where the wakeup fd cannot be had, the main thread checks at every call, as it must.
    let every_call = main && wakeup.is_none();
    if wakeup.is_some() {
        // A signal that came before the socket was in place.
        if let Err(e) = py.check_signals() {
            raised = Some(e);
        }
    }
    let (socket, came) = match &mut wakeup {
        Some(w) => (Some(&w.socket), Some(&mut w.came)),
        None => (None, None),
    };
    let value = py.detach(|| {
        let mut came = came;
        let mut interrupt = || {
            if raised.is_some() {
                return true;
            }
            let signalled = match (socket, came.as_deref_mut()) {
                (Some(socket), Some(came)) => drain(socket, came),
                _ => every_call,
            };
            if !signalled {
                return false;
            }
            match Python::attach(|py| py.check_signals()) {
                Ok(()) => false,
                Err(e) => {
                    raised = Some(e);
                    true
                }
            }
        };
        work(&mut interrupt)
    });
    drop(wakeup);
    (value, raised)
}

/// Python's signal wakeup fd pointed at a socket of ours (see `watched`); the one it replaced
/// is restored on drop, and given the signal numbers that came in the meantime (asyncio
/// dispatches its signal handlers from them).
struct Wakeup<'py> {
    signal: Bound<'py, PyModule>,
    /// What `signal.set_wakeup_fd` returned: the fd it replaced, or -1.
    replaced: Bound<'py, PyAny>,
    /// Our end; Python writes to the other one.
    socket: UnixStream,
    _theirs: UnixStream,
    /// Bytes read from `socket`: a signal number each.
    came: Vec<u8>,
}

impl<'py> Wakeup<'py> {
    fn install(py: Python<'py>) -> PyResult<Wakeup<'py>> {
        let (socket, theirs) = UnixStream::pair()?;
        socket.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        let signal = py.import("signal")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("warn_on_full_buffer", false)?;
        let replaced = signal.call_method("set_wakeup_fd", (theirs.as_raw_fd(),), Some(&kwargs))?;
        Ok(Wakeup {
            signal,
            replaced,
            socket,
            _theirs: theirs,
            came: Vec::new(),
        })
    }
}

impl Drop for Wakeup<'_> {
    fn drop(&mut self) {
        drain(&self.socket, &mut self.came);
        let _ = self.signal.call_method1("set_wakeup_fd", (&self.replaced,));
        let fd = self.replaced.extract::<i64>().unwrap_or(-1);
        if fd >= 0 && !self.came.is_empty() {
            let py = self.signal.py();
            let _ = py
                .import("os")
                .and_then(|os| os.call_method1("write", (fd, PyBytes::new(py, &self.came))));
        }
    }
}

/// Reads what is in `socket` into `came`; whether there was anything.
fn drain(mut socket: &UnixStream, came: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 64];
    let mut any = false;
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return any,
            Ok(n) => {
                came.extend_from_slice(&buf[..n]);
                any = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return any,
        }
    }
}

/// Whether this thread is the one Python runs signal handlers in (the main thread); when that
/// cannot be told, it is taken to be.
fn handles_signals(py: Python<'_>) -> bool {
    let check = || -> PyResult<bool> {
        let threading = py.import("threading")?;
        let main = threading.call_method0("main_thread")?.getattr("ident")?;
        let me = threading.call_method0("get_ident")?;
        main.eq(me)
    };
    check().unwrap_or(true)
}

/// A timeout in seconds as a Duration: none below zero (NaN included), saturating above.
fn seconds(t: f64) -> Duration {
    Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX)
}

/// How often a blocked run or wait lets Python handle its signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

fn spawn_spec(py: Python<'_>, spec: &Spec) -> PyResult<Child> {
    py.detach(|| rsandbox::spawn(spec)).map_err(native)
}

/// A pool of sandboxes started ahead of their jobs (rsandbox::Pool).
#[pyclass(module = "rsandbox._rsandbox")]
struct NativePool {
    pool: rsandbox::Pool,
    /// The spec's process, which a job's argv, environment, directory and streams complete.
    base: rsandbox::Process,
}

impl NativePool {
    /// A job: the pool spec's process with this argv, these variables added, this working
    /// directory and these streams (`streams_json`: the spec's form of stdin, stdout, stderr).
    fn job(
        &self,
        args: Vec<String>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        streams_json: &str,
    ) -> PyResult<rsandbox::Process> {
        let [stdin, stdout, stderr]: [rsandbox::Stdio; 3] = serde_json::from_str(streams_json)
            .map_err(|e| {
                native(Error::InvalidSpec {
                    field: "process.stdin/stdout/stderr".into(),
                    reason: format!("invalid JSON: {e}"),
                })
            })?;
        let mut process = self.base.clone();
        process.args = args;
        process.env.extend(env.unwrap_or_default());
        if cwd.is_some() {
            process.cwd = cwd;
        }
        (process.stdin, process.stdout, process.stderr) = (stdin, stdout, stderr);
        Ok(process)
    }
}

#[pymethods]
impl NativePool {
    /// Starts `size` sandboxes of the spec (the first before returning).
    #[new]
    fn new(py: Python<'_>, spec_json: &str, size: usize) -> PyResult<NativePool> {
        let spec = spec_from(spec_json)?;
        let pool = py
            .detach(|| rsandbox::Pool::new(&spec, size))
            .map_err(native)?;
        Ok(NativePool {
            pool,
            base: spec.process,
        })
    }

    /// Sandboxes ready now.
    fn ready(&self) -> usize {
        self.pool.ready()
    }

    /// Waits up to `timeout` seconds for the pool to be full, letting Python handle its signals
    /// (Ctrl-C) every `SIGNAL_CHECK`. A job counts as running until its result has been taken.
    fn wait_full(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        // No deadline for a timeout too large for the clock (inf included).
        let until = Instant::now().checked_add(seconds(timeout));
        loop {
            let slice = until.map_or(SIGNAL_CHECK, |u| {
                u.saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK)
            });
            if py.detach(|| self.pool.wait_full(slice)) {
                return Ok(true);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    /// Runs a job (see `job`) in a pooled sandbox; Ctrl-C kills it.
    #[pyo3(signature = (args, env, cwd, streams_json, input=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        args: Vec<String>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        streams_json: &str,
        input: Option<Vec<u8>>,
        timeout: Option<f64>,
    ) -> PyResult<Outcome> {
        let process = self.job(args, env, cwd, streams_json)?;
        interruptible(py, |interrupt| {
            self.pool
                .run_with(&process, input.as_deref(), timeout, SIGNAL_CHECK, interrupt)
        })
    }

    /// Starts a job (see `job`) in a pooled sandbox; returns a NativeProcess.
    #[pyo3(signature = (args, env, cwd, streams_json, timeout=None))]
    fn spawn(
        &self,
        py: Python<'_>,
        args: Vec<String>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        streams_json: &str,
        timeout: Option<f64>,
    ) -> PyResult<NativeProcess> {
        let process = self.job(args, env, cwd, streams_json)?;
        let child = py
            .detach(|| self.pool.spawn_with_timeout(&process, timeout))
            .map_err(native)?;
        Ok(NativeProcess::new(child))
    }
}

/// Starts a spec; returns a NativeProcess.
#[pyfunction]
fn spawn(py: Python<'_>, spec_json: &str) -> PyResult<NativeProcess> {
    let spec = spec_from(spec_json)?;
    let child = spawn_spec(py, &spec)?;
    Ok(NativeProcess::new(child))
}

/// What this host and user can use, as JSON.
#[pyfunction]
fn doctor_json(py: Python<'_>) -> String {
    py.detach(|| serde_json::to_string(&rsandbox::doctor()).unwrap_or_default())
}

/// The default spec as JSON.
#[pyfunction]
fn default_spec_json() -> String {
    Spec::default().to_json().unwrap_or_default()
}

#[pymodule]
fn _rsandbox(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_class::<NativeProcess>()?;
    m.add_class::<NativePool>()?;
    m.add_function(wrap_pyfunction!(check_spec, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(spawn, m)?)?;
    m.add_function(wrap_pyfunction!(doctor_json, m)?)?;
    m.add_function(wrap_pyfunction!(default_spec_json, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
