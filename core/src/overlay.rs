//! Layered roots: read-only lower directories under one writable upper, assembled by kernel
//! overlayfs inside the sandbox's user namespace, or by fuse-overlayfs when the kernel refuses.
//!
//! Layers are handed to the kernel as `/proc/self/fd/N` paths of descriptors opened before
//! anything is mounted: no path escaping is needed (`,` `:` `\` in names are harmless) and a
//! staging mount can never hide a layer. fuse-overlayfs runs *outside* the sandbox's PID
//! namespace (it joins only the user and mount namespaces), so the sandboxed command can neither
//! see nor ptrace the one process that still holds the host's root.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Step};
use crate::report::{MountEntry, Status};
// (Non-UTF-8 paths in JSON, as a run's non-UTF-8 output.)
use crate::sandbox::output_bytes as base64;
use crate::spec::{Overlay, OverlayDriver, Upper};
use crate::sys;

/// Whether fuse-overlayfs can be used by this caller: the binary and an openable /dev/fuse.
#[derive(Debug, Clone)]
pub(crate) struct FuseSupport {
    binary: Option<PathBuf>,
    device: std::result::Result<(), Errno>,
}

impl FuseSupport {
    /// Looks for the binary and tries to open /dev/fuse read-write.
    pub fn probe() -> FuseSupport {
        let binary = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join("fuse-overlayfs"))
            .find(|p| p.is_file());
        let device = nix::fcntl::open(
            "/dev/fuse",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(drop);
        FuseSupport { binary, device }
    }

    /// A FuseSupport that is never usable (when no overlay is asked for).
    pub fn none() -> FuseSupport {
        FuseSupport {
            binary: None,
            device: Err(Errno::ENOENT),
        }
    }

    /// The binary when usable, otherwise the reason and the remedy.
    fn usable(&self) -> std::result::Result<PathBuf, (String, String)> {
        match (&self.binary, self.device) {
            (Some(b), Ok(())) => Ok(b.clone()),
            (None, _) => Err(("fuse-overlayfs is not installed".into(), "apt-get install fuse-overlayfs".into())),
            (_, Err(e)) => Err((
                format!("/dev/fuse cannot be opened read-write: {e:?} ({})", e.desc()),
                "chmod 0666 /dev/fuse (distributions ship it 0666; a udev rule KERNEL==\"fuse\", MODE=\"0666\" makes it last)".into(),
            )),
        }
    }
}

/// The overlay part of a mount plan, prepared before clone.
pub(crate) struct OverlayPlan {
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
    lower_paths: Vec<CString>,
    pub ephemeral: bool,
    /// Persistent upper and its work directory.
    persistent: Option<(PathBuf, PathBuf)>,
    persistent_paths: Option<(CString, CString)>,
    staging_opts: Vec<(CString, Option<CString>)>,
    kernel: bool,
    /// Set when fuse-overlayfs may be used (driver fuse, or auto with fuse usable).
    pub fuse_binary: Option<PathBuf>,
    /// Why fuse cannot back up an auto overlay (for the error when the kernel refuses too).
    fuse_unusable: Option<(String, String)>,
    /// Descriptor numbers: lowers at base.., then upper and work.
    fd_base: c_int,
    lowerdir: CString,
    upperdir: CString,
    workdir: CString,
}

/// The request the sandbox sends when the kernel refused and fuse-overlayfs must mount.
pub(crate) const FUSE_REQUEST: u32 = 0xf05e;

