//! Error types. Every OS failure names the setup step, the path it concerned and the errno; where the
//! host is the cause, the error carries the remedy. [`Error::kind`] is the one stable classification
//! that the C ABI and the Python module map from.

use std::fmt;
use std::path::PathBuf;

pub use nix::errno::Errno;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setup step of the sandbox, in the order they run. The numbering travels from the sandbox to the
/// caller over a pipe; it is internal and may change between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Step {
    /// Creating the sandbox's first process (clone3, or clone where clone3 is refused).
    Clone = 1,
    /// Closing inherited descriptors the sandbox must not keep.
    CloseFds,
    /// Writing /proc/self/setgroups.
    DenySetgroups,
    /// Writing the uid map.
    UidMap,
    /// Writing the gid map.
    GidMap,
    /// Waiting for the caller to install id maps.
    WaitForMaps,
    /// Making the inherited mount tree private.
    MakeRootPrivate,
    /// Opening a host path to be mounted (open_tree).
    OpenSource,
    /// Setting read-only/nosuid/nodev on a mount (mount_setattr).
    SetMountAttributes,
    /// Creating a new filesystem instance (fsopen/fsconfig/fsmount).
    CreateFilesystem,
    /// Attaching the new root at the staging point.
    AttachRoot,
    /// Creating a mount point (directory or file) inside the new root.
    CreateMountPoint,
    /// Attaching a mount at its destination (move_mount).
    Mount,
    /// Creating a symbolic link inside the new root.
    Symlink,
    /// Switching to the new root (pivot_root).
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// Making the new root read-only.
    RemountRootReadonly,
    /// Setting the host name.
    SetHostname,
    /// Bringing up the loopback interface.
    LoopbackUp,
    /// Entering a new time namespace.
    UnshareTime,
    /// Forking the command from the sandbox's init.
    ForkCommand,
    /// Starting a new session.
    Setsid,
    /// Installing the standard streams.
    Stdio,
    /// Changing to the working directory.
    Chdir,
    /// Switching to the inside gid.
    SetGid,
    /// Switching to the inside uid.
    SetUid,
    /// Resetting signal dispositions and mask.
    ResetSignals,
    /// Setting no_new_privs.
    NoNewPrivs,
    /// Executing the command.
    Exec,
    /// Arranging for the sandbox to die with its caller.
    DieWithParent,
    /// Setting up the init's signal handling.
    InitSignals,
    /// Setting resource limits (rlimits).
    Rlimits,
    /// Dropping capabilities.
    Capabilities,
    /// Applying the Landlock ruleset.
    Landlock,
    /// Loading the seccomp filter.
    Seccomp,
    /// Executing the sandbox's init after setup.
    ExecInit,
    /// Creating the network namespace (beside the rest of setup, or ahead of the start) and
    /// entering it.
    NetworkNamespace,
    /// Entering the namespaces of the mount tree's template (or building it).
    EnterTemplate,
    /// Moving into the sandbox's cgroup from inside, where clone3 (which starts a process in its
    /// cgroup) is refused, and making the cgroup namespace there.
    JoinCgroup,
    /// Setting the sandbox's user namespace's `max_user_namespaces` to 0 (no nested user
    /// namespaces where the default seccomp profile does not refuse them).
    DenyNestedUserns,
}

impl Step {
    /// All steps, for decoding the number that crosses the pipe.
    const ALL: [Step; 40] = [
        Step::Clone,
        Step::CloseFds,
        Step::DenySetgroups,
        Step::UidMap,
        Step::GidMap,
        Step::WaitForMaps,
        Step::MakeRootPrivate,
        Step::OpenSource,
        Step::SetMountAttributes,
        Step::CreateFilesystem,
        Step::AttachRoot,
        Step::CreateMountPoint,
        Step::Mount,
        Step::Symlink,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::RemountRootReadonly,
        Step::SetHostname,
        Step::LoopbackUp,
        Step::UnshareTime,
        Step::ForkCommand,
        Step::Setsid,
        Step::Stdio,
        Step::Chdir,
        Step::SetGid,
        Step::SetUid,
        Step::ResetSignals,
        Step::NoNewPrivs,
        Step::Exec,
        Step::DieWithParent,
        Step::InitSignals,
        Step::Rlimits,
        Step::Capabilities,
        Step::Landlock,
        Step::Seccomp,
        Step::ExecInit,
        Step::NetworkNamespace,
        Step::EnterTemplate,
        Step::JoinCgroup,
        Step::DenyNestedUserns,
    ];

