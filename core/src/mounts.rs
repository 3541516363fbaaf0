//! The sandbox's filesystem: planned in the caller, built inside the new mount namespace.
//!
//! Planning ([`MountPlan::new`]) checks host paths, reads symlinks and prepares every C string, so
//! that building ([`MountPlan::build`]) makes raw syscalls only. Building uses the new mount API:
//! host trees are cloned with `open_tree` *before* anything is mounted, so a later mount can never
//! shadow a source; read-only is applied with `mount_setattr`, which adds attributes without
//! clearing the ones the kernel locked on the source (a plain `MS_REMOUNT|MS_RDONLY` would fail
//! with EPERM inside a user namespace); and every destination is resolved with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in a rootfs cannot redirect a mount outside it.

use std::ffi::{CStr, CString};
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::error::{Error, Result, Step};
use crate::overlay::{FuseSupport, OverlayPlan};
use crate::report::{MountEntry, Status};
use crate::spec::{Filesystem, Mount, Root};
use crate::sys;

/// The host directories the default host view exposes read-only.
pub const HOST_VIEW_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt",
];

/// Device nodes bound from the host into the sandbox's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A host tree cloned before anything is mounted.
struct Source {
    path: CString,
    recursive: bool,
    attrs: u64,
}

/// What the new root is.
enum RootFs {
    /// A fresh tmpfs, made read-only once the mount points exist.
    Tmpfs,
    /// The source with this index.
    Tree(usize),
    /// Layers under a writable upper.
    Overlay(Box<OverlayPlan>),
}

/// What the planner knows about the root's contents: where mount points may be looked up, and
/// whether missing ones may be created.
struct RootCheck {
    /// Host directories that make up the root (lowers first to last); empty for the host view.
    dirs: Vec<PathBuf>,
    create: bool,
    what: &'static str,
    remedy: &'static str,
}

impl RootCheck {
    fn anything() -> RootCheck {
        RootCheck {
            dirs: Vec::new(),
            create: true,
            what: "root",
            remedy: "",
        }
    }

    fn exists(&self, dest: &str) -> bool {
        let rel = dest.trim_start_matches('/');
        self.dirs
            .iter()
            .any(|d| d.join(rel).symlink_metadata().is_ok())
    }
}

/// One step of building the tree, relative to the new root.
enum Op {
    /// mkdir `parent/name` unless it exists.
    Dir {
        parent: CString,
        name: CString,
        full: CString,
    },
    /// Create an empty file `parent/name` to mount a file on.
    File {
        parent: CString,
        name: CString,
        full: CString,
    },
    /// `parent/name` -> `target`.
    Symlink {
        parent: CString,
        name: CString,
        target: CString,
    },
    /// Attach the cloned source at `dest`.
    Bind { source: usize, dest: CString },
    /// Create a filesystem and attach it at `dest`.
    NewFs {
        fstype: CString,
        options: Vec<(CString, Option<CString>)>,
        attrs: u64,
        dest: CString,
    },
    /// Hide or freeze `path` of the proc filesystem mounted at `proc` (skipped where this
    /// kernel's proc has no such path).
    Mask {
        how: Mask,
        proc: CString,
        path: CString,
    },
}

/// How a path is masked.
#[derive(Clone, Copy)]
enum Mask {
    /// A file: cover it with a fresh clone of the host's /dev/null.
    File,
    /// A directory: cover it with an empty read-only tmpfs.
    Dir,
    /// Remount it (and everything below) read-only.
    ReadOnly,
}

/// The OCI runtime's default masked paths of /proc.
const MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];
/// …and its default read-only paths.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A host directory of the default view, as found on this host.
enum HostDir {
    Dir,
    Symlink(String),
    Absent,
}

/// What the default host view, the /proc masks and /dev are made of on this host. Looked up once
/// per process (a dozen stat calls that would otherwise be paid by every spawn): system
/// directories, the kernel's /proc entries and device nodes do not come and go under a program.
struct HostFacts {
    /// One per entry of [`HOST_VIEW_DIRS`].
    view: Vec<HostDir>,
    /// The masked and read-only /proc paths this kernel has, with how each is covered.
    proc: Vec<(&'static str, Mask)>,
    /// One per entry of [`DEVICES`]: whether the host has it as a character device.
    devices: [bool; DEVICES.len()],
    /// Where to attach a root with no layers to avoid.
    staging: CString,
}

impl HostFacts {
    fn get() -> &'static HostFacts {
        static FACTS: std::sync::OnceLock<HostFacts> = std::sync::OnceLock::new();
        FACTS.get_or_init(HostFacts::probe)
    }

    fn probe() -> HostFacts {
        let view = HOST_VIEW_DIRS
            .iter()
            .map(|dir| match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => match std::fs::read_link(dir) {
                    Ok(target) => HostDir::Symlink(target.to_string_lossy().into_owned()),
                    Err(_) => HostDir::Absent,
                },
                Ok(meta) if meta.is_dir() => HostDir::Dir,
                _ => HostDir::Absent,
            })
            .collect();
        let mut proc = Vec::new();
        for path in MASKED.iter().chain(&READ_ONLY) {
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                continue;
            };
            let how = if READ_ONLY.contains(path) {
                Mask::ReadOnly
            } else if meta.is_dir() {
                Mask::Dir
            } else {
                Mask::File
            };
            proc.push((*path, how));
        }
        let devices = DEVICES.map(|dev| {
            std::fs::metadata(format!("/dev/{dev}"))
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false)
        });
        HostFacts {
            view,
            proc,
            devices,
            staging: staging_dir(&[]),
        }
    }
}

/// Everything needed to build the sandbox's root, prepared before clone.
pub(crate) struct MountPlan {
    sources: Vec<Source>,
    root: RootFs,
    root_readonly: bool,
    ops: Vec<Op>,
    /// Where the new root is attached before pivot_root: any existing host directory will do.
    staging: CString,
    /// Human-readable descriptions of the sources, for errors.
    source_descriptions: Vec<String>,
    /// Human-readable descriptions of the ops, for errors.
    descriptions: Vec<String>,
    /// What the report says about the filesystem.
    pub entries: Vec<MountEntry>,
    /// Whether the tree can come from a template (see [`Build`]).
    template_ok: bool,
    /// The shared ops described ([`MountPlan::template_key`]), worked out once per plan.
    shared_key: std::sync::OnceLock<Option<String>>,
}