impl OverlayPlan {
    pub fn new(ov: &Overlay, fuse: &FuseSupport) -> Result<OverlayPlan> {
        if ov.lowers.is_empty() {
            return Err(Error::invalid(
                "filesystem.root.overlay.lowers",
                "an overlay needs at least one lower layer",
            ));
        }
        let mut lowers = Vec::new();
        for (i, l) in ov.lowers.iter().enumerate() {
            let field = format!("filesystem.root.overlay.lowers[{i}]");
            if !l.is_absolute() {
                return Err(Error::invalid(
                    field,
                    format!("must be an absolute path: {}", l.display()),
                ));
            }
            let meta = std::fs::metadata(l).map_err(|e| Error::PathNotFound {
                what: "overlay lower layer",
                path: l.clone(),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
            })?;
            if !meta.is_dir() {
                return Err(Error::PathNotFound {
                    what: "overlay lower layer (not a directory)",
                    path: l.clone(),
                    errno: Errno::ENOTDIR,
                });
            }
            lowers.push(
                std::fs::canonicalize(l)
                    .map_err(|e| Error::io("canonicalize", Some(l.clone()), e))?,
            );
        }
        let (ephemeral, persistent, staging_opts) = match &ov.upper {
            Upper::Ephemeral { size } => {
                crate::mounts::check_tmpfs_size("filesystem.root.overlay.upper.size", *size)?;
                let mut opts = vec![(c"mode".to_owned(), Some(c"0755".to_owned()))];
                if let Some(size) = size {
                    opts.push((
                        c"size".to_owned(),
                        Some(CString::new(size.to_string()).unwrap_or_default()),
                    ));
                }
                (true, None, opts)
            }
            Upper::Persistent { path } => {
                // Checked before anything is created (and again after, on the real paths): a
                // refused upper leaves nothing in a lower.
                if path.is_absolute() {
                    check_upper_overlap(&planned_path(path), &lowers)?;
                }
                let (upper, work) = persistent_dirs(path)?;
                check_upper_overlap(&upper, &lowers)?;
                (
                    false,
                    Some((upper, work)),
                    vec![
                        (c"mode".to_owned(), Some(c"0755".to_owned())),
                        (c"size".to_owned(), Some(c"64k".to_owned())),
                    ],
                )
            }
        };
        let odd = lowers
            .iter()
            .chain(persistent.iter().flat_map(|(u, w)| [u, w]))
            .find(|p| p.to_string_lossy().contains([',', ':', '\\']));
        let fuse_paths = match odd {
            Some(p) => Err((
                format!(
                    "fuse-overlayfs cannot take the path {} (it contains ',', ':' or '\\')",
                    p.display()
                ),
                "use the kernel driver, or rename the layer".to_string(),
            )),
            None => Ok(()),
        };
        // The errno of /dev/fuse's open, when that is why fuse-overlayfs cannot be used.
        let device_errno = match (&fuse_paths, &fuse.binary, fuse.device) {
            (Ok(()), Some(_), Err(e)) => Some(e),
            _ => None,
        };
        let fuse_usable = fuse_paths.and_then(|()| fuse.usable());
        let (kernel, fuse_binary, fuse_unusable) = match ov.driver {
            OverlayDriver::Kernel => (true, None, None),
            OverlayDriver::Fuse => match fuse_usable {
                Ok(b) => (false, Some(b), None),
                Err((reason, remedy)) => {
                    return Err(Error::Unsupported {
                        errno: device_errno,
                        feature: "fuse-overlayfs".into(),
                        reason,
                        remedy: Some(remedy),
                    })
                }
            },
            OverlayDriver::Auto => match fuse_usable {
                Ok(b) => (true, Some(b), None),
                Err(why) => (true, None, Some(why)),
            },
        };
        let cpath = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::invalid("filesystem.root.overlay", "path contains a NUL byte"))
        };
        let lower_paths = lowers
            .iter()
            .map(|p| cpath(p))
            .collect::<Result<Vec<_>>>()?;
        let persistent_paths = match &persistent {
            Some((u, w)) => Some((cpath(u)?, cpath(w)?)),
            None => None,
        };
        Ok(OverlayPlan {
            lowers,
            lower_paths,
            ephemeral,
            persistent,
            persistent_paths,
            staging_opts,
            kernel,
            fuse_binary,
            fuse_unusable,
            fd_base: -1,
            lowerdir: CString::default(),
            upperdir: CString::default(),
            workdir: CString::default(),
        })
    }

    /// Chooses where the layer descriptors live in the sandbox's first process: `base` and up
    /// must be free there (above every descriptor it keeps).
    pub fn set_fd_base(&mut self, base: c_int) {
        self.fd_base = base;
        let n = self.lowers.len() as c_int;
        let list: Vec<String> = (0..n)
            .map(|i| format!("/proc/self/fd/{}", base + i))
            .collect();
        self.lowerdir = CString::new(list.join(":")).unwrap_or_default();
        self.upperdir = CString::new(format!("/proc/self/fd/{}", base + n)).unwrap_or_default();
        self.workdir = CString::new(format!("/proc/self/fd/{}", base + n + 1)).unwrap_or_default();
    }

    /// The report's entry for `/`.
    pub fn entry(&self) -> MountEntry {
        let mut options: Vec<String> = self
            .lowers
            .iter()
            .map(|l| format!("lower={}", l.display()))
            .collect();
        match &self.persistent {
            Some((u, _)) => options.push(format!("upper={}", u.display())),
            None => {
                let size = self
                    .staging_opts
                    .iter()
                    .find(|(k, _)| k.as_c_str() == c"size");
                options.push(match size.and_then(|(_, v)| v.as_ref()) {
                    Some(v) => format!("upper=tmpfs,size={}", v.to_string_lossy()),
                    None => "upper=tmpfs".into(),
                });
            }
        }
        MountEntry {
            destination: "/".into(),
            source: if self.kernel {
                "kernel overlayfs (userxattr)".into()
            } else {
                "fuse-overlayfs".into()
            },
            kind: "overlay".into(),
            options,
            status: Status::Enforced,
            detail: String::new(),
        }
    }

    /// Every host path the overlay reads or writes.
    pub fn layer_paths(&self) -> Vec<PathBuf> {
        let mut all = self.lowers.clone();
        if let Some((u, w)) = &self.persistent {
            all.extend([u.clone(), w.clone()]);
        }
        all
    }

    /// Whether kernel overlayfs is tried first.
    pub fn kernel_tried(&self) -> bool {
        self.kernel
    }

    /// The error for a root kernel overlayfs refused when fuse-overlayfs cannot step in.
    pub fn kernel_refusal(&self, errno: Errno) -> Error {
        let mut cause = format!(
            "kernel overlayfs refused the layers ({errno:?}: {})",
            errno.desc()
        );
        if errno == Errno::EINVAL {
            if let Some((lower, below)) = self.lower_with_submounts() {
                cause.push_str(&format!(
                    "; lower {} has mounts below it ({below}), and inside a user namespace \
                     the kernel cannot take such a layer (its submounts are locked): use a \
                     directory without mounts below it, or the fuse driver",
                    lower.display()
                ));
            }
        }
        let (reason, remedy) = match &self.fuse_unusable {
            Some((why, remedy)) => (format!("{cause}, and fuse-overlayfs cannot step in: {why}"), remedy.clone()),
            None => (
                format!("{cause}; the kernel driver was required"),
                "check `rsandbox doctor` (overlay-in-userns), keep the upper off overlayfs/NFS, or allow the fuse driver".into(),
            ),
        };
        Error::Unsupported {
            errno: Some(errno),
            feature: "overlay root".into(),
            reason,
            remedy: Some(remedy),
        }
    }

    /// The first lower layer that has mount points below it, with one of them.
    fn lower_with_submounts(&self) -> Option<(&Path, String)> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mounts = crate::doctor::parse_mountinfo(&info);
        self.lowers.iter().find_map(|lower| {
            mounts
                .iter()
                .find(|m| {
                    Path::new(&m.mount_point)
                        .strip_prefix(lower)
                        .is_ok_and(|rest| !rest.as_os_str().is_empty())
                })
                .map(|m| (lower.as_path(), m.mount_point.clone()))
        })
    }

    /// Options for fuse-overlayfs. It resolves layers by path in its own copy of the sandbox's
    /// mount namespace, where the staging mount hides none of them (see `staging_dir`).
    pub fn fuse_options(&self, staging: &str) -> String {
        let lower: Vec<String> = self
            .lowers
            .iter()
            .map(|l| l.display().to_string())
            .collect();
        let (upper, work) = match &self.persistent {
            Some((u, w)) => (u.display().to_string(), w.display().to_string()),
            None => (format!("{staging}/upper"), format!("{staging}/work")),
        };
        // No writeback cache: a full upper must fail the write itself, not a later flush.
        format!(
            "lowerdir={},upperdir={upper},workdir={work},writeback=0",
            lower.join(":")
        )
    }

    /// Number of descriptors the plan places from its base.
    pub fn fd_count(&self) -> c_int {
        self.lowers.len() as c_int + 2
    }

    /// Builds the overlay root and returns a descriptor of its top directory. Runs in the sandbox
    /// between clone and exec: raw syscalls only. `staging` is an existing directory to attach
    /// the scratch tmpfs to; `request_fuse` asks the caller to start fuse-overlayfs.
    pub fn assemble(
        &self,
        staging: &CStr,
        request_fuse: &dyn Fn(Errno) -> std::result::Result<(), Errno>,
    ) -> std::result::Result<c_int, (Step, Errno)> {
        let n = self.lowers.len() as c_int;
        for (i, path) in self.lower_paths.iter().enumerate() {
            place(path, libc::AT_FDCWD, self.fd_base + i as c_int)
                .map_err(|e| (Step::OpenSource, e))?;
        }
        // A persistent upper is a host path: open it before the scratch mount can hide it.
        if let Some((upper, work)) = &self.persistent_paths {
            place(upper, libc::AT_FDCWD, self.fd_base + n).map_err(|e| (Step::OpenSource, e))?;
            place(work, libc::AT_FDCWD, self.fd_base + n + 1).map_err(|e| (Step::OpenSource, e))?;
        }
        // A scratch tmpfs holds the mount point for fuse and, when ephemeral, the upper itself.
        let scratch = crate::mounts::new_fs(
            c"tmpfs",
            &self.staging_opts,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        )
        .map_err(|e| (Step::CreateFilesystem, e))?;
        sys::move_mount(
            scratch,
            c"",
            libc::AT_FDCWD,
            staging,
            sys::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| (Step::AttachRoot, e))?;
        for dir in [c"merged", c"upper", c"work"] {
            sys::mkdirat(scratch, dir, 0o755).map_err(|e| (Step::CreateMountPoint, e))?;
        }
        if self.persistent_paths.is_none() {
            place(c"upper", scratch, self.fd_base + n).map_err(|e| (Step::OpenSource, e))?;
            place(c"work", scratch, self.fd_base + n + 1).map_err(|e| (Step::OpenSource, e))?;
        }
        let mut refused = Errno::ENODEV;
        if self.kernel {
            let opts = [
                (c"lowerdir", Some(self.lowerdir.as_c_str())),
                (c"upperdir", Some(self.upperdir.as_c_str())),
                (c"workdir", Some(self.workdir.as_c_str())),
                (c"userxattr", None),
            ];
            match kernel_overlay(&opts) {
                Ok(fd) => {
                    sys::move_mount(
                        fd,
                        c"",
                        libc::AT_FDCWD,
                        staging,
                        sys::MOVE_MOUNT_F_EMPTY_PATH,
                    )
                    .map_err(|e| (Step::AttachRoot, e))?;
                    sys::close(scratch);
                    return Ok(fd);
                }
                Err(e) if self.fuse_binary.is_none() => return Err((Step::CreateFilesystem, e)),
                Err(e) => refused = e,
            }
        }
        // fuse-overlayfs mounts in its own copy of our mount namespace (so that our pivot_root
        // cannot move its root); a shared scratch mount carries its mount over to us.
        let shared = libc::MS_SHARED;
        sys::mount_setattr(scratch, c"", libc::AT_EMPTY_PATH as u32, 0, 0, shared)
            .map_err(|e| (Step::SetMountAttributes, e))?;
        request_fuse(refused).map_err(|e| (Step::CreateFilesystem, e))?;
        // fuse-overlayfs mounts on scratch/merged; wait for the mount to appear (st_dev changes).
        let scratch_dev = stat_dev(scratch, c"").map_err(|e| (Step::Mount, e))?;
        let mut waited_ms = 0;
        loop {
            match stat_dev(scratch, c"merged") {
                Ok(dev) if dev != scratch_dev => break,
                Ok(_) | Err(Errno::ENOTCONN) => {}
                Err(e) => return Err((Step::Mount, e)),
            }
            if waited_ms >= 10_000 {
                return Err((Step::Mount, Errno::ETIMEDOUT));
            }
            sleep_ms(1);
            waited_ms += 1;
        }
        // pivot_root refuses shared mounts: stop propagation now that the mount has arrived.
        let all = (libc::AT_EMPTY_PATH | sys::AT_RECURSIVE as c_int) as u32;
        sys::mount_setattr(scratch, c"", all, 0, 0, libc::MS_PRIVATE)
            .map_err(|e| (Step::SetMountAttributes, e))?;
        let root = sys::openat(scratch, c"merged", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| (Step::Mount, e))?;
        sys::close(scratch);
        Ok(root)
    }

    /// Occupies the descriptor window before anything else opens a descriptor, so that nothing
    /// opened later can land in a slot a layer will take.
    pub fn reserve_fds(&self) -> std::result::Result<(), Errno> {
        let fd = sys::openat(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY)?;
        let mut res = Ok(());
        for slot in self.fd_base..self.fd_base + self.fd_count() {
            if let Err(e) = sys::dup2(fd, slot) {
                res = Err(e);
                break;
            }
        }
        sys::close(fd);
        res
    }

    /// Closes the layer descriptors once the root is in place.
    pub fn close_layers(&self) {
        for fd in self.fd_base..self.fd_base + self.fd_count() {
            sys::close(fd);
        }
    }

    /// The persistent upper and its lowers, recorded beside it for `diff`, with whether
    /// fuse-overlayfs has mounted it before (kept from the record there).
    pub fn record_layers(&self) -> Result<()> {
        let Some((upper, _)) = &self.persistent else {
            return Ok(());
        };
        let fuse = match LayerRecord::read(upper) {
            Some(before) => before.fuse,
            // Without a record, only an empty upper has a known past.
            None => std::fs::read_dir(upper)
                .is_ok_and(|mut d| d.next().is_none())
                .then_some(false),
        };
        LayerRecord {
            lowers: self.lowers.clone(),
            fuse,
        }
        .write(upper)
    }

    /// Notes in the persistent upper's record that fuse-overlayfs mounts it (its whiteouts may
    /// then be `.wh.NAME` files). Where that cannot be written, the record goes: `diff` then
    /// knows the upper's past as little as before records were kept, and never reads a
    /// fuse whiteout as a file.
    pub fn record_fuse(&self) {
        let Some((upper, _)) = &self.persistent else {
            return;
        };
        let record = LayerRecord {
            lowers: self.lowers.clone(),
            fuse: Some(true),
        };
        if record.write(upper).is_err() {
            let _ = std::fs::remove_file(sidecar(upper, "layers.json"));
        }
    }
}

