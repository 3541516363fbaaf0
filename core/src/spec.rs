//! The declarative description of a sandbox: what to run and how to isolate it.
//!
//! A [`Spec`] is pure data. It round-trips through JSON (`serde`), and the CLI, the C ABI and the
//! Python module all build one and hand it to [`spawn`](crate::spawn). Its shape follows the OCI
//! runtime-spec `config.json` (process, root, mounts, namespaces, id mappings) so that such a file maps
//! onto it field by field.
//!
//! ```
//! use rsandbox::Spec;
//! let mut spec = Spec::new(["/bin/echo", "hello"]);
//! spec.hostname = "grader".into();
//! let json = spec.to_json().unwrap();
//! assert_eq!(Spec::from_json(&json).unwrap(), spec);
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything needed to build and run one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spec {
    /// The command, its environment and its standard streams.
    pub process: Process,
    /// Which ids the command runs as, and how they map to the host.
    pub user: User,
    /// Which namespaces are created.
    pub namespaces: Namespaces,
    /// The root filesystem and the mounts stacked on it.
    pub filesystem: Filesystem,
    /// Host name inside the UTS namespace.
    pub hostname: String,
    /// Network: a private namespace with only loopback, or the host's network.
    pub network: Network,
    /// Wall-clock limit in seconds; the whole sandbox is killed when it passes.
    pub timeout: Option<f64>,
    /// Kill the whole sandbox when the handle that owns it is dropped or its process dies.
    /// Without it, a sandbox whose handle is dropped before its end runs on as a child of the
    /// caller, who reaps its init ([`Child::pid`](crate::Child::pid)) with `waitpid` and
    /// `__WALL` (an init that never executes `rsandbox-init` raises no SIGCHLD).
    pub die_with_parent: bool,
    /// Captured output past this many bytes per stream is discarded and flagged (`run` only).
    pub output_limit: Option<u64>,
    /// Resource limits (cgroup v2; rlimits as reported fallbacks).
    pub limits: Limits,
    /// The sandbox's own cgroup: accounting, `cgroup.kill` teardown, freeze/thaw, and limits.
    pub cgroup: CgroupSpec,
    /// seccomp, Landlock, capabilities, rlimits and masked /proc paths.
    pub security: Security,
}

/// The protections on top of the namespaces. All on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// Landlock rules.
    pub landlock: Landlock,
    /// Capabilities kept inside the user namespace (e.g. `CAP_NET_BIND_SERVICE`); every set is
    /// emptied of all others, the bounding set included.
    pub capabilities: Vec<String>,
    /// Let the command create user namespaces of its own (the default profile refuses them).
    pub allow_nested_userns: bool,
    /// Resource limits by name: `nofile`, `nproc`, `core`, `fsize`, `as`, `stack`, `memlock`,
    /// `cpu`. `core` is 0 unless set.
    pub rlimits: BTreeMap<String, u64>,
    /// Mask the OCI default paths of /proc (kcore, keys, timer_list, sched_debug, acpi, scsi, …)
    /// and make /proc/sys, /proc/sysrq-trigger, /proc/irq, /proc/bus, /proc/fs read-only.
    pub mask_proc: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            seccomp: Seccomp::Default,
            landlock: Landlock::default(),
            capabilities: Vec::new(),
            allow_nested_userns: false,
            rlimits: BTreeMap::new(),
            mask_proc: true,
        }
    }
}

/// Which seccomp filter the command runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Seccomp {
    /// The built-in profile (what container engines deny, with EPERM).
    #[default]
    Default,
    /// No filter.
    None,
    /// A Docker/OCI seccomp profile (JSON) from this host path.
    Profile {
        /// Host path of the JSON profile.
        path: PathBuf,
    },
}