/// Plans of the default host view without extra mounts, by what they are made of. Such a plan
/// depends only on the spec's filesystem, the ids, the PID namespace, the /proc masks and the
/// host facts (looked up once per process): nothing on disk is checked for it. A process that
/// starts many sandboxes of a kind plans their tree once.
type PlanKey = (Filesystem, (u32, u32), bool, bool);
static PLANS: crate::forksafe::PerProcess<Vec<(PlanKey, Arc<MountPlan>)>> =
    crate::forksafe::PerProcess::new(Vec::new);
/// More kinds than this: the oldest plan is forgotten.
const MAX_PLANS: usize = 8;

/// The mount plan for a start: [`MountPlan::new`], or the same plan made for an earlier start of
/// this process where nothing it depends on can have changed (see [`PLANS`]). A plan for an
/// overlay root is always new, and so the caller's alone.
pub(crate) fn plan(
    fs: &Filesystem,
    ids: (u32, u32),
    pid_ns: bool,
    fuse: &FuseSupport,
    mask_proc: bool,
) -> Result<Arc<MountPlan>> {
    if fs.root != Root::HostView || !fs.mounts.is_empty() {
        return MountPlan::new(fs, ids, pid_ns, fuse, mask_proc).map(Arc::new);
    }
    let same = |k: &PlanKey| k.0 == *fs && k.1 == ids && k.2 == pid_ns && k.3 == mask_proc;
    if let Some((_, p)) = PLANS.lock().iter().find(|(k, _)| same(k)) {
        return Ok(p.clone());
    }
    let made = Arc::new(MountPlan::new(fs, ids, pid_ns, fuse, mask_proc)?);
    let mut plans = PLANS.lock();
    if !plans.iter().any(|(k, _)| same(k)) {
        if plans.len() >= MAX_PLANS {
            plans.remove(0);
        }
        plans.push(((fs.clone(), ids, pid_ns, mask_proc), made.clone()));
    }
    Ok(made)
}

/// How [`MountPlan::build`] runs.
///
/// A sandbox's tree is mostly the same from one start to the next: the host view's binds and
/// symlinks, the read-only root and /dev's device nodes. A template is that shared part, built
/// once in a mount namespace of its own (with a user namespace that maps only the caller's ids):
/// a sandbox started inside it gets a copy of its tree with its new mount namespace, and mounts
/// only what must be its own: /proc with its masks, /dev/pts, /dev/shm, /tmp, /run and the work
/// directory. The copy is made by the kernel, and it has no host mounts to detach: no
/// pivot_root, no unmount, no RCU grace period per start. Every template mount is read-only
/// (/dev included), so nothing one sandbox does shows in the next; and as the copy is made for
/// a less privileged user namespace, the kernel locks its mounts (they cannot be unmounted to
/// see what is under them, nor made writable).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Build {
    /// The whole tree, then pivot_root into it and detach the old root.
    Full,
    /// The template: the shared part, /dev read-only and an unmasked /proc (the kernel lets a
    /// user namespace mount proc only where a fully visible one exists already; each sandbox's
    /// own /proc, masked, goes on top of it), then pivot_root.
    Template,
    /// In a copy of the template's tree: the sandbox's own /proc, before the id maps are written
    /// (writing them goes through it).
    OwnProc,
    /// In a copy of the template's tree: the rest of the sandbox's own mounts.
    OwnRest,
}

/// A failure while building: the step, the errno, and the index into the descriptions.
pub(crate) type BuildError = (Step, Errno, u32);