/// Starts fuse-overlayfs for the sandbox whose first process is `pid`: it joins the sandbox's user
/// and mount namespaces (never its PID namespace) and mounts the layers on the scratch mount
/// point, in the foreground so that its pid is the daemon's.
/// A running fuse-overlayfs, and the read end of its stderr (None when RSANDBOX_FUSE_LOG sends
/// that to a file). Its end of the pipe is non-blocking: a message that does not fit is lost,
/// the daemon never stalls on it.
#[derive(Debug)]
pub(crate) struct FuseHelper {
    pub process: std::process::Child,
    pub messages: Option<std::fs::File>,
}

impl FuseHelper {
    /// What the helper wrote to stderr so far (up to 4 KiB), trimmed.
    pub fn messages(&mut self) -> String {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let n = self
            .messages
            .as_mut()
            .and_then(|f| f.read(&mut buf).ok())
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .trim()
            .replace('\n', "; ")
    }

    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

pub(crate) fn start_fuse(ov: &OverlayPlan, staging: &CStr, pid: libc::pid_t) -> Result<FuseHelper> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let binary = ov.fuse_binary.clone().ok_or_else(|| {
        Error::invalid(
            "filesystem.root.overlay.driver",
            "fuse-overlayfs is not usable",
        )
    })?;
    let ns = |name: &str| {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        std::fs::File::open(&path).map_err(|e| Error::io("open namespace", Some(path), e))
    };
    let (userns, mntns) = (ns("user")?, ns("mnt")?);
    let mountpoint = format!("{}/merged", staging.to_string_lossy());
    let mut cmd = std::process::Command::new(&binary);
    cmd.args([
        "-f",
        "-o",
        &ov.fuse_options(&staging.to_string_lossy()),
        &mountpoint,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .env_clear();
    let mut messages = None;
    match std::env::var_os("RSANDBOX_FUSE_LOG") {
        Some(p) => {
            cmd.stderr(
                std::fs::File::create(p)
                    .map(Into::into)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            );
        }
        None => {
            use nix::fcntl::OFlag;
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                .map_err(|e| Error::os("pipe2", e))?;
            messages = Some(std::fs::File::from(r));
            cmd.stderr(std::process::Stdio::from(w));
        }
    }
    let (user_fd, mnt_fd) = (userns.as_raw_fd(), mntns.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and makes only raw syscalls
    // (setns, capget/capset, prctl) on descriptors that stay open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            join_for_fuse(user_fd, mnt_fd).map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let process = cmd
        .spawn()
        .map_err(|e| Error::io("start fuse-overlayfs", Some(binary.clone()), e))?;
    drop((userns, mntns));
    Ok(FuseHelper { process, messages })
}

/// In the fuse helper before exec: enter the sandbox's namespaces, and keep CAP_SYS_ADMIN (of
/// the sandbox's user namespace only) across exec so fuse-overlayfs can mount as a non-zero uid.
fn join_for_fuse(userns: c_int, mntns: c_int) -> std::result::Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: c_int = 21;
    // SAFETY: raw syscalls on valid descriptors and on properly sized capability structs.
    unsafe {
        if libc::setns(userns, libc::CLONE_NEWUSER) < 0
            || libc::setns(mntns, libc::CLONE_NEWNS) < 0
            || libc::unshare(libc::CLONE_NEWNS) < 0
        {
            return Err(Errno::last());
        }
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        ) < 0
        {
            return Err(Errno::last());
        }
        let bit = CAP_SYS_ADMIN as usize;
        data[bit / 32].inheritable |= 1 << (bit % 32);
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) < 0 {
            return Err(Errno::last());
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            CAP_SYS_ADMIN,
            0,
            0,
        ) < 0
        {
            return Err(Errno::last());
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

fn kernel_overlay(opts: &[(&CStr, Option<&CStr>)]) -> std::result::Result<c_int, Errno> {
    let fsfd = sys::fsopen(c"overlay")?;
    let res = (|| {
        for (key, value) in opts {
            match value {
                Some(v) => sys::fsconfig_string(fsfd, key, v)?,
                None => sys::fsconfig_flag(fsfd, key)?,
            }
        }
        sys::fsconfig_create(fsfd)?;
        sys::fsmount(fsfd, 0)
    })();
    sys::close(fsfd);
    res
}

/// Opens `path` (relative to `dirfd`) as an O_PATH directory and moves it to descriptor `at`.
fn place(path: &CStr, dirfd: c_int, at: c_int) -> std::result::Result<(), Errno> {
    let fd = sys::openat(dirfd, path, libc::O_PATH | libc::O_DIRECTORY)?;
    let res = sys::dup2(fd, at);
    sys::close(fd);
    res
}

fn stat_dev(dirfd: c_int, path: &CStr) -> std::result::Result<u64, Errno> {
    // SAFETY: st is plain data filled by fstatat; path is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let flags = if path.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
        if libc::fstatat(dirfd, path.as_ptr(), &mut st, flags) < 0 {
            return Err(Errno::last());
        }
        Ok(st.st_dev)
    }
}

fn sleep_ms(ms: i64) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: ms * 1_000_000,
    };
    // SAFETY: ts is a valid timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// The persistent upper (created if missing) and its work directory, a hidden sibling.
impl OverlayPlan {
    /// Locks a persistent upper for one sandbox (flock on its directory, taken without waiting),
    /// kept among the sandbox's ends (the init inherits it); its number, None for an ephemeral
    /// upper.
    pub(crate) fn lock_upper(
        &self,
        ends: &mut crate::forksafe::Ends,
    ) -> Result<Option<std::os::fd::RawFd>> {
        let Some((upper, _)) = &self.persistent else {
            return Ok(None);
        };
        // Opened and marked in a window (a child forked with an unmarked copy would hold the
        // lock as long as it lives); locked outside it, where the wait may last.
        let window = crate::forksafe::Creating::begin();
        let dir = std::fs::File::open(upper)
            .map_err(|e| Error::io("open the upper directory", Some(upper.clone()), e))?;
        let dir = ends.keep(dir.into());
        drop(window);
        // A sandbox whose result is in may still be exiting (its init holds the lock until it
        // is gone, which takes milliseconds): a second to let it go.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let errno = loop {
            // SAFETY: flock on a descriptor `ends` owns; the lock goes with its open file.
            if unsafe { libc::flock(dir, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(dir));
            }
            let e = Errno::last();
            if e != Errno::EWOULDBLOCK || std::time::Instant::now() >= until {
                break e;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        match errno {
            Errno::EWOULDBLOCK => Err(Error::invalid(
                "filesystem.root.overlay.upper",
                format!(
                    "{} is the upper of another sandbox that is still running: overlayfs leaves \
                     two mounts of one upper undefined; wait for it to end, or give each \
                     sandbox its own",
                    upper.display()
                ),
            )),
            e => Err(Error::os("flock the upper directory", e)),
        }
    }
}

/// Where `path` will be once created: its deepest existing ancestor resolved, the rest as given.
fn planned_path(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
}

/// An upper (or its work directory beside it) inside a lower, or a lower inside either: the
/// kernel would fail with ELOOP, and writes would land in the lower.
fn check_upper_overlap(upper: &Path, lowers: &[PathBuf]) -> Result<()> {
    let work = sidecar(upper, "work");
    for l in lowers {
        for (what, p) in [("upper", upper), ("upper's work directory", work.as_path())] {
            if p.starts_with(l) || l.starts_with(p) {
                return Err(Error::invalid(
                    "filesystem.root.overlay.upper",
                    format!(
                        "the {what} {} and the lower {} overlap: one lies inside the other (the kernel would fail with ELOOP)",
                        p.display(),
                        l.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn persistent_dirs(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let field = "filesystem.root.overlay.upper.persistent.path";
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("must be an absolute path: {}", path.display()),
        ));
    }
    // Nothing is created where another user could reach it (all checked again once created).
    if std::fs::symlink_metadata(path).is_err() {
        if let Some(problem) = above_problem("upper", path)? {
            return Err(upper_refusal(problem));
        }
    }
    // Made 0755 (the sandbox's root takes the upper's mode), never writable by the group even
    // under a umask that would allow it: such an upper is refused below.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| Error::io("create upper directory", Some(path.into()), e))?;
    let upper =
        std::fs::canonicalize(path).map_err(|e| Error::io("canonicalize", Some(path.into()), e))?;
    let work = sidecar(&upper, "work");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&work)
        .map_err(|e| Error::io("create overlay work directory", Some(work.clone()), e))?;
    check_private_upper(&upper, &work)?;
    open_kernel_workdir(&work);
    let (a, b) = (std::fs::metadata(&upper), std::fs::metadata(&work));
    if let (Ok(a), Ok(b)) = (a, b) {
        if a.dev() != b.dev() {
            return Err(Error::invalid(
                field,
                format!(
                    "{} and its work directory {} are on different filesystems",
                    upper.display(),
                    work.display()
                ),
            ));
        }
    }
    Ok((upper, work))
}

/// Refuses a persistent upper, or its work directory, that another user could have planted
/// files in or could write to while (or after) a sandbox uses it: each must be a directory owned
/// by the caller that neither group nor others can write, and every directory above them owned
/// by the caller or root and not writable by others unless sticky (as /tmp is): the layer
/// store's rule. Judged after they are created, so one created by another user in between is
/// caught too.
fn check_private_upper(upper: &Path, work: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for (what, dir) in [("upper", upper), ("upper's work directory", work)] {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| Error::io("stat", Some(dir.to_path_buf()), e))?;
        let problem = if !meta.is_dir() {
            "is not a directory".to_string()
        } else if meta.uid() != me {
            format!(
                "is owned by uid {}, not by this user (uid {me}): another user made it, and \
                 could have planted files in it or write to it still",
                meta.uid()
            )
        } else if meta.mode() & 0o022 != 0 {
            format!(
                "is writable by {} (mode {:o}): another user could plant files in it",
                if meta.mode() & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777
            )
        } else {
            match above_problem(what, dir)? {
                Some(problem) => return Err(upper_refusal(problem)),
                None => continue,
            }
        };
        return Err(upper_refusal(format!(
            "the {what} {} {problem}",
            dir.display()
        )));
    }
    Ok(())
}

/// What makes `dir` (an upper or its work directory, which need not exist yet) or a directory
/// above it open to other users, by the layer store's rule (`image::store_problem`).
fn above_problem(what: &str, dir: &Path) -> Result<Option<String>> {
    Ok(crate::image::store_problem(dir)?.map(|p| {
        // The store's wording ends in its own advice; the finding is what is kept.
        let finding = p
            .split_once(", so another user")
            .map_or(p.as_str(), |(finding, _)| finding);
        format!("{finding}, so another user could plant files in the {what}")
    }))
}

fn upper_refusal(problem: String) -> Error {
    let me = nix::unistd::geteuid().as_raw();
    Error::invalid(
        "filesystem.root.overlay.upper.persistent.path",
        format!(
            "{problem}; use an upper that only uid {me} can write to, in a directory only it \
             (or root) can write to or a sticky one such as /tmp (remove or chmod go-w a \
             directory of this user's own)"
        ),
    )
}

/// The kernel driver leaves `WORK/work` at mode 000 (it empties and remakes it at each mount),
/// and fuse-overlayfs takes that same directory as its own: a fuse mount after a kernel one could
/// not open it. Made 0700 when it is ours; one that is not is left for fuse-overlayfs to name.
fn open_kernel_workdir(work: &Path) {
    let inner = work.join("work");
    let Ok(meta) = std::fs::symlink_metadata(&inner) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    if meta.is_dir() && meta.mode() & 0o7777 == 0 && ours {
        let _ = std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700));
    }
}

/// `DIR/.NAME.SUFFIX` beside `upper` = `DIR/NAME`.
fn sidecar(upper: &Path, suffix: &str) -> PathBuf {
    // Byte for byte: two uppers whose names differ only in bytes that are not UTF-8 must not
    // share a work directory.
    let name = upper.file_name().map_or(&b"upper"[..], |n| n.as_bytes());
    let mut side = Vec::with_capacity(name.len() + suffix.len() + 2);
    side.push(b'.');
    side.extend_from_slice(name);
    side.push(b'.');
    side.extend_from_slice(suffix.as_bytes());
    upper
        .parent()
        .unwrap_or(Path::new("/"))
        .join(std::ffi::OsStr::from_bytes(&side))
}

/// What is recorded beside a persistent upper.
#[derive(Serialize, Deserialize)]
struct LayerRecord {
    lowers: Vec<PathBuf>,
    /// Whether fuse-overlayfs has ever mounted the upper: where it cannot make a whiteout device
    /// it writes a file `.wh.NAME` instead, which the kernel driver takes as an ordinary name.
    /// None where the upper's past is unknown (written before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fuse: Option<bool>,
}

impl LayerRecord {
    /// The record, if there is one this user wrote: a file another user owns or could have
    /// written (in a directory shared with others) is not taken for it, nor a link.
    fn read(upper: &Path) -> Option<LayerRecord> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let canon = std::fs::canonicalize(upper).unwrap_or_else(|_| upper.into());
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(sidecar(&canon, "layers.json"))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != sys::getuid() || meta.mode() & 0o022 != 0 {
            return None;
        }
        let mut text = String::new();
        (&mut file).take(1 << 20).read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record, never through a link nor into a file another user owns.
    fn write(&self, upper: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = sidecar(upper, "layers.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let io = |e: std::io::Error| Error::io("write layer record", Some(path.clone()), e);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || meta.uid() != sys::getuid() {
            return Err(io(std::io::Error::from_raw_os_error(libc::EPERM)));
        }
        // (Ours: writable by us alone from now on, so that `read` takes it.)
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
        file.set_len(0).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)
    }
}

/// What a sandbox changed, read from a persistent upper directory. Paths start with `/` (the
/// sandbox's root) and keep the bytes of their names exactly (see `DiffPath`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Paths that did not exist in any lower layer.
    pub added: Vec<DiffPath>,
    /// Paths that exist in a lower layer and were changed: a file's content or metadata, a
    /// directory's own mode or owner (not one copied up only for a change below it), or an
    /// opaque directory that replaced its lower contents.
    pub modified: Vec<DiffPath>,
    /// Paths deleted (whiteouts).
    pub deleted: Vec<DiffPath>,
    /// Directories of the upper whose contents are not listed: this user cannot read them (a
    /// sandbox can make one so), or they lie deeper than [`Diff::MAX_PATH`] below the root.
    /// What they hold is not in the lists above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<DiffPath>,
}

