//! The C ABI of rsandbox, built as `libsandbox.so` (see `include/sandbox.h` for the conventions).
//!
//! Every exported function checks its pointers, converts its strings strictly (invalid UTF-8 is
//! refused, never coerced), catches panics (`SBX_ERR_PANIC`), and records a message for
//! `sbx_last_error_message()` when it fails. The translation to and from `rsandbox` types happens
//! here and nowhere else; errors are mapped from `rsandbox::ErrorKind` in [`code_for`] only.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rsandbox::{
    Child, Error, ErrorKind, Mount, Network, Root, RunResult, Seccomp, Spec, Verdict, Want,
};

/// Result codes. Explicitly numbered; a number, once given, is never reused or changed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sbx_result {
    SBX_OK = 0,
    /// A required pointer argument is NULL.
    SBX_ERR_NULL = 1,
    /// A string argument is not valid UTF-8.
    SBX_ERR_INVALID_UTF8 = 2,
    /// A value the configuration cannot take, or a call's argument out of its range (the
    /// message names which).
    SBX_ERR_INVALID_SPEC = 3,
    /// A host path the configuration names does not exist.
    SBX_ERR_PATH_NOT_FOUND = 4,
    /// A uid or gid the sandbox would run as cannot be mapped from this user.
    SBX_ERR_UNMAPPABLE_ID = 5,
    /// The command is not found in the sandbox.
    SBX_ERR_EXECUTABLE_NOT_FOUND = 6,
    /// The command exists but cannot be executed (permissions, format, missing interpreter).
    SBX_ERR_NOT_EXECUTABLE = 7,
    /// A step of building the sandbox failed (the message names the step, path and errno).
    SBX_ERR_SETUP = 8,
    /// The host lacks something required (user namespaces, cgroup delegation, a kernel
    /// feature); the message gives the remedy.
    SBX_ERR_UNSUPPORTED = 9,
    /// A system call in the calling process failed (pipes, descriptors, processes).
    SBX_ERR_IO = 10,
    /// An OCI image is malformed or unsupported.
    SBX_ERR_INVALID_IMAGE = 11,
    /// A bug in the library, caught at this interface.
    SBX_ERR_PANIC = 12,
    /// A wait ended before the sandbox did (it runs on).
    SBX_ERR_TIMEOUT = 13,
    /// Anything else (the message says what).
    SBX_ERR_OTHER = 14,
}

/// The one-word outcome of a run. Explicitly numbered.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sbx_verdict {
    SBX_VERDICT_OK = 0,
    SBX_VERDICT_EXIT_NONZERO = 1,
    SBX_VERDICT_SIGNALED = 2,
    SBX_VERDICT_WALL_TIMEOUT = 3,
    SBX_VERDICT_CPU_TIMEOUT = 4,
    SBX_VERDICT_MEMORY_LIMIT = 5,
    SBX_VERDICT_OUTPUT_LIMIT = 6,
    SBX_VERDICT_SETUP_ERROR = 7,
}

/// A sandbox configuration (a `Spec`). Not to be mutated from two threads at once.
pub struct sbx_config {
    spec: Spec,
}

/// A running sandbox.
pub struct sbx_child {
    child: Child,
}

/// Sandboxes of one configuration started ahead of their jobs (see `sbx_pool_new`). May be used
/// from several threads at once.
pub struct sbx_pool {
    pool: rsandbox::Pool,
}

/// The result of a finished sandbox. Immutable; may be read from any thread.
pub struct sbx_run_result {
    result: RunResult,
    report_json: CString,
    json: CString,
}

struct LastError {
    message: CString,
    errno: c_int,
}

thread_local! {
    static LAST: RefCell<LastError> = RefCell::new(LastError { message: CString::default(), errno: 0 });
}

/// Records the thread's last error. During the thread's exit (a pthread key's destructor calling
/// in) its slot may be gone already: the error is then not kept, and nothing panics.
fn set_error(message: String, errno: c_int) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST.try_with(|l| *l.borrow_mut() = LastError { message, errno });
}

fn clear_error() {
    set_error(String::new(), 0);
}

/// The one mapping from the library's error classification to result codes.
fn code_for(kind: ErrorKind) -> sbx_result {
    match kind {
        ErrorKind::InvalidSpec => sbx_result::SBX_ERR_INVALID_SPEC,
        ErrorKind::PathNotFound => sbx_result::SBX_ERR_PATH_NOT_FOUND,
        ErrorKind::UnmappableId => sbx_result::SBX_ERR_UNMAPPABLE_ID,
        ErrorKind::ExecutableNotFound => sbx_result::SBX_ERR_EXECUTABLE_NOT_FOUND,
        ErrorKind::NotExecutable => sbx_result::SBX_ERR_NOT_EXECUTABLE,
        ErrorKind::Setup => sbx_result::SBX_ERR_SETUP,
        ErrorKind::Unsupported => sbx_result::SBX_ERR_UNSUPPORTED,
        ErrorKind::Io => sbx_result::SBX_ERR_IO,
        ErrorKind::InvalidImage => sbx_result::SBX_ERR_INVALID_IMAGE,
        _ => sbx_result::SBX_ERR_OTHER,
    }
}

fn fail(e: Error) -> sbx_result {
    set_error(e.to_string(), e.errno().map_or(0, |n| n as c_int));
    code_for(e.kind())
}

fn fail_with(code: sbx_result, message: &str) -> sbx_result {
    set_error(message.into(), 0);
    code
}

/// Runs `f` behind a panic boundary; clears the last error first.
fn guard(f: impl FnOnce() -> sbx_result) -> sbx_result {
    match catch_unwind(AssertUnwindSafe(|| {
        clear_error();
        f()
    })) {
        Ok(code) => code,
        Err(_) => fail_with(
            sbx_result::SBX_ERR_PANIC,
            "internal panic (a bug in rsandbox)",
        ),
    }
}