/// Landlock rules. Filesystem rules follow the mounts (read and execute everywhere, write where
/// mounted writable); these fields add to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Landlock {
    /// Off, required, or best-effort (the default: skipped and reported where the kernel lacks it).
    pub want: Want,
    /// Fail unless the kernel offers at least this ABI.
    pub min_abi: Option<u32>,
    /// Extra sandbox paths readable and executable (beyond `/`, which already is).
    pub read: Vec<String>,
    /// Extra sandbox paths writable.
    pub write: Vec<String>,
    /// TCP ports the command may bind (with any port rule, all others are refused; ABI ≥ 4).
    pub tcp_bind: Vec<u16>,
    /// TCP ports the command may connect to (ABI ≥ 4).
    pub tcp_connect: Vec<u16>,
}

impl Default for Landlock {
    fn default() -> Self {
        Landlock {
            want: Want::BestEffort,
            min_abi: None,
            read: Vec::new(),
            write: Vec::new(),
            tcp_bind: Vec::new(),
            tcp_connect: Vec::new(),
        }
    }
}

/// Resource limits of the whole sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// memory.max in bytes.
    pub memory: Option<u64>,
    /// memory.swap.max in bytes (default 0 when `memory` is set: no swapping past the limit).
    pub memory_swap: Option<u64>,
    /// pids.max: processes and threads at once.
    pub pids: Option<u64>,
    /// CPU bandwidth in CPUs (0.3 = 30% of one CPU), via cpu.max.
    pub cpus: Option<f64>,
    /// cpu.weight, 1..=10000 (default 100).
    pub cpu_weight: Option<u64>,
    /// Total CPU seconds (user + system) of the whole sandbox; then it is killed (cpu-timeout).
    pub cpu_time: Option<f64>,
    /// `required`: fail the spawn when a limit cannot be enforced by a cgroup; `best-effort`:
    /// run anyway, report each such limit as skipped and apply the rlimit fallbacks.
    pub level: Want,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: None,
            memory_swap: None,
            pids: None,
            cpus: None,
            cpu_weight: None,
            cpu_time: None,
            level: Want::Required,
        }
    }
}

/// Where the sandbox's cgroup is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupSpec {
    /// A cgroup2 directory the caller may manage (absolute, or relative to the cgroup2 mount).
    /// Default: `RSANDBOX_CGROUP_PARENT`, else the caller's own cgroup.
    pub parent: Option<PathBuf>,
    /// Whether a cgroup is used when no limit asks for one (accounting and teardown).
    pub want: Want,
}

impl Default for CgroupSpec {
    fn default() -> Self {
        CgroupSpec {
            parent: None,
            want: Want::BestEffort,
        }
    }
}

/// The sandbox's host name unless the spec sets one.
pub(crate) const DEFAULT_HOSTNAME: &str = "rsandbox";

impl Default for Spec {
    fn default() -> Self {
        Spec {
            process: Process::default(),
            user: User::default(),
            namespaces: Namespaces::default(),
            filesystem: Filesystem::default(),
            hostname: DEFAULT_HOSTNAME.into(),
            network: Network::None,
            timeout: None,
            die_with_parent: true,
            output_limit: None,
            limits: Limits::default(),
            cgroup: CgroupSpec::default(),
            security: Security::default(),
        }
    }
}

impl Spec {
    /// A spec running `args` with every default: all namespaces, the read-only host view.
    pub fn new<I, S>(args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut spec = Spec::default();
        spec.process.args = args.into_iter().map(Into::into).collect();
        spec
    }

    /// Parses a spec from JSON; unknown fields are an error, missing ones take their defaults.
    pub fn from_json(text: &str) -> Result<Spec> {
        // serde would also fill a struct from a JSON array; a spec is an object.
        if !text.trim_start().starts_with('{') {
            return Err(Error::InvalidSpec {
                field: "spec".into(),
                reason: "invalid JSON spec: expected an object ({...})".into(),
            });
        }
        // The field at fault by its path (`limits.memory`, `process.args[1]`).
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "spec".into() } else { path };
            Error::InvalidSpec {
                field,
                reason: format!("invalid JSON spec: {}", e.inner()),
            }
        })?;
        de.end().map_err(|e| Error::InvalidSpec {
            field: "spec".into(),
            reason: format!("invalid JSON spec: {e}"),
        })?;
        Ok(spec)
    }

    /// Serializes the spec to pretty-printed JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidSpec {
            field: "spec".into(),
            reason: format!("cannot serialize spec: {e}"),
        })
    }
}