impl Diff {
    /// The longest path (in bytes, from the sandbox's root) whose directory is listed: twice
    /// PATH_MAX. A sandbox can nest directories without end; those deeper are in `unreadable`.
    pub const MAX_PATH: usize = 2 * libc::PATH_MAX as usize;

    /// The text form: one line per change, `A PATH` (added), `M PATH` (modified), `D PATH`
    /// (deleted), `? PATH` (unreadable), in that order, each path escaped as
    /// `DiffPath::to_text` does, so that one change is always exactly one line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (mark, list) in [
            ('A', &self.added),
            ('M', &self.modified),
            ('D', &self.deleted),
            ('?', &self.unreadable),
        ] {
            for path in list {
                out.push(mark);
                out.push(' ');
                path.escape_into(&mut out);
                out.push('\n');
            }
        }
        out
    }
}

/// A path in a [`Diff`]: the exact bytes of the names in the upper (a name need not be UTF-8,
/// and may hold any byte but `/` and NUL), joined by `/` and starting with `/`.
///
/// - Text ([`DiffPath::to_text`], `Display`): escaped, so that it is one line and two different
///   paths never print the same: a backslash is `\\`; newline, tab and carriage return are
///   `\n`, `\t`, `\r`; any other ASCII control byte (0x00-0x1f, 0x7f) and every byte that is not
///   part of valid UTF-8 is `\xNN` (two lowercase hex digits); the Unicode C1 controls
///   (U+0080-U+009F), line and paragraph separators (U+2028, U+2029) and bidirectional
///   formatting characters (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) are
///   `\u{H...}` (the code point in lowercase hex, e.g. `\u{2028}`). Everything else, spaces
///   included, is printed as it is.
/// - JSON (serde): a string when the path is UTF-8, else `{"base64": "..."}` holding the bytes
///   (standard base64 with padding), as a sandbox's non-UTF-8 output is.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DiffPath(Vec<u8>);