/// Reads a C string strictly: NULL and invalid UTF-8 are errors.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, sbx_result> {
    if p.is_null() {
        return Err(fail_with(
            sbx_result::SBX_ERR_NULL,
            &format!("{what} is NULL"),
        ));
    }
    // SAFETY: the caller promises a NUL-terminated string valid for the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| {
        fail_with(
            sbx_result::SBX_ERR_INVALID_UTF8,
            &format!("{what} is not valid UTF-8"),
        )
    })
}

macro_rules! try_ffi {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

/// Makes `copy` (the configuration with a setter's change) the configuration, unless the change
/// turns a configuration a start would take into one it refuses (`Spec::check`): that is refused
/// here, naming the field, instead of at a start far from its cause.
fn commit(cfg: &mut sbx_config, copy: Spec) -> sbx_result {
    if let Err(e) = copy.check() {
        if cfg.spec.check().is_ok() {
            return fail(e);
        }
    }
    cfg.spec = copy;
    sbx_result::SBX_OK
}

unsafe fn config_mut<'a>(cfg: *mut sbx_config) -> Result<&'a mut sbx_config, sbx_result> {
    // SAFETY: a non-NULL pointer must come from sbx_config_new/from_json and not be freed.
    unsafe { cfg.as_mut() }.ok_or_else(|| fail_with(sbx_result::SBX_ERR_NULL, "config is NULL"))
}

unsafe fn config_ref<'a>(cfg: *const sbx_config) -> Result<&'a sbx_config, sbx_result> {
    // SAFETY: as for config_mut.
    unsafe { cfg.as_ref() }.ok_or_else(|| fail_with(sbx_result::SBX_ERR_NULL, "config is NULL"))
}

/// Checks an output pointer and sets `*out` to NULL, which is what a failure leaves there.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
unsafe fn out_ptr<T>(out: *mut *mut T) -> Result<(), sbx_result> {
    if out.is_null() {
        Err(fail_with(
            sbx_result::SBX_ERR_NULL,
            "output pointer is NULL",
        ))
    } else {
        // SAFETY: out is non-NULL, and the caller vouches that it is writable.
        unsafe { *out = std::ptr::null_mut() };
        Ok(())
    }
}

/// The library version, a static NUL-terminated string (never free it).
#[no_mangle]
pub extern "C" fn sbx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" when none). Valid until the next call
/// on this thread; never free it.
#[no_mangle]
pub extern "C" fn sbx_last_error_message() -> *const c_char {
    // (The empty string, static, once the thread's slot is gone: the thread is exiting.)
    LAST.try_with(|l| l.borrow().message.as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The errno behind the last failed call on this thread (0 when none).
#[no_mangle]
pub extern "C" fn sbx_last_error_errno() -> c_int {
    LAST.try_with(|l| l.borrow().errno).unwrap_or(0)
}

/// Creates a configuration with every default (all namespaces, the read-only host view, the
/// default seccomp profile, Landlock, no capabilities). Free it with `sbx_config_free`.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_new(out: *mut *mut sbx_config) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        let cfg = Box::new(sbx_config {
            spec: Spec::default(),
        });
        // SAFETY: out was checked non-NULL.
        unsafe { *out = Box::into_raw(cfg) };
        sbx_result::SBX_OK
    })
}

/// Creates a configuration from a JSON spec (the format of `rsandbox run --print-spec`).
#[no_mangle]
pub unsafe extern "C" fn sbx_config_from_json(
    json: *const c_char,
    out: *mut *mut sbx_config,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: text() checks for NULL; the caller passes a NUL-terminated string.
        let json = try_ffi!(unsafe { text(json, "json") });
        match Spec::from_json(json) {
            Ok(spec) => {
                // SAFETY: out was checked non-NULL.
                unsafe { *out = Box::into_raw(Box::new(sbx_config { spec })) };
                sbx_result::SBX_OK
            }
            Err(e) => fail(e),
        }
    })
}

/// The configuration as JSON, in `*out`; free it with `sbx_string_free`.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_to_json(
    cfg: *const sbx_config,
    out: *mut *mut c_char,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: config_ref checks for NULL.
        let cfg = try_ffi!(unsafe { config_ref(cfg) });
        match cfg.spec.to_json() {
            Ok(json) => {
                // SAFETY: out was checked non-NULL.
                unsafe { *out = CString::new(json).unwrap_or_default().into_raw() };
                sbx_result::SBX_OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Frees a string returned by this library. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sbx_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: s was produced by CString::into_raw in this library.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Frees a configuration. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_free(cfg: *mut sbx_config) {
    if !cfg.is_null() {
        // SAFETY: cfg was produced by Box::into_raw in this library and is not used afterwards.
        drop(unsafe { Box::from_raw(cfg) });
    }
}

/// Sets the command: `argc` strings from `argv` (argv[0] is looked up in the sandbox's PATH).
#[no_mangle]
pub unsafe extern "C" fn sbx_config_set_argv(
    cfg: *mut sbx_config,
    argv: *const *const c_char,
    argc: usize,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut checks for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        if argv.is_null() && argc > 0 {
            return fail_with(sbx_result::SBX_ERR_NULL, "argv is NULL");
        }
        // (Not sized by argc ahead: a wrong count meets a NULL entry before memory runs out.)
        let mut args = Vec::new();
        for i in 0..argc {
            // SAFETY: argv holds argc pointers.
            let p = unsafe { *argv.add(i) };
            // SAFETY: text() checks for NULL.
            args.push(try_ffi!(unsafe { text(p, &format!("argv[{i}]")) }).to_string());
        }
        let mut copy = cfg.spec.clone();
        copy.process.args = args;
        commit(cfg, copy)
    })
}