/// The command and its immediate environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Process {
    /// argv; `args[0]` is looked up in the sandbox's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// Variables set in the sandbox. The environment is otherwise empty, except for the defaults
    /// `PATH`, `HOME` (the working directory) and the variables named in `pass_env`.
    pub env: BTreeMap<String, String>,
    /// Names of host variables copied in when they are set (default: `TERM`).
    pub pass_env: Vec<String>,
    /// Working directory inside the sandbox (default: the writable work directory).
    pub cwd: Option<String>,
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            args: Vec::new(),
            env: BTreeMap::new(),
            pass_env: vec!["TERM".into()],
            cwd: None,
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
        }
    }
}

/// Where a standard stream of the command goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Stdio {
    /// The caller's own stream.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A pipe whose other end the [`Child`](crate::Child) holds.
    Pipe,
    /// A host file, opened by the caller's process (created for output streams).
    File {
        /// Host path.
        path: PathBuf,
        /// Append instead of truncating (output streams only).
        #[serde(default)]
        append: bool,
    },
    /// A file descriptor of the calling process, duplicated into the sandbox.
    Fd(i32),
    /// Wherever stdout goes (stderr only): both streams in one, in the order written.
    Stdout,
}

/// The identity of the command inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    /// uid inside the sandbox. Default: the caller's uid (0 with a subordinate range).
    pub uid: Option<u32>,
    /// gid inside the sandbox. Default: the caller's gid (0 with a subordinate range).
    pub gid: Option<u32>,
    /// How inside ids map to host ids.
    pub mapping: IdMapping,
}

/// How the user namespace's ids map onto the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IdMapping {
    /// One id: the inside uid/gid maps to the caller's own uid/gid. Needs no helper.
    #[default]
    Single,
    /// 65536 ids: inside 0 is the caller, 1..65536 come from the caller's `/etc/subuid` and
    /// `/etc/subgid` ranges, installed by the setuid helpers `newuidmap`/`newgidmap`.
    SubordinateRange,
}

/// Whether a kernel feature is used, and what happens when the host lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Want {
    /// Not used.
    Off,
    /// Used; the spawn fails when the host cannot provide it.
    Required,
    /// Used when the host can provide it; otherwise skipped and reported as skipped.
    BestEffort,
}

impl Want {
    /// True unless `Off`.
    pub fn wanted(self) -> bool {
        self != Want::Off
    }
}

/// The namespaces created for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespaces {
    /// User namespace (needed for everything else when the caller is not root).
    pub user: Want,
    /// Mount namespace; off means no private root (the command sees the host's mounts).
    pub mount: Want,
    /// PID namespace with an init as pid 1 and a fresh /proc.
    pub pid: Want,
    /// IPC namespace.
    pub ipc: Want,
    /// UTS namespace (own host name).
    pub uts: Want,
    /// Network namespace (only when `network` is `none`).
    pub net: Want,
    /// cgroup namespace.
    pub cgroup: Want,
    /// Time namespace (own monotonic and boot-time clocks).
    pub time: Want,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            user: Want::Required,
            mount: Want::Required,
            pid: Want::Required,
            ipc: Want::Required,
            uts: Want::Required,
            net: Want::Required,
            cgroup: Want::Required,
            time: Want::Off,
        }
    }
}

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// A private network namespace holding only `lo`, brought up.
    None,
    /// The host's network namespace.
    Host,
}