impl MountPlan {
    /// Plans the filesystem. `ids` are the inside uid and gid of the command (owner of the work
    /// directory); `pid_ns` says whether a fresh /proc can be mounted.
    pub fn new(
        fs: &Filesystem,
        ids: (u32, u32),
        pid_ns: bool,
        fuse: &FuseSupport,
        mask_proc: bool,
    ) -> Result<MountPlan> {
        let mut plan = MountPlan {
            sources: Vec::new(),
            root: RootFs::Tmpfs,
            root_readonly: true,
            ops: Vec::new(),
            staging: HostFacts::get().staging.clone(),
            source_descriptions: Vec::new(),
            descriptions: Vec::new(),
            entries: Vec::new(),
            template_ok: false,
            shared_key: std::sync::OnceLock::new(),
        };
        let root = match &fs.root {
            Root::HostView => {
                plan.entries
                    .push(entry("/", "tmpfs", "rootfs", &["ro", "nosuid", "nodev"]));
                plan.host_view()?;
                RootCheck {
                    dirs: Vec::new(),
                    create: true,
                    what: "host view",
                    remedy: "",
                }
            }
            Root::Directory { path, writable } => {
                let path = absolute_host_path("filesystem.root.path", path)?;
                let meta = std::fs::metadata(&path).map_err(|e| not_found("rootfs", &path, e))?;
                if !meta.is_dir() {
                    return Err(Error::PathNotFound {
                        what: "rootfs (not a directory)",
                        path,
                        errno: Errno::ENOTDIR,
                    });
                }
                let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
                let mut opts = vec!["nosuid", "nodev"];
                if !writable {
                    attrs |= sys::MOUNT_ATTR_RDONLY;
                    opts.insert(0, "ro");
                }
                let index = plan.add_source(&path, true, attrs, "rootfs")?;
                plan.root = RootFs::Tree(index);
                plan.root_readonly = false;
                plan.entries
                    .push(entry("/", &path.to_string_lossy(), "rootfs", &opts));
                RootCheck {
                    dirs: vec![path],
                    create: *writable,
                    what: "read-only rootfs",
                    remedy: " or make the rootfs writable",
                }
            }
            Root::Overlay(ov) => {
                let overlay = OverlayPlan::new(ov, fuse)?;
                let check = RootCheck {
                    dirs: overlay.lowers.clone(),
                    create: overlay.ephemeral,
                    what: "overlay's lower layers (a persistent upper records only the sandbox's own changes)",
                    remedy: " or use an ephemeral upper",
                };
                plan.entries.push(overlay.entry());
                plan.root = RootFs::Overlay(Box::new(overlay));
                plan.root_readonly = false;
                check
            }
        };
        if let RootFs::Overlay(ov) = &plan.root {
            plan.staging = staging_dir(&ov.layer_paths());
        }
        let root = &root;

        if fs.proc {
            if pid_ns {
                plan.new_fs(
                    root,
                    "/proc",
                    "proc",
                    &[],
                    sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
                    true,
                )?;
            } else {
                // A proc instance belongs to a PID namespace the sandbox does not own: show the
                // host's, read-only.
                plan.bind_default(root, Path::new("/proc"), "/proc", sys::MOUNT_ATTR_RDONLY)?;
            }
        }
        if fs.proc && mask_proc {
            let proc_mounted = plan
                .entries
                .iter()
                .rev()
                .find(|e| e.destination == "/proc")
                .is_some_and(|e| e.status == Status::Enforced);
            if pid_ns && proc_mounted {
                plan.mask_proc()?;
            } else {
                let mut e = entry("/proc/*", "", "mask", &[]);
                e.status = Status::Skipped;
                e.detail = if proc_mounted {
                    "not masked: /proc is the host's (no PID namespace of its own), bound \
                     read-only, so its files can be read"
                } else {
                    "not masked: the sandbox has no /proc"
                }
                .into();
                plan.entries.push(e);
            }
        }
        if fs.dev {
            plan.dev(root)?;
        }
        let tmp_mode = [(c"mode", "1777")];
        plan.new_fs(root, "/tmp", "tmpfs", &tmp_mode, NOSUID_NODEV, true)?;
        plan.new_fs(
            root,
            "/run",
            "tmpfs",
            &[(c"mode", "0755")],
            NOSUID_NODEV,
            true,
        )?;
        if let Some(work) = &fs.workdir {
            let dest = sandbox_path("filesystem.workdir", work)?;
            let (uid, gid) = (ids.0.to_string(), ids.1.to_string());
            let opts = [
                (c"mode", "0700"),
                (c"uid", uid.as_str()),
                (c"gid", gid.as_str()),
            ];
            plan.new_fs(root, &dest, "tmpfs", &opts, NOSUID_NODEV, true)?;
        }
        // Outer mounts before the mounts inside them, whatever order they were given in (as
        // given for the same depth): a mount made before one over its parent would be hidden.
        let mut order: Vec<(usize, &Mount)> = fs.mounts.iter().enumerate().collect();
        order.sort_by_key(|(_, m)| {
            Path::new(m.destination())
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
        });
        for (i, m) in order {
            plan.user_mount(root, i, m)?;
        }
        // Templates are made for the default host view only: a caller's binds would make one
        // template per set of host paths.
        plan.template_ok = fs.template
            && matches!(fs.root, Root::HostView)
            && fs.mounts.is_empty()
            && fs.proc
            && pid_ns
            && plan.shared_ops_outside_own();
        Ok(plan)
    }