/// Sets an environment variable of the command.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_set_env(
    cfg: *mut sbx_config,
    key: *const c_char,
    value: *const c_char,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut and text() check for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        // SAFETY: as above.
        let (k, v) = (
            try_ffi!(unsafe { text(key, "key") }),
            try_ffi!(unsafe { text(value, "value") }),
        );
        let mut copy = cfg.spec.clone();
        copy.process.env.insert(k.into(), v.into());
        commit(cfg, copy)
    })
}

/// Sets a string-valued setting: "cwd", "hostname", "cgroup_parent", "seccomp" ("default",
/// "none", or a profile path), "keep_capability", "rootfs", "rootfs_rw", "network" ("none",
/// "host"), "overlay_lower" (adds a lower layer, top-most first), "upper" (persistent upper
/// directory), "overlay_driver" ("auto", "kernel", "fuse"), "image" (OCI layout directory),
/// "image_tag", "image_store", "stdin"/"stdout"/"stderr" ("inherit", "null", "pipe", or a file
/// path), "landlock_rw"/"landlock_ro" (extra Landlock rules), "id_mapping" ("single",
/// "subordinate-range"). Every other field of the spec is reachable through sbx_config_from_json.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_set_str(
    cfg: *mut sbx_config,
    name: *const c_char,
    value: *const c_char,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut and text() check for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        // SAFETY: as above.
        let (name, value) = (
            try_ffi!(unsafe { text(name, "name") }),
            try_ffi!(unsafe { text(value, "value") }),
        );
        let mut copy = cfg.spec.clone();
        let spec = &mut copy;
        match name {
            "cwd" => spec.process.cwd = Some(value.into()),
            "hostname" => spec.hostname = value.into(),
            "cgroup_parent" => spec.cgroup.parent = Some(value.into()),
            "seccomp" => {
                spec.security.seccomp = match value {
                    "default" => Seccomp::Default,
                    "none" => Seccomp::None,
                    "" => {
                        return fail_with(
                            sbx_result::SBX_ERR_INVALID_SPEC,
                            "seccomp: empty (\"default\", \"none\", or a profile's path)",
                        )
                    }
                    path => Seccomp::Profile { path: path.into() },
                }
            }
            "keep_capability" => spec.security.capabilities.push(value.into()),
            "landlock_rw" => spec.security.landlock.write.push(value.into()),
            "landlock_ro" => spec.security.landlock.read.push(value.into()),
            "id_mapping" => {
                spec.user.mapping = match value {
                    "single" => rsandbox::IdMapping::Single,
                    "subordinate-range" => rsandbox::IdMapping::SubordinateRange,
                    other => {
                        return fail_with(
                            sbx_result::SBX_ERR_INVALID_SPEC,
                            &format!("id_mapping: unknown mapping {other:?}"),
                        )
                    }
                }
            }
            "rootfs" | "rootfs_rw" => {
                spec.filesystem.root = Root::Directory {
                    path: value.into(),
                    writable: name == "rootfs_rw",
                }
            }
            "overlay_lower" | "upper" | "overlay_driver" | "image" | "image_tag"
            | "image_store" => {
                // Refused settings change nothing: check before the root becomes an overlay.
                let driver = match (name, value) {
                    ("overlay_driver", "auto") => Some(rsandbox::OverlayDriver::Auto),
                    ("overlay_driver", "kernel") => Some(rsandbox::OverlayDriver::Kernel),
                    ("overlay_driver", "fuse") => Some(rsandbox::OverlayDriver::Fuse),
                    ("overlay_driver", other) => {
                        return fail_with(
                            sbx_result::SBX_ERR_INVALID_SPEC,
                            &format!("overlay_driver: unknown driver {other:?}"),
                        )
                    }
                    _ => None,
                };
                let has_image =
                    matches!(&spec.filesystem.root, Root::Overlay(ov) if ov.image.is_some());
                if matches!(name, "image_tag" | "image_store") && !has_image {
                    return fail_with(
                        sbx_result::SBX_ERR_INVALID_SPEC,
                        &format!("{name} needs \"image\" first"),
                    );
                }
                let ov = match &mut spec.filesystem.root {
                    Root::Overlay(ov) => ov,
                    root => {
                        *root = Root::Overlay(rsandbox::Overlay::default());
                        let Root::Overlay(ov) = root else {
                            unreachable!()
                        };
                        ov
                    }
                };
                match name {
                    "overlay_lower" => ov.lowers.push(value.into()),
                    "upper" => ov.upper = rsandbox::Upper::Persistent { path: value.into() },
                    "overlay_driver" => ov.driver = driver.unwrap_or_default(),
                    "image" => {
                        ov.image = Some(rsandbox::ImageSource {
                            layout: value.into(),
                            tag: None,
                            store: None,
                        })
                    }
                    _ => {
                        if let Some(img) = ov.image.as_mut() {
                            if name == "image_tag" {
                                img.tag = Some(value.into());
                            } else {
                                img.store = Some(value.into());
                            }
                        }
                    }
                }
            }
            "stdin" | "stdout" | "stderr" => {
                let how = match value {
                    "inherit" => rsandbox::Stdio::Inherit,
                    "null" => rsandbox::Stdio::Null,
                    "pipe" => rsandbox::Stdio::Pipe,
                    path => rsandbox::Stdio::File {
                        path: path.into(),
                        append: false,
                    },
                };
                match name {
                    "stdin" => spec.process.stdin = how,
                    "stdout" => spec.process.stdout = how,
                    _ => spec.process.stderr = how,
                }
            }
            "network" => {
                spec.network = match value {
                    "none" => Network::None,
                    "host" => Network::Host,
                    other => {
                        return fail_with(
                            sbx_result::SBX_ERR_INVALID_SPEC,
                            &format!("network: unknown mode {other:?}"),
                        )
                    }
                }
            }
            other => {
                return fail_with(
                    sbx_result::SBX_ERR_INVALID_SPEC,
                    &format!("unknown string setting {other:?}"),
                )
            }
        }
        commit(cfg, copy)
    })
}