    pub(crate) fn from_u32(n: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == n)
    }

    /// A short kebab-case name, stable across versions.
    pub fn name(self) -> &'static str {
        match self {
            Step::Clone => "clone",
            Step::CloseFds => "close-fds",
            Step::DenySetgroups => "deny-setgroups",
            Step::UidMap => "uid-map",
            Step::GidMap => "gid-map",
            Step::WaitForMaps => "wait-for-maps",
            Step::MakeRootPrivate => "make-root-private",
            Step::OpenSource => "open-source",
            Step::SetMountAttributes => "set-mount-attributes",
            Step::CreateFilesystem => "create-filesystem",
            Step::AttachRoot => "attach-root",
            Step::CreateMountPoint => "create-mount-point",
            Step::Mount => "mount",
            Step::Symlink => "symlink",
            Step::PivotRoot => "pivot-root",
            Step::DetachOldRoot => "detach-old-root",
            Step::RemountRootReadonly => "remount-root-readonly",
            Step::SetHostname => "set-hostname",
            Step::LoopbackUp => "loopback-up",
            Step::UnshareTime => "unshare-time",
            Step::ForkCommand => "fork-command",
            Step::Setsid => "setsid",
            Step::Stdio => "stdio",
            Step::Chdir => "chdir",
            Step::SetGid => "setgid",
            Step::SetUid => "setuid",
            Step::ResetSignals => "reset-signals",
            Step::NoNewPrivs => "no-new-privs",
            Step::Exec => "exec",
            Step::DieWithParent => "die-with-parent",
            Step::InitSignals => "init-signals",
            Step::Rlimits => "rlimits",
            Step::Capabilities => "capabilities",
            Step::Landlock => "landlock",
            Step::Seccomp => "seccomp",
            Step::ExecInit => "exec-init",
            Step::NetworkNamespace => "network-namespace",
            Step::EnterTemplate => "enter-template",
            Step::JoinCgroup => "join-cgroup",
            Step::DenyNestedUserns => "deny-nested-userns",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The stable classification of an [`Error`]. The C ABI's result codes and the Python exception
/// classes are derived from this and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The spec is invalid (bad value, empty argv, NUL byte, relative path, …).
    InvalidSpec,
    /// A host path the spec names does not exist.
    PathNotFound,
    /// A uid or gid cannot be mapped into the user namespace.
    UnmappableId,
    /// The command does not exist inside the sandbox.
    ExecutableNotFound,
    /// The command exists but cannot be executed.
    NotExecutable,
    /// A setup step failed with an OS error.
    Setup,
    /// The host cannot provide a required feature.
    Unsupported,
    /// An OS error in the calling process (pipes, waiting, reading output).
    Io,
    /// An OCI image or one of its blobs is malformed, missing or fails verification.
    InvalidImage,
}

impl ErrorKind {
    /// A stable kebab-case name, e.g. `executable-not-found` (used in JSON results).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidSpec => "invalid-spec",
            ErrorKind::PathNotFound => "path-not-found",
            ErrorKind::UnmappableId => "unmappable-id",
            ErrorKind::ExecutableNotFound => "executable-not-found",
            ErrorKind::NotExecutable => "not-executable",
            ErrorKind::Setup => "setup",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::InvalidImage => "invalid-image",
        }
    }
}