    /// Whether no shared op would act inside a filesystem the sandbox mounts for itself (a work
    /// directory under /tmp, say): the template cannot hold such a mount point.
    fn shared_ops_outside_own(&self) -> bool {
        let own: Vec<&[u8]> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::NewFs { dest, .. } if own_op(op) => Some(dest.to_bytes()),
                _ => None,
            })
            .collect();
        let under = |path: &[u8]| {
            own.iter()
                .any(|d| path.len() > d.len() && path.starts_with(d) && path[d.len()] == b'/')
        };
        self.ops.iter().filter(|op| !own_op(op)).all(|op| match op {
            Op::Dir { full, .. } | Op::File { full, .. } => !under(full.to_bytes()),
            Op::Symlink { parent, .. } => {
                let p = parent.to_bytes();
                !(p != b"." && (own.contains(&p) || under(p)))
            }
            Op::Bind { dest, .. } | Op::NewFs { dest, .. } => !under(dest.to_bytes()),
            // (Each sandbox's own: never among these.)
            Op::Mask { .. } => true,
        })
    }

    /// What identifies this plan's template: `prefix`, then the shared ops, described. None when
    /// the tree cannot come from a template.
    pub fn template_key(&self, prefix: &str) -> Option<String> {
        let shared = self.shared_key.get_or_init(|| {
            self.template_ok.then(|| {
                let mut key = String::new();
                for (op, what) in self.ops.iter().zip(&self.descriptions) {
                    if !own_op(op) || is_proc(op) {
                        key.push_str(what);
                        key.push('\n');
                    }
                }
                key
            })
        });
        shared.as_deref().map(|s| [prefix, s].concat())
    }

    /// Says in the report's mount entries that the tree came from a template: /dev is read-only.
    pub fn note_template(entries: &mut [MountEntry]) {
        for e in entries {
            if e.destination == "/dev" && e.kind == "tmpfs" {
                e.options.insert(0, "ro".into());
                e.detail = "read-only: part of the template this process's sandboxes share".into();
            }
        }
    }

    /// The mounts of the default host view.
    fn host_view(&mut self) -> Result<()> {
        for (dir, found) in HOST_VIEW_DIRS.iter().zip(&HostFacts::get().view) {
            match found {
                HostDir::Symlink(target) => {
                    self.push_symlink(dir, target)?;
                    let mut e = entry(dir, target, "symlink", &[]);
                    e.detail = "kept as a symlink, as on the host".into();
                    self.entries.push(e);
                }
                HostDir::Dir => {
                    let attrs = sys::MOUNT_ATTR_RDONLY | NOSUID_NODEV;
                    self.bind_default(&RootCheck::anything(), Path::new(dir), dir, attrs)?;
                }
                HostDir::Absent => {
                    let mut e = entry(dir, dir, "bind", &["ro"]);
                    e.status = Status::Skipped;
                    e.detail = "not present on the host".into();
                    self.entries.push(e);
                }
            }
        }
        Ok(())
    }

    /// The OCI default masked and read-only paths of /proc (those this kernel has).
    fn mask_proc(&mut self) -> Result<()> {
        let mut masked = Vec::new();
        for &(path, how) in &HostFacts::get().proc {
            let kind = match how {
                Mask::ReadOnly => "read-only",
                _ => "masked",
            };
            let under = path.strip_prefix("/proc/").unwrap_or(path);
            self.ops.push(Op::Mask {
                how,
                proc: cstring("mask", b"proc")?,
                path: cstring("mask", under.as_bytes())?,
            });
            self.descriptions.push(format!("mask(\"{path}\")"));
            masked.push(format!("{path} {kind}"));
        }
        let mut e = entry("/proc/*", "", "mask", &[]);
        e.detail = masked.join(", ");
        self.entries.push(e);
        Ok(())
    }

    /// A minimal /dev: tmpfs, bound device nodes, devpts, shm and the fd links.
    fn dev(&mut self, root: &RootCheck) -> Result<()> {
        if !self.mount_point_ok(root, "/dev", true) {
            return Ok(());
        }
        self.new_fs(
            root,
            "/dev",
            "tmpfs",
            &[(c"mode", "0755")],
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            true,
        )?;
        for (dev, ok) in DEVICES.iter().zip(HostFacts::get().devices) {
            let host = format!("/dev/{dev}");
            if !ok {
                let mut e = entry(&host, &host, "bind", &[]);
                e.status = Status::Skipped;
                e.detail = "not a character device on the host".into();
                self.entries.push(e);
                continue;
            }
            let index = self.add_source(
                Path::new(&host),
                false,
                sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
                "device",
            )?;
            self.push_file(&host)?;
            self.push_bind(index, &host)?;
            self.entries
                .push(entry(&host, &host, "bind", &["nosuid", "noexec"]));
        }
        for (name, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
            ("/dev/ptmx", "pts/ptmx"),
        ] {
            self.push_symlink(name, target)?;
        }
        let pts = [(c"ptmxmode", "0666"), (c"mode", "0620")];
        self.new_fs(
            root,
            "/dev/pts",
            "devpts",
            &pts,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            false,
        )?;
        self.new_fs(
            root,
            "/dev/shm",
            "tmpfs",
            &[(c"mode", "1777")],
            NOSUID_NODEV,
            false,
        )?;
        Ok(())
    }

    fn user_mount(&mut self, root: &RootCheck, i: usize, m: &Mount) -> Result<()> {
        let field = format!("filesystem.mounts[{i}]");
        match m {
            Mount::Bind {
                source,
                destination,
                readonly,
            } => {
                let source = absolute_host_path(&format!("{field}.source"), source)?;
                let meta =
                    std::fs::metadata(&source).map_err(|e| not_found("bind source", &source, e))?;
                let dest = mount_destination(&format!("{field}.destination"), destination)?;
                let mut attrs = NOSUID_NODEV;
                let mut opts = vec!["nosuid", "nodev"];
                if *readonly {
                    attrs |= sys::MOUNT_ATTR_RDONLY;
                    opts.insert(0, "ro");
                }
                let index = self.add_source(&source, true, attrs, "bind source")?;
                self.require_mount_point(root, &dest, meta.is_dir())?;
                self.push_bind(index, &dest)?;
                self.entries
                    .push(entry(&dest, &source.to_string_lossy(), "bind", &opts));
            }
            Mount::Tmpfs {
                destination,
                size,
                mode,
            } => {
                let dest = mount_destination(&format!("{field}.destination"), destination)?;
                check_tmpfs_size(&format!("{field}.size"), *size)?;
                let size = size.map(|s| s.to_string());
                let mode = format!("{:o}", mode.unwrap_or(0o755));
                let mut opts = vec![(c"mode", mode.as_str())];
                if let Some(size) = &size {
                    opts.push((c"size", size.as_str()));
                }
                self.require_mount_point(root, &dest, true)?;
                self.push_new_fs("tmpfs", &opts, NOSUID_NODEV, &dest)?;
                let mut e = entry(&dest, "tmpfs", "tmpfs", &["nosuid", "nodev"]);
                e.options.extend(
                    opts.iter()
                        .map(|(k, v)| format!("{}={v}", k.to_string_lossy())),
                );
                self.entries.push(e);
            }
        }
        Ok(())
    }

    /// A default mount (/proc, /tmp, …): in a read-only rootfs that lacks its mount point it is
    /// skipped and reported, never an error.
    fn new_fs(
        &mut self,
        root: &RootCheck,
        dest: &str,
        fstype: &str,
        options: &[(&CStr, &str)],
        attrs: u64,
        check: bool,
    ) -> Result<()> {
        if check && !self.mount_point_ok(root, dest, true) {
            return Ok(());
        }
        self.push_dirs(dest)?;
        self.push_new_fs(fstype, options, attrs, dest)?;
        let mut e = entry(dest, fstype, fstype, &attr_names(attrs));
        e.options.extend(
            options
                .iter()
                .map(|(k, v)| format!("{}={v}", k.to_string_lossy())),
        );
        self.entries.push(e);
        Ok(())
    }

    fn bind_default(
        &mut self,
        root: &RootCheck,
        source: &Path,
        dest: &str,
        attrs: u64,
    ) -> Result<()> {
        if !self.mount_point_ok(root, dest, true) {
            return Ok(());
        }
        let index = self.add_source(source, true, attrs, "host dir")?;
        self.push_dirs(dest)?;
        self.push_bind(index, dest)?;
        self.entries.push(entry(
            dest,
            &source.to_string_lossy(),
            "bind",
            &attr_names(attrs),
        ));
        Ok(())
    }

    /// Whether `dest` can serve as a mount point: it exists in the root's layers, or it may be
    /// created. Reports the skip otherwise.
    fn mount_point_ok(&mut self, root: &RootCheck, dest: &str, _dir: bool) -> bool {
        if root.create || root.exists(dest) {
            return true;
        }
        let mut e = entry(dest, "", "mount-point", &[]);
        e.status = Status::Skipped;
        e.detail = format!("{dest} does not exist in the {}", root.what);
        self.entries.push(e);
        false
    }

    /// For a caller-requested mount, a missing mount point that may not be created is an error.
    fn require_mount_point(&mut self, root: &RootCheck, dest: &str, dir: bool) -> Result<()> {
        if !root.create && !root.exists(dest) {
            return Err(Error::invalid(
                "filesystem.mounts",
                format!(
                    "mount point {dest} does not exist in the {}; create it there{}",
                    root.what, root.remedy
                ),
            ));
        }
        if dir {
            self.push_dirs(dest)
        } else {
            if let Some(parent) = Path::new(dest).parent() {
                self.push_dirs(&parent.to_string_lossy())?;
            }
            self.push_file(dest)
        }
    }

    fn add_source(
        &mut self,
        path: &Path,
        recursive: bool,
        attrs: u64,
        what: &str,
    ) -> Result<usize> {
        self.sources.push(Source {
            path: cstring("mount source", path.as_os_str().as_bytes())?,
            recursive,
            attrs,
        });
        self.source_descriptions.push(format!(
            "open_tree({what} {:?})",
            path.display().to_string()
        ));
        Ok(self.sources.len() - 1)
    }

    /// mkdir -p for `dest`, one op per component.
    fn push_dirs(&mut self, dest: &str) -> Result<()> {
        let rel = dest.trim_start_matches('/');
        if rel.is_empty() {
            return Ok(());
        }
        let mut parent = String::from(".");
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            let full = if parent == "." {
                comp.to_string()
            } else {
                format!("{parent}/{comp}")
            };
            self.ops.push(Op::Dir {
                parent: cstring("mount destination", parent.as_bytes())?,
                name: cstring("mount destination", comp.as_bytes())?,
                full: cstring("mount destination", full.as_bytes())?,
            });
            self.descriptions.push(format!("mkdir(\"/{full}\")"));
            parent = full;
        }
        Ok(())
    }

    fn push_file(&mut self, dest: &str) -> Result<()> {
        let (parent, name) = split_rel(dest);
        self.ops.push(Op::File {
            parent: cstring("mount destination", parent.as_bytes())?,
            name: cstring("mount destination", name.as_bytes())?,
            full: cstring("mount destination", dest.trim_start_matches('/').as_bytes())?,
        });
        self.descriptions.push(format!("create(\"{dest}\")"));
        Ok(())
    }

    fn push_symlink(&mut self, dest: &str, target: &str) -> Result<()> {
        let (parent, name) = split_rel(dest);
        self.ops.push(Op::Symlink {
            parent: cstring("symlink", parent.as_bytes())?,
            name: cstring("symlink", name.as_bytes())?,
            target: cstring("symlink target", target.as_bytes())?,
        });
        self.descriptions
            .push(format!("symlink(\"{target}\" -> \"{dest}\")"));
        Ok(())
    }

    fn push_bind(&mut self, source: usize, dest: &str) -> Result<()> {
        self.ops.push(Op::Bind {
            source,
            dest: cstring("mount destination", rel(dest).as_bytes())?,
        });
        let src = self.sources[source].path.to_string_lossy().into_owned();
        self.descriptions
            .push(format!("move_mount(\"{src}\" -> \"{dest}\")"));
        Ok(())
    }

    fn push_new_fs(
        &mut self,
        fstype: &str,
        options: &[(&CStr, &str)],
        attrs: u64,
        dest: &str,
    ) -> Result<()> {
        let mut opts = Vec::with_capacity(options.len());
        for (k, v) in options {
            opts.push((
                (*k).to_owned(),
                Some(cstring("mount option", v.as_bytes())?),
            ));
        }
        self.ops.push(Op::NewFs {
            fstype: cstring("filesystem type", fstype.as_bytes())?,
            options: opts,
            attrs,
            dest: cstring("mount destination", rel(dest).as_bytes())?,
        });
        self.descriptions
            .push(format!("mount({fstype} on \"{dest}\")"));
        Ok(())
    }

    /// Describes the failing source or op for an error message.
    pub fn describe(&self, index: u32) -> String {
        match index {
            u32::MAX => format!("new root staged at {:?}", self.staging),
            i if i == u32::MAX - 1 => match &self.root {
                RootFs::Overlay(ov) => format!("overlay of {} lower layer(s)", ov.lowers.len()),
                _ => "overlay".into(),
            },
            i if (i as usize) < self.sources.len() => self.source_descriptions[i as usize].clone(),
            i => self
                .descriptions
                .get(i as usize - self.sources.len())
                .cloned()
                .unwrap_or_else(|| format!("mount operation #{i}")),
        }
    }

    /// Builds the root and switches to it. Runs in the sandbox's first process, after the id maps
    /// are written (file creation needs a mapped fsuid), before the PID 1 loop starts.
    /// `fds` has one slot per source; it is scratch space allocated by the caller.
    pub fn build(
        &self,
        how: Build,
        fds: &mut [c_int],
        request_fuse: &dyn Fn(Errno) -> Result<(), Errno>,
    ) -> Result<(), BuildError> {
        const WHOLE: u32 = u32::MAX;
        const OVERLAY: u32 = OVERLAY_INDEX;
        let n_sources = self.sources.len() as u32;
        let op_index = |i: usize| n_sources + i as u32;

        if matches!(how, Build::OwnProc | Build::OwnRest) {
            // The root is the template's copy, already ours.
            let root = sys::open_in_root(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| (Step::AttachRoot, e, WHOLE))?;
            let res = self.ops.iter().enumerate().try_for_each(|(i, op)| {
                let wanted = own_op(op) && (is_proc(op) == (how == Build::OwnProc));
                if !wanted {
                    return Ok(());
                }
                run_op(root, op, fds).map_err(|(step, e)| (step, e, op_index(i)))
            });
            sys::close(root);
            return res;
        }

        // Nothing we mount may propagate back to the host.
        let private = (libc::MS_REC | libc::MS_PRIVATE) as libc::c_ulong;
        sys::mount(None, c"/", None, private).map_err(|e| (Step::MakeRootPrivate, e, WHOLE))?;

        if let RootFs::Overlay(ov) = &self.root {
            ov.reserve_fds()
                .map_err(|e| (Step::OpenSource, e, OVERLAY))?;
        }
        // Clone every host tree first, while the host's namespace is intact.
        for (i, s) in self.sources.iter().enumerate() {
            let mut flags = sys::OPEN_TREE_CLONE | libc::O_CLOEXEC as u32;
            let mut set_flags = libc::AT_EMPTY_PATH as u32;
            if s.recursive {
                flags |= sys::AT_RECURSIVE;
                set_flags |= sys::AT_RECURSIVE;
            }
            let fd = sys::open_tree(libc::AT_FDCWD, &s.path, flags)
                .map_err(|e| (Step::OpenSource, e, i as u32))?;
            fds[i] = fd;
            if s.attrs != 0 {
                sys::mount_setattr(fd, c"", set_flags, s.attrs, 0, 0)
                    .map_err(|e| (Step::SetMountAttributes, e, i as u32))?;
            }
        }

        let root = match &self.root {
            RootFs::Overlay(ov) => ov
                .assemble(&self.staging, request_fuse)
                .map_err(|(step, e)| (step, e, OVERLAY))?,
            RootFs::Tree(i) => fds[*i],
            RootFs::Tmpfs => new_fs(c"tmpfs", &[(c"mode", Some(c"0755"))], NOSUID_NODEV)
                .map_err(|e| (Step::CreateFilesystem, e, WHOLE))?,
        };
        if let (RootFs::Tmpfs, Some(slot)) = (&self.root, fds.get_mut(self.sources.len())) {
            // A slot past the sources holds the root for a caller that shares our descriptors
            // (the template's builder): it closes what a failure leaves open.
            *slot = root;
        }
        if !matches!(self.root, RootFs::Overlay(_)) {
            // Detached trees cannot take submounts on older kernels: attach the root first.
            sys::move_mount(
                root,
                c"",
                libc::AT_FDCWD,
                &self.staging,
                sys::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| (Step::AttachRoot, e, WHOLE))?;
        }

        for (i, op) in self.ops.iter().enumerate() {
            if how == Build::Template && own_op(op) && !is_proc(op) {
                continue;
            }
            run_op(root, op, fds).map_err(|(step, e)| (step, e, op_index(i)))?;
        }
        if how == Build::Template {
            // Shared by every sandbox started from the template: nothing may be written there.
            let dev = sys::open_in_root(root, c"dev", libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| (Step::SetMountAttributes, e, WHOLE))?;
            let res = sys::mount_setattr(
                dev,
                c"",
                libc::AT_EMPTY_PATH as u32,
                sys::MOUNT_ATTR_RDONLY,
                0,
                0,
            );
            sys::close(dev);
            res.map_err(|e| (Step::SetMountAttributes, e, WHOLE))?;
        }

        if self.root_readonly {
            sys::mount_setattr(
                root,
                c"",
                libc::AT_EMPTY_PATH as u32,
                sys::MOUNT_ATTR_RDONLY,
                0,
                0,
            )
            .map_err(|e| (Step::RemountRootReadonly, e, WHOLE))?;
        }
        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours.
        sys::fchdir(root).map_err(|e| (Step::PivotRoot, e, WHOLE))?;
        sys::pivot_root(c".", c".").map_err(|e| (Step::PivotRoot, e, WHOLE))?;
        sys::umount2(c".", libc::MNT_DETACH).map_err(|e| (Step::DetachOldRoot, e, WHOLE))?;
        sys::chdir(c"/").map_err(|e| (Step::PivotRoot, e, WHOLE))?;
        // The sources, and the root where its slot holds it.
        for fd in fds.iter_mut() {
            sys::close(*fd);
            *fd = -1;
        }
        match &self.root {
            RootFs::Tmpfs if fds.len() > self.sources.len() => {}
            RootFs::Tmpfs => sys::close(root),
            RootFs::Overlay(ov) => {
                ov.close_layers();
                sys::close(root);
            }
            RootFs::Tree(_) => {}
        }
        Ok(())
    }

    /// Where the new root is staged before pivot_root.
    pub fn staging(&self) -> &CStr {
        &self.staging
    }

    /// The overlay root, when there is one.
    pub fn overlay(&self) -> Option<&OverlayPlan> {
        match &self.root {
            RootFs::Overlay(ov) => Some(ov),
            _ => None,
        }
    }

    /// The overlay root, when there is one.
    pub fn overlay_mut(&mut self) -> Option<&mut OverlayPlan> {
        match &mut self.root {
            RootFs::Overlay(ov) => Some(ov),
            _ => None,
        }
    }

    /// Number of scratch slots `build` needs.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }
}