/// Sets a number-valued setting: "uid", "gid", "timeout" (seconds), "output_limit" (bytes kept of
/// each of stdout and stderr when sbx_run captures them: the rest is read and dropped and the
/// result says which stream was cut; the command is not stopped for it, so pair it with a
/// timeout; 0 keeps nothing), "memory",
/// "memory_swap", "pids", "cpus", "cpu_weight", "cpu_time", "limits_best_effort" (0/1),
/// "allow_nested_userns" (0/1), "mask_proc" (0/1), "landlock" (0 off, 1 best-effort, 2 required),
/// "template" (0/1: copy the default tree from this process's template from the second sandbox
/// on), "die_with_parent" (0/1), "upper_size" (ephemeral upper cap; 0: the default), "stdin_fd"/"stdout_fd"/
/// "stderr_fd" (a descriptor of the caller), "namespace.NAME" (0/1 for user, mount, pid, ipc,
/// uts, net, cgroup, time).
#[no_mangle]
pub unsafe extern "C" fn sbx_config_set_num(
    cfg: *mut sbx_config,
    name: *const c_char,
    value: f64,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut and text() check for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        // SAFETY: as above.
        let name = try_ffi!(unsafe { text(name, "name") });
        if !value.is_finite() || value < 0.0 {
            return fail_with(
                sbx_result::SBX_ERR_INVALID_SPEC,
                &format!("{name}: {value} is not a non-negative number"),
            );
        }
        // Whole numbers below `limit`, for the settings that take them; never a silent
        // truncation or saturation.
        let whole = |limit: f64| {
            if value.fract() == 0.0 && value < limit {
                Ok(value as u64)
            } else {
                Err(fail_with(
                    sbx_result::SBX_ERR_INVALID_SPEC,
                    &format!("{name}: {value} is not a whole number below {limit}"),
                ))
            }
        };
        // 2^64, 2^32 - 1 (the invalid id, -1), 2^31: exactly representable.
        let int = || whole(18_446_744_073_709_551_616.0);
        let id = || whole(f64::from(u32::MAX)).map(|v| v as u32);
        let fd = || whole(2_147_483_648.0).map(|v| v as i32);
        let flag = || whole(2.0).map(|v| v == 1);
        // Set on a copy: a refused value changes nothing.
        let mut copy = cfg.spec.clone();
        let spec = &mut copy;
        match name {
            "uid" => spec.user.uid = Some(try_ffi!(id())),
            "gid" => spec.user.gid = Some(try_ffi!(id())),
            "timeout" => spec.timeout = Some(value),
            "output_limit" => spec.output_limit = Some(try_ffi!(int())),
            "memory" => spec.limits.memory = Some(try_ffi!(int())),
            "memory_swap" => spec.limits.memory_swap = Some(try_ffi!(int())),
            "pids" => spec.limits.pids = Some(try_ffi!(int())),
            "cpus" => spec.limits.cpus = Some(value),
            "cpu_weight" => spec.limits.cpu_weight = Some(try_ffi!(int())),
            "cpu_time" => spec.limits.cpu_time = Some(value),
            "limits_best_effort" => {
                spec.limits.level = if try_ffi!(flag()) {
                    Want::BestEffort
                } else {
                    Want::Required
                }
            }
            "allow_nested_userns" => spec.security.allow_nested_userns = try_ffi!(flag()),
            "mask_proc" => spec.security.mask_proc = try_ffi!(flag()),
            "template" => spec.filesystem.template = try_ffi!(flag()),
            "die_with_parent" => spec.die_with_parent = try_ffi!(flag()),
            "upper_size" => {
                // 0: the default size, as for sbx_config_add_tmpfs.
                let size = Some(try_ffi!(int())).filter(|&s| s > 0);
                if let Root::Overlay(ov) = &mut spec.filesystem.root {
                    ov.upper = rsandbox::Upper::Ephemeral { size };
                } else {
                    return fail_with(
                        sbx_result::SBX_ERR_INVALID_SPEC,
                        "upper_size needs an overlay root (overlay_lower or image)",
                    );
                }
            }
            "stdin_fd" => spec.process.stdin = rsandbox::Stdio::Fd(try_ffi!(fd())),
            "stdout_fd" => spec.process.stdout = rsandbox::Stdio::Fd(try_ffi!(fd())),
            "stderr_fd" => spec.process.stderr = rsandbox::Stdio::Fd(try_ffi!(fd())),
            ns if ns.starts_with("namespace.") => {
                let want = if try_ffi!(flag()) {
                    Want::Required
                } else {
                    Want::Off
                };
                let n = &mut spec.namespaces;
                match &ns["namespace.".len()..] {
                    "user" => n.user = want,
                    "mount" => n.mount = want,
                    "pid" => n.pid = want,
                    "ipc" => n.ipc = want,
                    "uts" => n.uts = want,
                    "net" => n.net = want,
                    "cgroup" => n.cgroup = want,
                    "time" => n.time = want,
                    other => {
                        return fail_with(
                            sbx_result::SBX_ERR_INVALID_SPEC,
                            &format!("unknown namespace {other:?}"),
                        )
                    }
                }
            }
            "landlock" => {
                spec.security.landlock.want = match try_ffi!(whole(3.0)) {
                    0 => Want::Off,
                    1 => Want::BestEffort,
                    _ => Want::Required,
                }
            }
            other => {
                return fail_with(
                    sbx_result::SBX_ERR_INVALID_SPEC,
                    &format!("unknown number setting {other:?}"),
                )
            }
        }
        // Time limits and resource limits in their ranges (cpu_weight 1 to 10000, pids at least
        // 1, a time a clock can hold...), checked as a start would check them.
        let limits_only = Spec {
            timeout: copy.timeout,
            limits: copy.limits.clone(),
            ..Spec::default()
        };
        if let Err(e) = limits_only.check() {
            return fail(e);
        }
        commit(cfg, copy)
    })
}