impl DiffPath {
    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a `Path` (inside the sandbox: absolute, rooted at the upper).
    pub fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }

    /// The path as UTF-8 text, when it is.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The escaped text form (see the type's documentation).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        self.escape_into(&mut out);
        out
    }

    fn escape_into(&self, out: &mut String) {
        use std::fmt::Write;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    '\0'..='\x1f' | '\x7f' => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    '\u{80}'..='\u{9f}'
                    | '\u{61c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}' => {
                        let _ = write!(out, "\\u{{{:x}}}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

impl From<Vec<u8>> for DiffPath {
    fn from(bytes: Vec<u8>) -> DiffPath {
        DiffPath(bytes)
    }
}

impl From<&str> for DiffPath {
    fn from(text: &str) -> DiffPath {
        DiffPath(text.as_bytes().to_vec())
    }
}

impl std::fmt::Display for DiffPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl std::fmt::Debug for DiffPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.to_text())
    }
}

impl PartialEq<str> for DiffPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for DiffPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<[u8]> for DiffPath {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

/// JSON's two forms of a path: text, or the bytes in base64.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PathJson {
    Utf8(String),
    Bytes { base64: String },
}

impl Serialize for DiffPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => PathJson::Bytes {
                base64: base64::encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DiffPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<DiffPath, D::Error> {
        match PathJson::deserialize(d)? {
            PathJson::Utf8(text) => Ok(DiffPath(text.into_bytes())),
            PathJson::Bytes { base64 } => base64::decode(&base64)
                .map(DiffPath)
                .ok_or_else(|| serde::de::Error::custom("invalid base64 path")),
        }
    }
}