const NOSUID_NODEV: u64 = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// Whether an op makes something each sandbox must have for itself (not from a template): a new
/// filesystem other than /dev's tmpfs, or a /proc mask.
fn own_op(op: &Op) -> bool {
    match op {
        Op::NewFs { fstype, dest, .. } => {
            !(fstype.as_c_str() == c"tmpfs" && dest.as_c_str() == c"dev")
        }
        Op::Mask { .. } => true,
        Op::Dir { .. } | Op::File { .. } | Op::Symlink { .. } | Op::Bind { .. } => false,
    }
}

fn is_proc(op: &Op) -> bool {
    matches!(op, Op::NewFs { fstype, .. } if fstype.as_c_str() == c"proc")
}

/// The failure index that names the overlay root itself.
pub(crate) const OVERLAY_INDEX: u32 = u32::MAX - 1;

/// Runs one op. Allocation-free.
fn run_op(root: c_int, op: &Op, fds: &[c_int]) -> Result<(), (Step, Errno)> {
    match op {
        Op::Dir { parent, name, full } => {
            let dir = open_dir(root, parent)?;
            let res = sys::mkdirat(dir, name, 0o755);
            sys::close(dir);
            match res {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                // A read-only tree may still hold the directory.
                Err(e) => match sys::open_in_root(root, full, libc::O_PATH | libc::O_DIRECTORY) {
                    Ok(fd) => {
                        sys::close(fd);
                        Ok(())
                    }
                    Err(_) => Err((Step::CreateMountPoint, e)),
                },
            }
        }
        Op::File { parent, name, full } => {
            let dir = open_dir(root, parent)?;
            let res = sys::mkfileat(dir, name);
            sys::close(dir);
            match res {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => match sys::open_in_root(root, full, libc::O_PATH) {
                    Ok(fd) => {
                        sys::close(fd);
                        Ok(())
                    }
                    Err(_) => Err((Step::CreateMountPoint, e)),
                },
            }
        }
        Op::Symlink {
            parent,
            name,
            target,
        } => {
            let dir = open_dir(root, parent)?;
            let res = sys::symlinkat(target, dir, name);
            sys::close(dir);
            match res {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err((Step::Symlink, e)),
            }
        }
        Op::Bind { source, dest } => attach(fds[*source], root, dest),
        Op::NewFs {
            fstype,
            options,
            attrs,
            dest,
        } => {
            let fd = new_fs(fstype, options, *attrs).map_err(|e| (Step::CreateFilesystem, e))?;
            let res = attach(fd, root, dest);
            sys::close(fd);
            res
        }
        Op::Mask { how, proc, path } => mask(root, how, proc, path),
    }
}

