//! The native half of `rsandbox`: thin conversions between Python and the library. The public,
//! documented API is the pure-Python package `rsandbox`; this module (`rsandbox._rsandbox`) takes
//! and returns JSON specs and results, releases the GIL around spawn and wait, and raises
//! `NativeError(kind, message, errno, step, remedy, path)`, which the package maps to its exception
//! classes in one place.

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
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

/// (result JSON without the output, stdout bytes or None, stderr bytes or None)
type Outcome = (String, Option<Py<PyBytes>>, Option<Py<PyBytes>>);

fn outcome(py: Python<'_>, mut r: RunResult) -> Outcome {
    let out = r.stdout.take().map(|b| PyBytes::new(py, &b).unbind());
    let err = r.stderr.take().map(|b| PyBytes::new(py, &b).unbind());
    (serde_json::to_string(&r).unwrap_or_default(), out, err)
}

/// A running sandbox.
#[pyclass(module = "rsandbox._rsandbox")]
struct NativeProcess {
    child: Mutex<Child>,
    pid: i32,
    pidfd: i32,
    fds: [Option<i32>; 3],
}

impl NativeProcess {
    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl NativeProcess {
    /// Host pid of the sandbox's init.
    #[getter]
    fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the init (owned by this object).
    #[getter]
    fn pidfd(&self) -> i32 {
        self.pidfd
    }

    /// The caller's end of stream 0, 1 or 2 when it is a pipe (owned by this object).
    fn stream_fd(&self, stream: usize) -> Option<i32> {
        self.fds.get(stream).copied().flatten()
    }

    /// Waits up to `timeout` seconds (None: without limit, in slices that let Ctrl-C through).
    /// Returns the outcome, or None when it is still running.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Outcome>> {
        let deadline =
            timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let got = py
                .detach(|| self.lock().wait_timeout(slice))
                .map_err(native)?;
            if let Some(r) = got {
                return Ok(Some(outcome(py, r)));
            }
            if let Err(e) = py.check_signals() {
                // Ctrl-C (or any signal handler raising): the sandbox does not outlive it.
                let _ = self.lock().kill(SIGKILL);
                let _ = py.detach(|| self.lock().wait());
                return Err(e);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Feeds `input`, collects stdout/stderr (each capped at `limit` bytes), waits.
    #[pyo3(signature = (input=None, limit=None))]
    fn communicate(
        &self,
        py: Python<'_>,
        input: Option<Vec<u8>>,
        limit: Option<u64>,
    ) -> PyResult<Outcome> {
        let r = py
            .detach(|| self.lock().communicate(input.as_deref(), limit))
            .map_err(native)?;
        Ok(outcome(py, r))
    }

    /// Sends a signal to every process of the sandbox.
    fn kill(&self, signal: i32) -> PyResult<()> {
        self.lock().kill(signal).map_err(native)
    }

    /// Freezes or thaws the sandbox (needs its own cgroup).
    fn freeze(&self, frozen: bool) -> PyResult<()> {
        let mut c = self.lock();
        if frozen { c.freeze() } else { c.thaw() }.map_err(native)
    }

    /// The enforcement report as JSON.
    fn report_json(&self) -> String {
        serde_json::to_string(self.lock().report()).unwrap_or_default()
    }
}

/// SIGKILL (9 on every Linux architecture).
const SIGKILL: i32 = 9;

/// Validates a spec; returns it normalised.
#[pyfunction]
fn check_spec(json: &str) -> PyResult<String> {
    spec_from(json)?.to_json().map_err(native)
}

/// Runs a spec to completion, capturing what the spec sends to pipes.
#[pyfunction]
#[pyo3(signature = (spec_json, input=None))]
fn run(py: Python<'_>, spec_json: &str, input: Option<Vec<u8>>) -> PyResult<Outcome> {
    let spec = spec_from(spec_json)?;
    let proc = spawn_spec(py, spec.clone())?;
    let limit = spec.output_limit;
    let r = py
        .detach(|| proc.lock().communicate(input.as_deref(), limit))
        .map_err(native)?;
    Ok(outcome(py, r))
}

fn spawn_spec(py: Python<'_>, spec: Spec) -> PyResult<NativeProcess> {
    let child = py.detach(|| rsandbox::spawn(&spec)).map_err(native)?;
    let fds = [
        child.stdin.as_ref().map(|f| f.as_raw_fd()),
        child.stdout.as_ref().map(|f| f.as_raw_fd()),
        child.stderr.as_ref().map(|f| f.as_raw_fd()),
    ];
    Ok(NativeProcess {
        pid: child.pid(),
        pidfd: child.pidfd(),
        fds,
        child: Mutex::new(child),
    })
}

/// Starts a spec; returns a NativeProcess.
#[pyfunction]
fn spawn(py: Python<'_>, spec_json: &str) -> PyResult<NativeProcess> {
    let spec = spec_from(spec_json)?;
    spawn_spec(py, spec)
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
    m.add_function(wrap_pyfunction!(check_spec, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(spawn, m)?)?;
    m.add_function(wrap_pyfunction!(doctor_json, m)?)?;
    m.add_function(wrap_pyfunction!(default_spec_json, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