/// Adds a bind mount of host path `source` at sandbox path `destination`.
#[no_mangle]
pub unsafe extern "C" fn sbx_config_add_bind(
    cfg: *mut sbx_config,
    source: *const c_char,
    destination: *const c_char,
    readonly: bool,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut and text() check for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        // SAFETY: as above.
        let (s, d) = (
            try_ffi!(unsafe { text(source, "source") }),
            try_ffi!(unsafe { text(destination, "destination") }),
        );
        let mut copy = cfg.spec.clone();
        copy.filesystem.mounts.push(Mount::Bind {
            source: s.into(),
            destination: d.into(),
            readonly,
        });
        commit(cfg, copy)
    })
}

/// Adds a tmpfs at `destination`, capped at `size` bytes (0: the kernel's default).
#[no_mangle]
pub unsafe extern "C" fn sbx_config_add_tmpfs(
    cfg: *mut sbx_config,
    destination: *const c_char,
    size: u64,
) -> sbx_result {
    guard(|| {
        // SAFETY: config_mut and text() check for NULL.
        let cfg = try_ffi!(unsafe { config_mut(cfg) });
        // SAFETY: as above.
        let d = try_ffi!(unsafe { text(destination, "destination") });
        let mut copy = cfg.spec.clone();
        copy.filesystem.mounts.push(Mount::Tmpfs {
            destination: d.into(),
            size: (size > 0).then_some(size),
            mode: None,
        });
        commit(cfg, copy)
    })
}

/// Runs the configured command to completion, feeding it `input` (may be NULL), capturing its
/// output. On success `*out` holds a result to free with `sbx_result_free`.
#[no_mangle]
pub unsafe extern "C" fn sbx_run(
    cfg: *const sbx_config,
    input: *const u8,
    input_len: usize,
    out: *mut *mut sbx_run_result,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: config_ref checks for NULL.
        let cfg = try_ffi!(unsafe { config_ref(cfg) });
        // SAFETY: input is NULL or points to input_len readable bytes.
        let input = try_ffi!(unsafe { input_slice(input, input_len) });
        match rsandbox::run_with_input(&cfg.spec, input) {
            // SAFETY: out was checked non-NULL.
            Ok(r) => unsafe { deliver(r, out) },
            Err(e) => fail(e),
        }
    })
}

/// The caller's input bytes, or None for NULL. A length no object can have is refused.
///
/// # Safety
/// `input` is NULL or points to `len` readable bytes that outlive the returned slice's use.
unsafe fn input_slice<'a>(input: *const u8, len: usize) -> Result<Option<&'a [u8]>, sbx_result> {
    if input.is_null() {
        return Ok(None);
    }
    if isize::try_from(len).is_err() {
        return Err(fail_with(
            sbx_result::SBX_ERR_INVALID_SPEC,
            &format!("input_len {len} is larger than any buffer can be"),
        ));
    }
    // SAFETY: forwarded from the caller; len fits an object's size.
    Ok(Some(unsafe { std::slice::from_raw_parts(input, len) }))
}

unsafe fn deliver(result: RunResult, out: *mut *mut sbx_run_result) -> sbx_result {
    let report_json =
        CString::new(serde_json::to_string(&result.report).unwrap_or_default()).unwrap_or_default();
    let json = CString::new(serde_json::to_string(&result).unwrap_or_default()).unwrap_or_default();
    let boxed = Box::new(sbx_run_result {
        result,
        report_json,
        json,
    });
    // SAFETY: the caller checked out non-NULL.
    unsafe { *out = Box::into_raw(boxed) };
    sbx_result::SBX_OK
}

/// Starts the configured command; returns once it has been executed in the sandbox. The
/// command's standard streams follow the configuration (inherited by default).
#[no_mangle]
pub unsafe extern "C" fn sbx_spawn(cfg: *const sbx_config, out: *mut *mut sbx_child) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: config_ref checks for NULL.
        let cfg = try_ffi!(unsafe { config_ref(cfg) });
        match rsandbox::spawn(&cfg.spec) {
            Ok(child) => {
                // SAFETY: out was checked non-NULL.
                unsafe { *out = Box::into_raw(Box::new(sbx_child { child })) };
                sbx_result::SBX_OK
            }
            Err(e) => fail(e),
        }
    })
}

/// Starts a pool of `size` sandboxes (1 to 1024) of `cfg` (its argv is ignored: jobs bring theirs), started
/// ahead of their jobs. Each job runs in a sandbox of its own that served no job before, with
/// the protections of a cold start; a job costs about one execve. The first sandbox starts
/// before this returns (so a configuration that cannot work fails here), the others in a
/// background thread that keeps the pool full. Free it with `sbx_pool_free`.
#[no_mangle]
pub unsafe extern "C" fn sbx_pool_new(
    cfg: *const sbx_config,
    size: usize,
    out: *mut *mut sbx_pool,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: config_ref checks for NULL.
        let cfg = try_ffi!(unsafe { config_ref(cfg) });
        match rsandbox::Pool::new(&cfg.spec, size) {
            Ok(pool) => {
                // SAFETY: out was checked non-NULL.
                unsafe { *out = Box::into_raw(Box::new(sbx_pool { pool })) };
                sbx_result::SBX_OK
            }
            Err(e) => fail(e),
        }
    })
}