/// Masks `path` of the proc filesystem at `proc`. Resolved from the proc mount's own root, found
/// again and checked for each mask, and then without following any link: a rootfs another
/// sandbox can write may have its `proc` directory renamed or turned into a link while this one
/// is built, which must leave a mask on the sandbox's proc or fail the start, never skip it or
/// put it elsewhere.
fn mask(root: c_int, how: &Mask, proc: &CStr, path: &CStr) -> Result<(), (Step, Errno)> {
    let proc_root = sys::open_in_root(root, proc, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| (Step::Mount, e))?;
    let res = if sys::is_proc_root(proc_root) {
        sys::open_beneath_no_links(proc_root, path, libc::O_PATH)
    } else {
        // Not the proc mount (moved away while this sandbox was built): refused.
        Err(Errno::EXDEV)
    };
    sys::close(proc_root);
    let target = match res {
        Ok(fd) => fd,
        // This kernel's proc has no such path: nothing to hide.
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err((Step::Mount, e)),
    };
    let empty = libc::AT_EMPTY_PATH as u32;
    let res = (|| {
        let cover = match how {
            // Cloned from the host path, not from a detached source tree: older kernels (6.1)
            // refuse to clone a mount that is not in the caller's namespace.
            Mask::File => sys::open_tree(
                libc::AT_FDCWD,
                c"/dev/null",
                sys::OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
            )
            .map_err(|e| (Step::OpenSource, e))?,
            Mask::Dir => new_fs(
                c"tmpfs",
                &[(c"mode", Some(c"0555"))],
                sys::MOUNT_ATTR_RDONLY | NOSUID_NODEV,
            )
            .map_err(|e| (Step::CreateFilesystem, e))?,
            Mask::ReadOnly => {
                let flags =
                    sys::OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | empty | sys::AT_RECURSIVE;
                let fd = sys::open_tree(target, c"", flags).map_err(|e| (Step::OpenSource, e))?;
                sys::mount_setattr(
                    fd,
                    c"",
                    empty | sys::AT_RECURSIVE,
                    sys::MOUNT_ATTR_RDONLY,
                    0,
                    0,
                )
                .map_err(|e| (Step::SetMountAttributes, e))?;
                fd
            }
        };
        let flags = sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH;
        let res = sys::move_mount(cover, c"", target, c"", flags).map_err(|e| (Step::Mount, e));
        sys::close(cover);
        res
    })();
    sys::close(target);
    res
}