/// Reads the changes recorded in a persistent `upper`. `lowers` (top-most first) tell added from
/// modified; when empty, the layers recorded beside the upper at spawn time are used. The record
/// also tells whether fuse-overlayfs has mounted the upper: only then is a file `.wh.NAME` a
/// whiteout (the kernel driver's whiteouts are devices, and `.wh.NAME` an ordinary name to it);
/// for an upper without that record, it is one where a lower has NAME.
///
/// The upper is walked by directory descriptors, never by whole paths: a sandbox can nest
/// directories deeper than the host's PATH_MAX allows with the upper's path in front. Whatever a
/// sandbox does to a directory of its upper (making it unreadable, nesting it without end), that
/// directory is listed in `unreadable` and the rest of the diff stands.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Diff> {
    let meta = std::fs::metadata(upper).map_err(|e| Error::PathNotFound {
        what: "upper directory",
        path: upper.into(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
    })?;
    if !meta.is_dir() {
        return Err(Error::PathNotFound {
            what: "upper directory (not a directory)",
            path: upper.into(),
            errno: Errno::ENOTDIR,
        });
    }
    let record = LayerRecord::read(upper);
    let fuse = record.as_ref().and_then(|r| r.fuse);
    let recorded;
    let lowers = if lowers.is_empty() {
        recorded = record.map(|r| r.lowers).unwrap_or_default();
        &recorded[..]
    } else {
        lowers
    };
    let mut walk = Walk {
        upper,
        no_lowers: lowers.is_empty(),
        fuse,
        path: Vec::new(),
        out: BTreeMap::new(),
        unreadable: Vec::new(),
    };
    walk.run(lowers)?;
    let mut d = Diff::default();
    for (path, kind) in walk.out {
        let path = DiffPath(path);
        match kind {
            Change::Added => d.added.push(path),
            Change::Modified => d.modified.push(path),
            Change::Deleted => d.deleted.push(path),
        }
    }
    walk.unreadable.sort();
    walk.unreadable.dedup();
    d.unreadable = walk.unreadable.into_iter().map(DiffPath).collect();
    Ok(d)
}