/// Every way a sandbox operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec is invalid.
    #[error("invalid spec: {field}: {reason}")]
    InvalidSpec {
        /// The offending field, e.g. `process.args[1]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host path named by the spec does not exist or cannot be reached.
    #[error("{what} not found: {}: {errno:?} ({})", path.display(), errno.desc())]
    PathNotFound {
        /// What the path was for ("rootfs", "bind source", …).
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// The errno from looking it up.
        errno: Errno,
    },
    /// An id cannot be mapped into the user namespace.
    #[error("cannot map {which} {id} into the sandbox: {reason}")]
    UnmappableId {
        /// "uid" or "gid".
        which: &'static str,
        /// The requested inside id.
        id: u32,
        /// Why, and what would make it mappable.
        reason: String,
    },
    /// The command is not present in the sandbox's filesystem, or the interpreter it asks for is
    /// not.
    #[error("executable not found in sandbox: {name}{}", not_found_suffix(name, *errno, *interpreter_missing))]
    ExecutableNotFound {
        /// The name as given in argv\[0\].
        name: String,
        /// What the last lookup gave: ENOENT, or ENOTDIR, ELOOP, ENAMETOOLONG for a path that
        /// cannot name a file.
        errno: Errno,
        /// The file is there, but the interpreter its `#!` line names (or an ELF program's
        /// dynamic loader) is not.
        interpreter_missing: bool,
    },
    /// The command exists but the kernel refused to execute it.
    #[error("cannot execute {name} in sandbox: {errno:?} ({}){}", errno.desc(), not_executable_suffix(*errno))]
    NotExecutable {
        /// The name as given in argv\[0\].
        name: String,
        /// The errno from execve.
        errno: Errno,
    },
    /// A setup step failed.
    #[error("sandbox setup failed at step {step}: {detail} => {errno:?} ({}){}", errno.desc(), remedy_suffix(remedy))]
    Setup {
        /// The step.
        step: Step,
        /// The operation and path, e.g. `move_mount("/usr" -> "/usr")`.
        detail: String,
        /// The errno.
        errno: Errno,
        /// How to fix the host, where the host is the cause.
        remedy: Option<String>,
    },
    /// The host lacks a feature the spec requires.
    #[error("{feature} not available: {reason}{}", remedy_suffix(remedy))]
    Unsupported {
        /// The feature, e.g. "user namespaces".
        feature: String,
        /// Why it is not available.
        reason: String,
        /// How to make it available.
        remedy: Option<String>,
        /// The errno of the host's refusal, where one was seen (the clone refused for a user
        /// namespace, the kernel overlay mount, /dev/fuse's open).
        errno: Option<Errno>,
    },
    /// An OCI image layout, manifest, config or layer is unusable.
    #[error("invalid image {}: {reason}", path.display())]
    InvalidImage {
        /// The file or blob at fault (e.g. `…/blobs/sha256/ab12…`).
        path: PathBuf,
        /// What is wrong, e.g. "digest mismatch: expected sha256:…, got sha256:…".
        reason: String,
    },
    /// An OS error in the calling process.
    #[error("{op}{}: {source}{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(), remedy_suffix(remedy))]
    Io {
        /// The operation, e.g. "pipe2" or "waitid".
        op: &'static str,
        /// The path it concerned, if any.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
        /// How to fix the host, where a limit of it is the cause (open descriptors).
        remedy: Option<String>,
    },
}

/// What to do when descriptors run out (EMFILE: this process's limit; ENFILE: the system's).
pub(crate) fn descriptor_remedy(errno: Errno) -> Option<String> {
    match errno {
        Errno::EMFILE => {
            let limit = match crate::sys::soft_rlimit(crate::sys::rlimit::NOFILE) {
                Ok(n) if n != libc::RLIM_INFINITY => format!(" ({n} here)"),
                _ => String::new(),
            };
            Some(format!(
                "this process has reached its limit of open descriptors, RLIMIT_NOFILE{limit}: a \
                 start holds about 20 while it sets up, and each sandbox a few until it is waited \
                 for; raise the limit (ulimit -n, LimitNOFILE= for a systemd service) or close \
                 descriptors"
            ))
        }
        Errno::ENFILE => Some(
            "the system's table of open files is full: close files elsewhere, or raise \
             fs.file-max"
                .into(),
        ),
        _ => None,
    }
}