fn open_dir(root: c_int, path: &CStr) -> Result<c_int, (Step, Errno)> {
    sys::open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| (Step::CreateMountPoint, e))
}

/// Attaches the detached mount `fd` at `dest`, resolved inside the new root.
fn attach(fd: c_int, root: c_int, dest: &CStr) -> Result<(), (Step, Errno)> {
    let target = sys::open_in_root(root, dest, libc::O_PATH).map_err(|e| (Step::Mount, e))?;
    let flags = sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH;
    let res = sys::move_mount(fd, c"", target, c"", flags).map_err(|e| (Step::Mount, e));
    sys::close(target);
    res
}

/// fsopen + fsconfig + fsmount: a detached mount of a new filesystem instance. Runs between
/// clone and exec, so the options are borrowed as they are (literals or the plan's own strings):
/// nothing here allocates.
pub(crate) fn new_fs<K: AsRef<CStr>, V: AsRef<CStr>>(
    fstype: &CStr,
    options: &[(K, Option<V>)],
    attrs: u64,
) -> Result<c_int, Errno> {
    let fsfd = sys::fsopen(fstype)?;
    let res = (|| {
        for (key, value) in options {
            match value {
                Some(v) => sys::fsconfig_string(fsfd, key.as_ref(), v.as_ref())?,
                None => sys::fsconfig_flag(fsfd, key.as_ref())?,
            }
        }
        sys::fsconfig_create(fsfd)?;
        sys::fsmount(fsfd, attrs)
    })();
    sys::close(fsfd);
    res
}

fn entry(dest: &str, source: &str, kind: &str, options: &[&str]) -> MountEntry {
    MountEntry {
        destination: dest.into(),
        source: source.into(),
        kind: kind.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
        status: Status::Enforced,
        detail: String::new(),
    }
}

fn attr_names(attrs: u64) -> Vec<&'static str> {
    [
        (sys::MOUNT_ATTR_RDONLY, "ro"),
        (sys::MOUNT_ATTR_NOSUID, "nosuid"),
        (sys::MOUNT_ATTR_NODEV, "nodev"),
        (sys::MOUNT_ATTR_NOEXEC, "noexec"),
    ]
    .iter()
    .filter(|(bit, _)| attrs & bit != 0)
    .map(|(_, name)| *name)
    .collect()
}

fn rel(dest: &str) -> &str {
    let r = dest.trim_start_matches('/');
    if r.is_empty() {
        "."
    } else {
        r
    }
}

fn split_rel(dest: &str) -> (String, String) {
    let path = Path::new(dest);
    let parent = path
        .parent()
        .map(|p| rel(&p.to_string_lossy()).to_string())
        .unwrap_or_else(|| ".".into());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (parent, name)
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::invalid(what, "contains a NUL byte"))
}

/// A host path of the spec that cannot be looked up: not found, or (EACCES, EPERM) there but out
/// of this user's reach, which is no missing path.
fn not_found(what: &'static str, path: &Path, e: std::io::Error) -> Error {
    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT));
    if matches!(errno, Errno::EACCES | Errno::EPERM) {
        let op = match what {
            "rootfs" => "look up the rootfs",
            "bind source" => "look up the bind source",
            _ => "look up a host path of the spec",
        };
        return Error::io(op, Some(path.to_path_buf()), e);
    }
    Error::PathNotFound {
        what,
        path: path.to_path_buf(),
        errno,
    }
}

/// A host path from the spec: absolute, no NUL.
fn absolute_host_path(field: &str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(Error::invalid(field, "contains a NUL byte"));
    }
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("host path must be absolute: {}", path.display()),
        ));
    }
    Ok(path.to_path_buf())
}