enum Change {
    Added,
    Modified,
    Deleted,
}

/// A directory open for `at` calls, never followed through a symbolic link.
fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> std::result::Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// The names in a directory (without `.` and `..`), read through a copy of its descriptor: the
/// directory stream (and its buffer) is gone when this returns.
fn names_in(dir: &OwnedFd) -> std::result::Result<Vec<CString>, Errno> {
    use std::os::fd::IntoRawFd;
    let copy = dir
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))?
        .into_raw_fd();
    // SAFETY: `copy` is an open descriptor this function owns; fdopendir takes it over.
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so `copy` is still ours to close.
        unsafe { libc::close(copy) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: `stream` is an open directory stream, used by this thread only.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            break match Errno::last_raw() {
                0 => Ok(()),
                e => Err(Errno::from_raw(e)),
            };
        }
        // SAFETY: readdir64 returned an entry whose d_name is NUL-terminated and valid until the
        // next call on the stream; it is copied at once.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `stream` is open and not used after this; closedir closes `copy` too.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> std::result::Result<libc::stat, Errno> {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// One directory of the walk: the upper's, and the lowers' at the same place (None where a lower
/// has no directory there).
struct Level {
    upper: OwnedFd,
    lowers: Vec<Option<OwnedFd>>,
    /// Whether a lower has something at this path.
    in_lowers: bool,
    /// The names still to look at.
    names: std::vec::IntoIter<CString>,
    /// The length of the walk's path before this directory's name.
    parent_len: usize,
}

impl Level {
    /// What the top-most lower holding `name` (in this directory) has there.
    fn top_lower(&self, name: &CStr) -> Option<libc::stat> {
        self.lowers
            .iter()
            .flatten()
            .find_map(|l| stat_at(l.as_fd(), name).ok())
    }
}

/// A walk of an upper: where it is and what it read so far.
struct Walk<'a> {
    upper: &'a Path,
    no_lowers: bool,
    /// Whether fuse-overlayfs has mounted the upper (None: not known).
    fuse: Option<bool>,
    /// The directory being read, from the upper's root: empty for the root, else `a/b`.
    path: Vec<u8>,
    /// Each change by its path (`/a/b`).
    out: BTreeMap<Vec<u8>, Change>,
    unreadable: Vec<Vec<u8>>,
}