fn not_found_suffix(name: &str, errno: Errno, interpreter_missing: bool) -> String {
    if interpreter_missing {
        return " exists, but the interpreter it asks for (its #! line, or an ELF program's \
                dynamic loader) is not in the sandbox"
            .into();
    }
    let mut out = String::new();
    if errno != Errno::ENOENT {
        out = format!(" ({errno:?}: {})", errno.desc());
    }
    if name.contains('/') && !name.starts_with('/') {
        out.push_str(
            "; a relative path is looked up from the sandbox's working directory (/work unless \
             set), not the caller's",
        );
    } else if name.starts_with('/') {
        out.push_str(
            "; the path is the sandbox's: a host file outside what the sandbox sees (the host \
             view's system directories, or the rootfs) must be bound in (CLI: --ro-bind)",
        );
    }
    out
}

fn not_executable_suffix(errno: Errno) -> &'static str {
    match errno {
        Errno::EACCES => {
            "; a directory, a file without execute permission, or a file on a mount without \
             exec"
        }
        Errno::ENOEXEC => "; not a program this kernel runs, and no #! line",
        _ => "",
    }
}

fn remedy_suffix(remedy: &Option<String>) -> String {
    match remedy {
        Some(r) => format!("; remedy: {r}"),
        None => String::new(),
    }
}

impl Error {
    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidSpec { .. } => ErrorKind::InvalidSpec,
            Error::PathNotFound { .. } => ErrorKind::PathNotFound,
            Error::UnmappableId { .. } => ErrorKind::UnmappableId,
            Error::ExecutableNotFound { .. } => ErrorKind::ExecutableNotFound,
            Error::NotExecutable { .. } => ErrorKind::NotExecutable,
            Error::Setup { .. } => ErrorKind::Setup,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Io { .. } => ErrorKind::Io,
            Error::InvalidImage { .. } => ErrorKind::InvalidImage,
        }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::PathNotFound { errno, .. }
            | Error::NotExecutable { errno, .. }
            | Error::ExecutableNotFound { errno, .. }
            | Error::Setup { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            Error::Unsupported { errno, .. } => *errno,
            _ => None,
        }
    }

    /// This error with `errno` as the errno of the host's refusal, where the error kind carries
    /// one that was not known where it was made.
    pub(crate) fn with_errno(self, errno: Errno) -> Error {
        match self {
            Error::Unsupported {
                feature,
                reason,
                remedy,
                errno: None,
            } => Error::Unsupported {
                feature,
                reason,
                remedy,
                errno: Some(errno),
            },
            other => other,
        }
    }

    /// The setup step that failed, for setup errors.
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Setup { step, .. } => Some(*step),
            Error::ExecutableNotFound { .. } | Error::NotExecutable { .. } => Some(Step::Exec),
            _ => None,
        }
    }

    /// The host path the error concerns, when it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::PathNotFound { path, .. } | Error::InvalidImage { path, .. } => Some(path),
            Error::Io { path, .. } => path.as_deref(),
            _ => None,
        }
    }

    /// The remedy for host-caused failures.
    pub fn remedy(&self) -> Option<&str> {
        match self {
            Error::Setup { remedy, .. }
            | Error::Unsupported { remedy, .. }
            | Error::Io { remedy, .. } => remedy.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: Option<PathBuf>, source: std::io::Error) -> Error {
        let remedy = source
            .raw_os_error()
            .and_then(|e| descriptor_remedy(Errno::from_raw(e)));
        Error::Io {
            op,
            path,
            source,
            remedy,
        }
    }

    pub(crate) fn os(op: &'static str, errno: Errno) -> Error {
        Error::io(op, None, std::io::Error::from_raw_os_error(errno as i32))
    }
}