/// The checks of the spec's mounts that hold whatever the host: destinations and sizes.
pub(crate) fn check_mounts(fs: &crate::spec::Filesystem) -> Result<()> {
    for (i, m) in fs.mounts.iter().enumerate() {
        let field = format!("filesystem.mounts[{i}]");
        match m {
            Mount::Bind {
                source,
                destination,
                ..
            } => {
                absolute_host_path(&format!("{field}.source"), source)?;
                mount_destination(&format!("{field}.destination"), destination)?;
            }
            Mount::Tmpfs {
                destination, size, ..
            } => {
                mount_destination(&format!("{field}.destination"), destination)?;
                check_tmpfs_size(&format!("{field}.size"), *size)?;
            }
        }
    }
    if let Root::Overlay(ov) = &fs.root {
        if let crate::spec::Upper::Ephemeral { size } = &ov.upper {
            check_tmpfs_size("filesystem.root.overlay.upper.size", *size)?;
        }
    }
    if let Some(work) = &fs.workdir {
        mount_destination("filesystem.workdir", work)?;
    }
    Ok(())
}

/// A tmpfs size: at least a byte (the kernel reads 0 as no limit at all).
pub(crate) fn check_tmpfs_size(field: &str, size: Option<u64>) -> Result<()> {
    if size == Some(0) {
        return Err(Error::invalid(
            field,
            "must be at least 1 byte (tmpfs would read 0 as no limit); leave it out for the default",
        ));
    }
    Ok(())
}

/// Where a mount of the spec goes: a sandbox path other than the root itself, which a mount
/// cannot replace (the command's root is the tree below it).
fn mount_destination(field: &str, path: &str) -> Result<String> {
    let dest = sandbox_path(field, path)?;
    if dest == "/" {
        return Err(Error::invalid(
            field,
            "a mount cannot replace the root: make a directory the root with filesystem.root \
             (--rootfs DIR), or layer it with an overlay root (--overlay)",
        ));
    }
    Ok(dest)
}

/// A path inside the sandbox: absolute, normalised, no `..`, no NUL.
pub(crate) fn sandbox_path(field: &str, path: &str) -> Result<String> {
    if path.contains('\0') {
        return Err(Error::invalid(field, "contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("sandbox path must be absolute: {path:?}"),
        ));
    }
    let mut out = String::new();
    for comp in Path::new(path).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(c) => {
                out.push('/');
                out.push_str(&c.to_string_lossy());
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::invalid(
                    field,
                    format!("sandbox path must not contain '..': {path:?}"),
                ))
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The host directory the new root is attached to before pivot_root: any existing directory.
/// The host directory the new root is attached to before pivot_root: any existing directory that
/// holds none of `avoid` (mounting there would hide them from fuse-overlayfs, which resolves
/// layers by path).
fn staging_dir(avoid: &[PathBuf]) -> CString {
    for dir in ["/tmp", "/mnt", "/run", "/media", "/srv", "/var/tmp", "/sys"] {
        let free = avoid.iter().all(|p| !p.starts_with(dir));
        if free && Path::new(dir).is_dir() {
            return CString::new(dir).unwrap_or_default();
        }
    }
    c"/".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_are_normalised() {
        assert_eq!(sandbox_path("f", "/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(sandbox_path("f", "/").unwrap(), "/");
        assert!(sandbox_path("f", "a/b").is_err());
        assert!(sandbox_path("f", "/a/../b").is_err());
        assert!(sandbox_path("f", "/a\0b").is_err());
    }

    #[test]
    fn split_rel_gives_parent_and_name() {
        assert_eq!(split_rel("/dev/null"), ("dev".into(), "null".into()));
        assert_eq!(split_rel("/bin"), (".".into(), "bin".into()));
    }

    #[test]
    fn host_view_plans_are_made_once_per_kind_and_others_every_time() {
        let none = FuseSupport::none();
        let fs = Filesystem::default();
        let first = plan(&fs, (1000, 1000), true, &none, true).unwrap();
        let again = plan(&fs, (1000, 1000), true, &none, true).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same kind reuses its plan");
        assert_eq!(first.entries.len(), again.entries.len());
        assert!(
            !first.entries.is_empty(),
            "a kept plan keeps its report entries"
        );
        // Anything the plan is made from makes another plan.
        let other_ids = plan(&fs, (1001, 1001), true, &none, true).unwrap();
        assert!(!Arc::ptr_eq(&first, &other_ids));
        let unmasked = plan(&fs, (1000, 1000), true, &none, false).unwrap();
        assert!(!Arc::ptr_eq(&first, &unmasked));
        let mut no_workdir = fs.clone();
        no_workdir.workdir = None;
        let p = plan(&no_workdir, (1000, 1000), true, &none, true).unwrap();
        assert!(!Arc::ptr_eq(&first, &p));
        assert!(!p.entries.iter().any(|e| e.destination == "/work"));
        // A plan that checks the host's files (extra mounts, other roots) is made each time.
        let mut with_mount = fs.clone();
        with_mount.mounts = vec![Mount::Tmpfs {
            destination: "/scratch".into(),
            size: None,
            mode: None,
        }];
        let a = plan(&with_mount, (1000, 1000), true, &none, true).unwrap();
        let b = plan(&with_mount, (1000, 1000), true, &none, true).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(Arc::strong_count(&a), 1, "the start's own plan");
    }

    #[test]
    fn host_view_plan_mounts_usr_read_only() {
        let plan = MountPlan::new(
            &Filesystem::default(),
            (1000, 1000),
            true,
            &FuseSupport::none(),
            true,
        )
        .unwrap();
        let usr = plan
            .entries
            .iter()
            .find(|e| e.destination == "/usr")
            .unwrap();
        assert!(usr.options.contains(&"ro".to_string()));
        assert!(plan
            .entries
            .iter()
            .any(|e| e.destination == "/proc" && e.kind == "proc"));
        assert!(!plan
            .entries
            .iter()
            .any(|e| e.destination == "/home" || e.destination == "/root"));
    }

    #[test]
    fn missing_bind_source_is_path_not_found() {
        let mut fs = Filesystem::default();
        fs.mounts.push(Mount::Bind {
            source: "/nonexistent/rsandbox".into(),
            destination: "/x".into(),
            readonly: true,
        });
        let err = MountPlan::new(&fs, (0, 0), true, &FuseSupport::none(), true)
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::PathNotFound);
    }
}