impl Walk<'_> {
    /// `/PATH/NAME` for `name` in the directory being read (`/PATH` when `name` is empty).
    fn shown(&self, name: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.path.len() + name.len() + 2);
        out.push(b'/');
        out.extend_from_slice(&self.path);
        if !name.is_empty() {
            if !self.path.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(name);
        }
        out
    }

    /// The host path of `name` in the directory being read, for an error message.
    fn host_path(&self, name: &[u8]) -> PathBuf {
        let rel = self.shown(name);
        self.upper.join(std::ffi::OsStr::from_bytes(&rel[1..]))
    }

    /// Whether a file `.wh.NAME` in a directory (NAME = `hidden`) is a whiteout: fuse-overlayfs
    /// writes such files where it cannot make a whiteout device, and refuses the name otherwise,
    /// while under the kernel driver it is a file like any other. One hides only what a lower
    /// has.
    fn fuse_whiteout(&self, level: &Level, hidden: &[u8]) -> bool {
        match self.fuse {
            Some(false) => false,
            _ => {
                self.no_lowers || CString::new(hidden).is_ok_and(|h| level.top_lower(&h).is_some())
            }
        }
    }

    fn run(&mut self, lowers: &[PathBuf]) -> Result<()> {
        let open_root = |p: &Path| {
            let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
            nix::fcntl::open(
                c.as_c_str(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        };
        let read_err = |e: Errno| {
            Error::io(
                "read upper directory",
                Some(self.upper.to_path_buf()),
                std::io::Error::from_raw_os_error(e as i32),
            )
        };
        // The root itself made unreadable (chmod 000 / in the sandbox) is said so too.
        let (root, names) = match open_root(self.upper).and_then(|fd| Ok((names_in(&fd)?, fd))) {
            Ok((names, fd)) => (fd, names),
            Err(Errno::EACCES) => {
                self.unreadable.push(b"/".to_vec());
                return Ok(());
            }
            Err(e) => return Err(read_err(e)),
        };
        let mut stack = vec![Level {
            upper: root,
            lowers: lowers.iter().map(|l| open_root(l).ok()).collect(),
            in_lowers: false,
            names: names.into_iter(),
            parent_len: 0,
        }];
        while let Some(level) = stack.last_mut() {
            let Some(name) = level.names.next() else {
                let done = stack.pop().expect("a level");
                self.path.truncate(done.parent_len);
                continue;
            };
            if let Some(child) = self.entry(level, &name)? {
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Looks at `name` in the directory `level`; a directory to read next is returned, with the
    /// walk's path moved into it.
    fn entry(&mut self, level: &mut Level, name: &CStr) -> Result<Option<Level>> {
        let st = match stat_at(level.upper.as_fd(), name) {
            Ok(st) => st,
            // Gone since the directory was read (a sandbox still running on the upper).
            Err(Errno::ENOENT) => return Ok(None),
            // A directory that may be read but not searched (mode r--): its names are known,
            // not what they are. Said so, and the rest of the diff stands.
            Err(Errno::EACCES) => {
                self.unreadable.push(self.shown(b""));
                level.names = Vec::new().into_iter();
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::io(
                    "stat",
                    Some(self.host_path(name.to_bytes())),
                    std::io::Error::from_raw_os_error(e as i32),
                ))
            }
        };
        let bytes = name.to_bytes();
        let shown = self.shown(bytes);
        let dir = is_dir(&st);
        // Whiteouts and opaque markers are never directories: a directory of such a name is one
        // the sandbox made, and is taken as it is.
        let hidden = bytes
            .strip_prefix(b".wh.")
            .filter(|h| !dir && self.fuse_whiteout(level, h));
        if (bytes == b".wh..wh..opq" || bytes == b".wh..opq") && !dir && self.fuse != Some(false) {
            // fuse-overlayfs's opaque markers: only news when they hide a lower directory.
            if !self.path.is_empty() && level.in_lowers {
                self.out.insert(self.shown(b""), Change::Modified);
            }
        } else if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0 {
            self.out.insert(shown, Change::Deleted);
        } else if let Some(hidden) = hidden {
            self.out.insert(self.shown(hidden), Change::Deleted);
        } else if dir {
            let below = level.top_lower(name);
            let fd = open_dir_at(level.upper.as_fd(), name);
            let changed = match &below {
                None => Some(Change::Added),
                // Copied up for a change below it, or changed itself: its own mode or owner
                // differs from the directory it covers (or it covers a non-directory), or it
                // hides the lowers' contents.
                Some(b) => {
                    let changed = !is_dir(b)
                        || b.st_mode & 0o7777 != st.st_mode & 0o7777
                        || (b.st_uid, b.st_gid) != (st.st_uid, st.st_gid);
                    (changed || fd.as_ref().is_ok_and(|fd| is_opaque(fd.as_fd())))
                        .then_some(Change::Modified)
                }
            };
            if let Some(kind) = changed {
                self.out.insert(shown.clone(), kind);
            }
            let names = match fd {
                // Gone since the directory was read.
                Err(Errno::ENOENT) => return Ok(None),
                // Too deep to list, or not to be read (made unreadable, out of descriptors): said
                // so, and the rest of the diff stands.
                _ if shown.len() > Diff::MAX_PATH => Err(()),
                Err(_) => Err(()),
                Ok(fd) => names_in(&fd).map(|names| (fd, names)).map_err(drop),
            };
            let Ok((fd, names)) = names else {
                self.unreadable.push(shown);
                return Ok(None);
            };
            let lowers = level
                .lowers
                .iter()
                .map(|l| l.as_ref().and_then(|l| open_dir_at(l.as_fd(), name).ok()))
                .collect();
            let parent_len = self.path.len();
            if !self.path.is_empty() {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(bytes);
            return Ok(Some(Level {
                upper: fd,
                lowers,
                in_lowers: below.is_some(),
                names: names.into_iter(),
                parent_len,
            }));
        } else {
            let kind = match level.top_lower(name) {
                Some(_) => Change::Modified,
                None => Change::Added,
            };
            self.out.insert(shown, kind);
        }
        Ok(None)
    }
}

/// Whether the directory open at `dir` is an opaque one of either driver.
fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 4];
    [
        c"user.overlay.opaque",
        c"trusted.overlay.opaque",
        c"user.fuseoverlayfs.opaque",
    ]
    .iter()
    .any(|name| {
        // SAFETY: dir is an open descriptor, name is NUL-terminated, buf is writable for its
        // length.
        let n = unsafe {
            libc::fgetxattr(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        n > 0 && buf[0] == b'y'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_paths_escape_to_one_distinct_line() {
        let text = |b: &[u8]| DiffPath(b.to_vec()).to_text();
        assert_eq!(text(b"/etc/passwd"), "/etc/passwd");
        assert_eq!(text(b"/z\nD /etc/shadow"), "/z\\nD /etc/shadow");
        assert_eq!(text(b"/a\\nb"), "/a\\\\nb");
        assert_eq!(text(b"/bad\xffname"), "/bad\\xffname");
        assert_eq!(text("/bad\u{fffd}name".as_bytes()), "/bad\u{fffd}name");
        assert_eq!(text(b"/t\tr\r\x01\x7f"), "/t\\tr\\r\\x01\\x7f");
        assert_eq!(
            text("/\u{85}\u{2028}\u{202e}x".as_bytes()),
            "/\\u{85}\\u{2028}\\u{202e}x"
        );
        assert_eq!(text(b"/\xc2"), "/\\xc2");
        assert_eq!(text("/é ü".as_bytes()), "/é ü");
        for b in [&b"/a\nb"[..], b"/\xe2\x80\xa8", b"/\xff\xfe", b"/x\\y"] {
            assert!(!text(b).contains(['\n', '\r', '\u{2028}']), "{b:?}");
        }
        let d = Diff {
            added: vec![DiffPath(b"/z\nD /etc/shadow".to_vec())],
            deleted: vec!["/etc/passwd".into()],
            ..Diff::default()
        };
        assert_eq!(d.to_text(), "A /z\\nD /etc/shadow\nD /etc/passwd\n");
    }

    #[test]
    fn diff_paths_are_byte_exact_in_json() {
        let d = Diff {
            added: vec![
                DiffPath(b"/bad\xffname".to_vec()),
                DiffPath("/bad\u{fffd}name".as_bytes().to_vec()),
            ],
            ..Diff::default()
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["added"],
            serde_json::json!([{"base64": "L2JhZP9uYW1l"}, "/bad\u{fffd}name"])
        );
        let back: Diff = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn base64_round_trips_every_length() {
        assert_eq!(base64::encode(b"a\xff\xfeb"), "Yf/+Yg==");
        let data: Vec<u8> = (0..=255).collect();
        for len in 0..data.len() {
            let text = base64::encode(&data[..len]);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64::decode(&text).as_deref(), Some(&data[..len]));
        }
        assert_eq!(base64::decode("Zm9v!"), None);
    }
}