/// The root filesystem and the mounts on top of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filesystem {
    /// What `/` is.
    pub root: Root,
    /// Extra mounts, made after the root's own: outer destinations before those inside them
    /// (so that none hides another), in the given order at the same depth.
    pub mounts: Vec<Mount>,
    /// An empty writable directory (tmpfs) created at this path; the default cwd and `HOME`.
    pub workdir: Option<String>,
    /// Mount a fresh /proc (needs the PID namespace).
    pub proc: bool,
    /// Build a minimal /dev (null, zero, full, random, urandom, tty, pts, shm, fd links).
    pub dev: bool,
    /// Where the tree is the default host view, start from this process's template of it from
    /// the second sandbox on: the read-only root, the host view and /dev (read-only) are built
    /// once and copied by the kernel into each sandbox, which mounts only its own /proc,
    /// /dev/pts, /dev/shm, /tmp, /run and work directory. Off: every tree is built in full (and
    /// the process holds no template's namespaces between starts).
    pub template: bool,
}

impl Default for Filesystem {
    fn default() -> Self {
        Filesystem {
            root: Root::HostView,
            mounts: Vec::new(),
            workdir: Some("/work".into()),
            proc: true,
            dev: true,
            template: true,
        }
    }
}

/// What the sandbox's `/` is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Root {
    /// An empty read-only tmpfs holding the host's /usr, /bin, /sbin, /lib, /lib32, /lib64, /etc and
    /// /opt read-only, plus /proc, /dev, tmpfs /tmp and /run.
    HostView,
    /// A host directory, read-only unless `writable`. Its mount points (/proc, /dev, /tmp, …) must exist.
    Directory {
        /// Absolute host path.
        path: PathBuf,
        /// Mount it read-write.
        #[serde(default)]
        writable: bool,
    },
    /// Read-only layers under one writable upper layer (copy-on-write).
    Overlay(Overlay),
}

/// A layered root: read-only lower directories (and/or an OCI image's layers) under a writable upper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Overlay {
    /// Read-only host directories, top-most first (the order of overlayfs' `lowerdir`).
    pub lowers: Vec<PathBuf>,
    /// An OCI image whose layers are stacked beneath `lowers`.
    pub image: Option<ImageSource>,
    /// Where writes go.
    pub upper: Upper,
    /// Which overlay implementation assembles the layers.
    pub driver: OverlayDriver,
}

/// A local OCI image layout (no registry access: build or copy the layout locally).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// Directory holding `oci-layout`, `index.json` and `blobs/`.
    pub layout: PathBuf,
    /// Selects the manifest whose `org.opencontainers.image.ref.name` is this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Where unpacked layers are kept (default [`crate::image::default_store`]).
    #[serde(default)]
    pub store: Option<PathBuf>,
}

/// The writable layer of an overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Upper {
    /// A tmpfs, gone when the sandbox exits.
    Ephemeral {
        /// Size cap in bytes; writes past it fail with ENOSPC.
        #[serde(default)]
        size: Option<u64>,
    },
    /// A host directory that keeps the sandbox's changes (deletions as whiteouts) after exit. Its
    /// work directory is a hidden sibling, `.NAME.work`.
    Persistent {
        /// Absolute host path; created when missing.
        path: PathBuf,
    },
}

impl Default for Upper {
    fn default() -> Self {
        Upper::Ephemeral { size: None }
    }
}

/// The overlay implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayDriver {
    /// Kernel overlayfs; fuse-overlayfs when the kernel refuses.
    #[default]
    Auto,
    /// Kernel overlayfs only.
    Kernel,
    /// fuse-overlayfs only.
    Fuse,
}

/// One mount in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Mount {
    /// A host file or directory made visible at `destination` (recursively).
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute path inside the sandbox.
        destination: String,
        /// Read-only (default true).
        #[serde(default = "yes")]
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Absolute path inside the sandbox.
        destination: String,
        /// Size cap in bytes (kernel default: half of RAM).
        #[serde(default)]
        size: Option<u64>,
        /// Permission bits of its root (default 0755).
        #[serde(default)]
        mode: Option<u32>,
    },
}

fn yes() -> bool {
    true
}

impl Mount {
    /// Where the mount appears inside the sandbox.
    pub fn destination(&self) -> &str {
        match self {
            Mount::Bind { destination, .. } | Mount::Tmpfs { destination, .. } => destination,
        }
    }
}