unsafe fn pool_ref<'a>(pool: *const sbx_pool) -> Result<&'a sbx_pool, sbx_result> {
    // SAFETY: a non-NULL pointer must come from sbx_pool_new and not be freed.
    unsafe { pool.as_ref() }.ok_or_else(|| fail_with(sbx_result::SBX_ERR_NULL, "pool is NULL"))
}

/// The process and the timeout of a pooled job's config; a config that sets anything else (the
/// pool's to decide) is refused, naming what it sets.
fn pool_job(job: &Spec) -> Result<(&rsandbox::Process, Option<f64>), sbx_result> {
    let mut rest = job.clone();
    rest.process = rsandbox::Process::default();
    rest.timeout = None;
    if rest == Spec::default() {
        return Ok((&job.process, job.timeout));
    }
    let set: Vec<String> = match (
        serde_json::to_value(&rest),
        serde_json::to_value(Spec::default()),
    ) {
        (Ok(serde_json::Value::Object(job)), Ok(serde_json::Value::Object(default))) => job
            .into_iter()
            .filter(|(k, v)| default.get(k) != Some(v))
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    };
    Err(fail_with(
        sbx_result::SBX_ERR_INVALID_SPEC,
        &format!(
            "a pooled job's config gives its process and its timeout; every other setting is the \
             pool's, and this one sets {}: set those in the pool's config (sbx_pool_new)",
            set.join(", ")
        ),
    ))
}

/// Runs the process of `job` (its argv, environment, working directory and streams) in a pooled
/// sandbox, within the job's timeout if its config sets one (else the pool's), feeding it `input`
/// (may be NULL) and capturing its output, like `sbx_run`. Every other setting is the pool's: a
/// job config that sets one is refused (`SBX_ERR_INVALID_SPEC`, naming it). The result's report
/// has a "pool" entry.
#[no_mangle]
pub unsafe extern "C" fn sbx_pool_run(
    pool: *const sbx_pool,
    job: *const sbx_config,
    input: *const u8,
    input_len: usize,
    out: *mut *mut sbx_run_result,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: pool_ref and config_ref check for NULL.
        let pool = try_ffi!(unsafe { pool_ref(pool) });
        // SAFETY: as above.
        let job = try_ffi!(unsafe { config_ref(job) });
        let (process, timeout) = try_ffi!(pool_job(&job.spec));
        // SAFETY: input is NULL or points to input_len readable bytes.
        let input = try_ffi!(unsafe { input_slice(input, input_len) });
        let ran = match timeout {
            Some(t) => pool
                .pool
                .run_with(process, input, Some(t), Duration::MAX, &mut || false),
            None => pool.pool.run(process, input),
        };
        match ran {
            // SAFETY: out was checked non-NULL.
            Ok(r) => unsafe { deliver(r, out) },
            Err(e) => fail(e),
        }
    })
}

/// Starts the process of `job` in a pooled sandbox, like `sbx_spawn`; `job` as for
/// `sbx_pool_run`.
#[no_mangle]
pub unsafe extern "C" fn sbx_pool_spawn(
    pool: *const sbx_pool,
    job: *const sbx_config,
    out: *mut *mut sbx_child,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: pool_ref and config_ref check for NULL.
        let pool = try_ffi!(unsafe { pool_ref(pool) });
        // SAFETY: as above.
        let job = try_ffi!(unsafe { config_ref(job) });
        let (process, timeout) = try_ffi!(pool_job(&job.spec));
        let spawned = match timeout {
            Some(t) => pool.pool.spawn_with_timeout(process, Some(t)),
            None => pool.pool.spawn(process),
        };
        match spawned {
            Ok(child) => {
                // SAFETY: out was checked non-NULL.
                unsafe { *out = Box::into_raw(Box::new(sbx_child { child })) };
                sbx_result::SBX_OK
            }
            Err(e) => fail(e),
        }
    })
}

/// How many sandboxes of the pool are ready now (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn sbx_pool_ready(pool: *const sbx_pool) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a non-NULL pointer comes from sbx_pool_new.
        unsafe { pool.as_ref() }.map_or(0, |p| p.pool.ready())
    }))
    .unwrap_or(0)
}

/// Frees a pool: its sandboxes still waiting for a job are killed and reaped. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sbx_pool_free(pool: *mut sbx_pool) {
    if !pool.is_null() {
        // SAFETY: pool was produced by Box::into_raw in sbx_pool_new and is not used afterwards.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(pool) })));
    }
}

/// The host pid of the sandbox's init (-1 for NULL).
#[no_mangle]
pub unsafe extern "C" fn sbx_child_pid(child: *const sbx_child) -> c_int {
    // SAFETY: a non-NULL pointer comes from sbx_spawn.
    unsafe { child.as_ref() }.map_or(-1, |c| c.child.pid())
}

/// Waits for the sandbox, at most `timeout_ms` milliseconds (negative: without limit). Returns
/// SBX_ERR_TIMEOUT when it is still running. The child handle stays valid (free it afterwards).
#[no_mangle]
pub unsafe extern "C" fn sbx_child_wait(
    child: *mut sbx_child,
    timeout_ms: i64,
    out: *mut *mut sbx_run_result,
) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        // SAFETY: a non-NULL pointer comes from sbx_spawn.
        let Some(c) = (unsafe { child.as_mut() }) else {
            return fail_with(sbx_result::SBX_ERR_NULL, "child is NULL");
        };
        let waited = if timeout_ms < 0 {
            c.child.wait().map(Some)
        } else {
            c.child
                .wait_timeout(Duration::from_millis(timeout_ms as u64))
        };
        match waited {
            // SAFETY: out was checked non-NULL.
            Ok(Some(r)) => unsafe { deliver(r, out) },
            Ok(None) => fail_with(sbx_result::SBX_ERR_TIMEOUT, "the sandbox is still running"),
            Err(e) => fail(e),
        }
    })
}

