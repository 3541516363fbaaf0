//! rsandbox: rootless Linux sandboxes built from kernel primitives.
//!
//! A [`Spec`] says what to run and how to isolate it; [`spawn`] builds the sandbox (user, mount,
//! PID, IPC, UTS, network and cgroup namespaces, a read-only view of the host or a rootfs, a fresh
//! /proc and /dev) and starts the command; [`run`] does the same and waits, capturing output. Every
//! sandbox comes with a [`Report`] of what was enforced and what was skipped, and every failure
//! names the step, path and errno that caused it.
//!
//! ```no_run
//! use rsandbox::{run, Spec};
//!
//! let mut spec = Spec::new(["sh", "-c", "id -u; hostname"]);
//! spec.timeout = Some(5.0);
//! let result = run(&spec)?;
//! assert!(result.status.success());
//! print!("{}", String::from_utf8_lossy(result.stdout.as_deref().unwrap_or_default()));
//! # Ok::<(), rsandbox::Error>(())
//! ```
//!
//! Spawning is safe from multi-threaded programs: everything is allocated before clone, and the
//! sandbox's side makes only raw system calls until it executes the command.

#![warn(missing_docs)]

mod capture;
mod cgroup;
mod child;
pub mod doctor;
pub mod error;
mod forksafe;
pub mod image;
mod landlock;
mod mounts;
mod overlay;
mod pool;
pub mod report;
mod sandbox;
mod seccomp;
pub mod spec;
mod sys;
mod template;
mod userns;

pub use doctor::{doctor, Check, Doctor};
pub use error::{Errno, Error, ErrorKind, Result, Step};
pub use image::{ImageConfig, UnpackedImage};
pub use mounts::HOST_VIEW_DIRS;
pub use overlay::{diff, Diff, DiffPath};
pub use pool::Pool;
pub use report::{Feature, IdRange, MountEntry, Report, Status};
#[doc(hidden)]
pub use sandbox::__bench_plan;
pub use sandbox::{
    run, run_interruptible, run_with_input, spawn, Child, ExitStatus, RunResult, Usage, Verdict,
    DEFAULT_PATH, END_GRACE,
};
pub use spec::{
    CgroupSpec, Filesystem, IdMapping, ImageSource, Landlock, Limits, Mount, Namespaces, Network,
    Overlay, OverlayDriver, Process, Root, Seccomp, Security, Spec, Stdio, Upper, User, Want,
};