/// Sends `signal` (1 to SIGRTMAX, or 0 to check the sandbox is there) to every process of the
/// sandbox; a number that is no signal is SBX_ERR_INVALID_SPEC. SIGKILL ends the sandbox: its
/// init kills and reaps every process, so that their CPU time and memory are in the result (the
/// kernel does it after a second if the init has not). After the sandbox has ended: SBX_OK.
#[no_mangle]
pub unsafe extern "C" fn sbx_child_kill(child: *mut sbx_child, signal: c_int) -> sbx_result {
    guard(|| {
        // SAFETY: a non-NULL pointer comes from sbx_spawn.
        let Some(c) = (unsafe { child.as_mut() }) else {
            return fail_with(sbx_result::SBX_ERR_NULL, "child is NULL");
        };
        c.child
            .kill(signal)
            .map_or_else(fail, |()| sbx_result::SBX_OK)
    })
}

/// A pidfd of the sandbox's init (readable when it exits; owned by the handle), or -1.
#[no_mangle]
pub unsafe extern "C" fn sbx_child_pidfd(child: *const sbx_child) -> c_int {
    // SAFETY: a non-NULL pointer comes from sbx_spawn.
    unsafe { child.as_ref() }.map_or(-1, |c| c.child.pidfd())
}

/// A descriptor for an event loop: it becomes readable (poll(2)) when sbx_child_wait with a zero
/// timeout has something to do, which it then does. That is when the result is there, and,
/// where the configuration sets "timeout" or "cpu_time", when a limit is due to be checked (at
/// the deadline; every 20 ms for CPU time, with a cgroup): so a wait that returns
/// SBX_ERR_TIMEOUT after a wake-up is expected, and the limits hold for a caller that only polls
/// this. Owned by the handle; -1 for NULL.
#[no_mangle]
pub unsafe extern "C" fn sbx_child_result_fd(child: *const sbx_child) -> c_int {
    // SAFETY: a non-NULL pointer comes from sbx_spawn.
    unsafe { child.as_ref() }.map_or(-1, |c| c.child.result_fd())
}

/// The caller's end of the command's stdin (0), stdout (1) or stderr (2) when that stream is a
/// pipe, else -1. Owned by the handle: do not close it (shutdown(2)/read(2)/write(2) are fine).
#[no_mangle]
pub unsafe extern "C" fn sbx_child_stream_fd(child: *const sbx_child, stream: c_int) -> c_int {
    use std::os::fd::AsRawFd;
    // SAFETY: a non-NULL pointer comes from sbx_spawn.
    let Some(c) = (unsafe { child.as_ref() }) else {
        return -1;
    };
    let f = match stream {
        0 => c.child.stdin.as_ref(),
        1 => c.child.stdout.as_ref(),
        2 => c.child.stderr.as_ref(),
        _ => None,
    };
    f.map_or(-1, |f| f.as_raw_fd())
}

/// Freezes (frozen = true) or thaws every process of the sandbox (needs its cgroup).
#[no_mangle]
pub unsafe extern "C" fn sbx_child_freeze(child: *mut sbx_child, frozen: bool) -> sbx_result {
    guard(|| {
        // SAFETY: a non-NULL pointer comes from sbx_spawn.
        let Some(c) = (unsafe { child.as_mut() }) else {
            return fail_with(sbx_result::SBX_ERR_NULL, "child is NULL");
        };
        let r = if frozen {
            c.child.freeze()
        } else {
            c.child.thaw()
        };
        r.map_or_else(fail, |()| sbx_result::SBX_OK)
    })
}

/// Frees a child handle; a sandbox still running is killed and reaped, unless its configuration
/// set "die_with_parent" to 0: then it runs on as a child of this process, which reaps its init
/// (sbx_child_pid) with waitpid(pid, &status, __WALL). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sbx_child_free(child: *mut sbx_child) {
    if !child.is_null() {
        // SAFETY: child was produced by Box::into_raw in sbx_spawn and is not used afterwards.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(child) })));
    }
}

unsafe fn result_ref<'a>(r: *const sbx_run_result) -> Option<&'a sbx_run_result> {
    // SAFETY: a non-NULL pointer comes from sbx_run/sbx_child_wait.
    unsafe { r.as_ref() }
}

/// The exit code, or -1 when a signal ended the command (or for NULL).
#[no_mangle]
pub unsafe extern "C" fn sbx_result_exit_code(r: *const sbx_run_result) -> c_int {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }
        .and_then(|r| r.result.status.code())
        .unwrap_or(-1)
}

/// The signal that ended the command, or 0.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_signal(r: *const sbx_run_result) -> c_int {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }
        .and_then(|r| r.result.status.signal())
        .unwrap_or(0)
}

/// The verdict (SBX_VERDICT_SETUP_ERROR for NULL).
#[no_mangle]
pub unsafe extern "C" fn sbx_result_verdict(r: *const sbx_run_result) -> sbx_verdict {
    // SAFETY: result_ref handles NULL.
    match unsafe { result_ref(r) }.map(|r| r.result.verdict) {
        Some(Verdict::Ok) => sbx_verdict::SBX_VERDICT_OK,
        Some(Verdict::ExitNonzero) => sbx_verdict::SBX_VERDICT_EXIT_NONZERO,
        Some(Verdict::Signaled) => sbx_verdict::SBX_VERDICT_SIGNALED,
        Some(Verdict::WallTimeout) => sbx_verdict::SBX_VERDICT_WALL_TIMEOUT,
        Some(Verdict::CpuTimeout) => sbx_verdict::SBX_VERDICT_CPU_TIMEOUT,
        Some(Verdict::MemoryLimit) => sbx_verdict::SBX_VERDICT_MEMORY_LIMIT,
        Some(Verdict::OutputLimit) => sbx_verdict::SBX_VERDICT_OUTPUT_LIMIT,
        _ => sbx_verdict::SBX_VERDICT_SETUP_ERROR,
    }
}

/// Wall-clock seconds from spawn to exit.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_wall_time(r: *const sbx_run_result) -> f64 {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(0.0, |r| r.result.usage.wall_time)
}

/// CPU seconds (user + system) of the whole sandbox.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_cpu_time(r: *const sbx_run_result) -> f64 {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(0.0, |r| r.result.usage.cpu_time)
}

/// Peak memory in bytes (see the JSON's memory_peak_source for how it was measured).
#[no_mangle]
pub unsafe extern "C" fn sbx_result_memory_peak(r: *const sbx_run_result) -> u64 {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(0, |r| r.result.usage.memory_peak)
}

/// Processes the OOM killer ended.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_oom_kills(r: *const sbx_run_result) -> u64 {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(0, |r| r.result.usage.oom_kills)
}

/// Whether the wall-clock limit killed the sandbox.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_timed_out(r: *const sbx_run_result) -> bool {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.is_some_and(|r| r.result.timed_out)
}

/// Captured stdout (borrowed until sbx_result_free; NULL when not captured), its length in `*len`.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_stdout(r: *const sbx_run_result, len: *mut usize) -> *const u8 {
    // SAFETY: result_ref handles NULL; len is checked before writing.
    unsafe { bytes(result_ref(r).and_then(|r| r.result.stdout.as_deref()), len) }
}

/// Captured stderr, as for sbx_result_stdout.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_stderr(r: *const sbx_run_result, len: *mut usize) -> *const u8 {
    // SAFETY: as for sbx_result_stdout.
    unsafe { bytes(result_ref(r).and_then(|r| r.result.stderr.as_deref()), len) }
}

unsafe fn bytes(data: Option<&[u8]>, len: *mut usize) -> *const u8 {
    if !len.is_null() {
        // SAFETY: len is non-NULL and writable.
        unsafe { *len = data.map_or(0, <[u8]>::len) };
    }
    match data {
        None => std::ptr::null(),
        // Captured but empty: a valid address all the same, never a dangling one.
        Some([]) => c"".as_ptr().cast(),
        Some(d) => d.as_ptr(),
    }
}

/// Whether stdout (stream 1) or stderr (stream 2) was cut at the output limit.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_truncated(r: *const sbx_run_result, stream: c_int) -> bool {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.is_some_and(|r| match stream {
        1 => r.result.stdout_truncated,
        2 => r.result.stderr_truncated,
        _ => false,
    })
}

/// The enforcement report as JSON (borrowed until sbx_result_free).
#[no_mangle]
pub unsafe extern "C" fn sbx_result_report_json(r: *const sbx_run_result) -> *const c_char {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(std::ptr::null(), |r| r.report_json.as_ptr())
}

/// Status of one protection in the report: 0 enforced, 1 skipped, 2 off, -1 unknown name.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_feature_status(
    r: *const sbx_run_result,
    name: *const c_char,
) -> c_int {
    // SAFETY: result_ref handles NULL; name is checked.
    let (Some(r), false) = (unsafe { result_ref(r) }, name.is_null()) else {
        return -1;
    };
    // SAFETY: name is a non-NULL NUL-terminated string.
    let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
        return -1;
    };
    match r.result.report.feature(name).map(|f| f.status) {
        Some(rsandbox::Status::Enforced) => 0,
        Some(rsandbox::Status::Skipped) => 1,
        Some(rsandbox::Status::Off) => 2,
        None => -1,
    }
}

/// The whole result (status, verdict, usage, report) as JSON (borrowed until sbx_result_free).
#[no_mangle]
pub unsafe extern "C" fn sbx_result_json(r: *const sbx_run_result) -> *const c_char {
    // SAFETY: result_ref handles NULL.
    unsafe { result_ref(r) }.map_or(std::ptr::null(), |r| r.json.as_ptr())
}

/// Frees a result. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sbx_result_free(r: *mut sbx_run_result) {
    if !r.is_null() {
        // SAFETY: r was produced by Box::into_raw in this library and is not used afterwards.
        drop(unsafe { Box::from_raw(r) });
    }
}

/// What this host and user can use, as JSON in `*out` (free with sbx_string_free).
#[no_mangle]
pub unsafe extern "C" fn sbx_doctor_json(out: *mut *mut c_char) -> sbx_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable `*out`, as the interface requires.
        try_ffi!(unsafe { out_ptr(out) });
        let json = serde_json::to_string(&rsandbox::doctor()).unwrap_or_default();
        // SAFETY: out was checked non-NULL.
        unsafe { *out = CString::new(json).unwrap_or_default().into_raw() };
        sbx_result::SBX_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_nul_terminated() {
        // SAFETY: sbx_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(sbx_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_error_kind_has_its_code() {
        assert_eq!(
            code_for(ErrorKind::ExecutableNotFound),
            sbx_result::SBX_ERR_EXECUTABLE_NOT_FOUND
        );
        assert_eq!(
            code_for(ErrorKind::InvalidImage),
            sbx_result::SBX_ERR_INVALID_IMAGE
        );
    }
}
