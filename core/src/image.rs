//! Local OCI image layouts, unpacked into a content-addressed layer store.
//!
//! [`unpack`] opens an [OCI image layout] (a directory holding `oci-layout`, `index.json` and
//! `blobs/<alg>/<hex>`, as written by `skopeo copy … oci:DIR:TAG`, `buildah push … oci:DIR` or
//! `docker buildx build --output type=oci`), picks one image manifest, verifies every blob it reads
//! against its descriptor, and unpacks each layer into its own directory of the store, ready to be
//! stacked as overlayfs lower layers. Pulling from a registry is not part of this module.
//!
//! ```no_run
//! use std::path::Path;
//! use rsandbox::image;
//!
//! let image = image::unpack(Path::new("/srv/images/alpine"), Some("3.20"), &image::default_store())?;
//! // Bottom layer first; overlayfs wants `lowerdir=` top first.
//! for layer in image.layers.iter().rev() {
//!     println!("{}", layer.display());
//! }
//! println!("cmd: {:?}", image.config.cmd);
//! # Ok::<(), rsandbox::Error>(())
//! ```
//!
//! # The store
//! `STORE/sha256/<hex>/` is the unpacked tree of the layer whose (compressed) blob has digest
//! `sha256:<hex>`. A layer is unpacked once: it is extracted into a private sibling
//! `STORE/sha256/.tmp-<hex>-<pid>-<random>` and renamed into place, so a directory under its digest
//! is always complete, and of several processes unpacking the same layer at once one wins and the
//! others discard their copy. A present layer directory is trusted and reused without reading the
//! blob again. `STORE/sha256/<hex>.skipped` lists the entries of that layer that could not be
//! reproduced (see [`UnpackedImage::skipped`]). The store must be private to the caller: its
//! directory is created mode 0700, and [`unpack`] refuses a store another user could write to.
//!
//! # Unpacking
//! Layers are untrusted. Entry names are taken relative to the layer directory (a leading `/` is
//! dropped) and a name with a `..` component makes the whole layer invalid; no entry is ever written
//! through a symbolic link that leads out of the layer, and hard links must point inside it.
//! Ownership and extended attributes in the archive are ignored (the files belong to the caller);
//! permission bits and modification times are kept, except the set-user-ID and set-group-ID bits,
//! which are dropped (the sticky bit stays on directories). A later entry replaces an earlier one
//! of the same name, a directory tree included. Device nodes and FIFOs
//! cannot be made without privilege and are skipped (and listed), except the overlayfs whiteout
//! device 0/0. OCI whiteouts become their overlayfs form: `.wh.NAME` becomes a character device 0/0
//! named `NAME` (which Linux 5.8 and later let unprivileged users create) and `.wh..wh..opq` sets
//! `user.overlay.opaque=y` on its directory, the form overlayfs reads when mounted with `userxattr`
//! in a user namespace.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use oci_spec::image::{
    Arch, Descriptor, Digest, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest,
    MediaType, OciLayout, Os,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{Error, Result};

/// The annotation an OCI layout's index uses to name (tag) a manifest.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// JSON blobs (index, manifest, config) larger than this are refused rather than read into memory.
const MAX_JSON_SIZE: u64 = 16 << 20;
/// The most entries one layer may hold. Real layers hold up to a few hundred thousand (a whole
/// distribution with its documentation); this bounds the time and memory (directories are
/// recorded until the end) that a "tar bomb" of empty entries, tiny once compressed, can cost.
pub const MAX_LAYER_ENTRIES: u64 = 4_000_000;
/// The share of the store's file system, in percent of its size and of its inodes, that unpacking
/// leaves free: a layer that would eat into it (a decompression bomb, or a disk too small) stops
/// with an error instead of filling a disk the rest of the host needs. The reserve is at most
/// [`STORE_RESERVE_MAX_BYTES`] and [`STORE_RESERVE_MAX_INODES`], so a large, busy disk is not
/// held back more than that; it is checked every [`SPACE_CHECK_BYTES`] of unpacked data and
/// every [`SPACE_CHECK_ENTRIES`] entries, so small layers always unpack.
pub const STORE_RESERVE_PERCENT: u64 = 5;
/// The most free space [`STORE_RESERVE_PERCENT`] keeps: 2 GiB.
pub const STORE_RESERVE_MAX_BYTES: u64 = 2 << 30;
/// The most free inodes [`STORE_RESERVE_PERCENT`] keeps.
pub const STORE_RESERVE_MAX_INODES: u64 = 100_000;
/// How much uncompressed layer data goes by between two checks of the store's free space.
pub const SPACE_CHECK_BYTES: u64 = 32 << 20;
/// How many layer entries go by between two checks of the store's free space.
pub const SPACE_CHECK_ENTRIES: u64 = 4096;
/// The most bytes the tar stream may hold between two entries (headers, long names, PAX records,
/// data of entries that are skipped): the tar reader keeps long names and PAX records in memory
/// whole, and no real layer has more than a few KiB of them per entry.
const MAX_BYTES_BETWEEN_ENTRIES: u64 = 16 << 20;
/// The xattr that marks an overlayfs directory opaque when overlayfs uses `user.*` xattrs.
const OPAQUE_XATTR: &str = "user.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The run-time defaults an image's configuration sets, which the caller may override.
///
/// These are the `Env`, `WorkingDir`, `Entrypoint`, `Cmd` and `User` fields of the image config;
/// empty strings become `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Environment as `KEY=value` strings, in the image's order.
    pub env: Vec<String>,
    /// The working directory for the command, if the image sets one.
    pub working_dir: Option<String>,
    /// The command prefix; the command run is `entrypoint` followed by `cmd`.
    pub entrypoint: Vec<String>,
    /// The default arguments (or the whole command when `entrypoint` is empty).
    pub cmd: Vec<String>,
    /// The user as the image names it: `name`, `uid`, `uid:gid` or `name:group`.
    pub user: Option<String>,
}

/// An image resolved from a layout and unpacked into the store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UnpackedImage {
    /// The digest of the image manifest that was unpacked, e.g. `sha256:3f1c…`.
    pub manifest_digest: String,
    /// The unpacked layer directories, BOTTOM layer first (overlayfs `lowerdir=` wants the reverse).
    pub layers: Vec<PathBuf>,
    /// The image's run-time defaults.
    pub config: ImageConfig,
    /// Layer entries that could not be reproduced without privilege (device nodes, FIFOs), as
    /// `sha256:<hex>: /path (what)`. The same list is returned when a layer is reused from the store.
    pub skipped: Vec<String>,
}

/// Opens the OCI image layout at `layout`, selects one manifest, verifies and unpacks every layer
/// into `store` (once per layer digest; reused afterwards), and returns the layer directories and
/// the image's configuration.
///
/// With a `tag`, the manifest is the index entry whose `org.opencontainers.image.ref.name`
/// annotation equals it; without one, the index must hold exactly one entry. An entry that is
/// itself an image index (a multi-platform image) is resolved one level further to the manifest for
/// this machine's platform. The manifest, the config and every layer that is not yet in the store
/// are checked against their descriptor's digest and size before anything is unpacked, and every
/// unpacked layer is checked against the config's `rootfs.diff_ids`.
///
/// Supported layers are `application/vnd.oci.image.layer.v1.tar`, `…tar+gzip`, `…tar+zstd` (and
/// their non-distributable variants) and Docker's `application/vnd.docker.image.rootfs.diff.tar`
/// and `…diff.tar.gzip`.
///
/// Every file of the layout is opened beneath the layout directory (a symbolic link may lead
/// elsewhere inside it, not out of it), without blocking, and only read if it is a regular file,
/// no further than its descriptor's size (index.json and oci-layout: 16 MiB).
///
/// # Errors
/// [`Error::InvalidImage`] naming the file or blob at fault when the layout is missing a file, holds
/// malformed JSON, has no manifest for `tag` (the message lists the tags there are), a file of it
/// is not a regular file or is reached through a symbolic link out of the layout, a blob fails
/// verification, a layer has an unsupported media type, is corrupt, holds more than
/// [`MAX_LAYER_ENTRIES`] entries, or an entry tries to leave its layer or cannot be unpacked
/// (the message names the entry and keeps the system's reason). [`Error::Io`] for failures of the
/// store's file system (including a whiteout device that the kernel refuses to create, and
/// ENOSPC when a layer would eat into the free space kept for the host, see
/// [`STORE_RESERVE_PERCENT`]), or a store that other users could write to.
pub fn unpack(layout: &Path, tag: Option<&str>, store: &Path) -> Result<UnpackedImage> {
    let layout = Layout::open(layout)?;
    let manifest_desc = layout.select(tag)?;
    let (manifest, manifest_path): (ImageManifest, _) =
        layout.read_json(&manifest_desc, "image manifest", &layout.index_path)?;

    let config_desc = manifest.config();
    if !is_config(config_desc.media_type()) {
        return Err(invalid(
            &manifest_path,
            format!(
                "the manifest's config has media type {}, not a container image config",
                config_desc.media_type()
            ),
        ));
    }
    let (image_config, config_path): (ImageConfiguration, _) =
        layout.read_json(config_desc, "image config", &manifest_path)?;
    let diff_ids = image_config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(
            &config_path,
            format!(
                "rootfs.diff_ids lists {} layers but the manifest has {}",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }

    // Plan every layer first: an unsupported media type or a bad digest fails before any work.
    let mut plans = Vec::with_capacity(diff_ids.len());
    let mut store_dirs: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for (i, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let (alg, hex) = checked_digest(desc.digest()).map_err(|r| {
            invalid(
                &manifest_path,
                format!("layer {i}: digest {}: {r}", desc.digest()),
            )
        })?;
        let blob = layout.root.join("blobs").join(alg).join(hex);
        let compression = Compression::of(desc.media_type()).ok_or_else(|| {
            invalid(
                &blob,
                format!("layer {i} has unsupported media type {}", desc.media_type()),
            )
        })?;
        let diff_id: Digest = diff_id.parse().map_err(|e| {
            invalid(
                &config_path,
                format!("rootfs.diff_ids[{i}] {diff_id:?}: {e}"),
            )
        })?;
        if let Err(r) = checked_digest(&diff_id) {
            return Err(invalid(
                &config_path,
                format!("rootfs.diff_ids[{i}] {diff_id}: {r}"),
            ));
        }
        let dir = match store_dirs.get(alg) {
            Some(dir) => dir.clone(),
            None => {
                let dir = store_dir(store, alg)?;
                store_dirs.insert(alg, dir.clone());
                dir
            }
        };
        plans.push(LayerPlan {
            index: i,
            desc,
            blob,
            compression,
            diff_id,
            target: dir.join(hex),
            notes: dir.join(format!("{hex}.skipped")),
            dir,
            alg,
            hex: hex.to_owned(),
        });
    }

    // Verify every blob that will be read before unpacking any, so a bad image leaves no trace.
    let verify = |plan: &LayerPlan<'_>| {
        let file = plan.open(&layout, &manifest_path)?;
        verify_file(file, &plan.blob, plan.desc)
    };
    let mut verified = vec![false; plans.len()];
    for (plan, verified) in plans.iter().zip(&mut verified) {
        if !is_present(&plan.target)? {
            verify(plan)?;
            *verified = true;
        }
    }

    let mut layers = Vec::with_capacity(plans.len());
    let mut skipped = Vec::new();
    for (plan, verified) in plans.iter().zip(verified) {
        if !is_present(&plan.target)? {
            // Present a moment ago but removed since: never unpack an unverified blob.
            if !verified {
                verify(plan)?;
            }
            plan.unpack(plan.open(&layout, &manifest_path)?)?;
        }
        match fs::read_to_string(&plan.notes) {
            Ok(text) => skipped.extend(
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{}: {l}", plan.desc.digest())),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read", Some(plan.notes.clone()), e)),
        }
        layers.push(plan.target.clone());
    }

    Ok(UnpackedImage {
        manifest_digest: manifest_desc.digest().to_string(),
        layers,
        config: image_config_of(&image_config),
        skipped,
    })
}

/// The default layer store: `$RSANDBOX_IMAGE_STORE`, else `$XDG_CACHE_HOME/rsandbox/layers`, else
/// `$HOME/.cache/rsandbox/layers`, else `/tmp/rsandbox-<uid>/layers`.
///
/// Variables that are unset, empty or hold a relative path are passed over.
pub fn default_store() -> PathBuf {
    fn absolute(name: &str) -> Option<PathBuf> {
        let path = PathBuf::from(std::env::var_os(name)?);
        path.is_absolute().then_some(path)
    }
    if let Some(store) = absolute("RSANDBOX_IMAGE_STORE") {
        store
    } else if let Some(cache) = absolute("XDG_CACHE_HOME") {
        cache.join("rsandbox/layers")
    } else if let Some(home) = absolute("HOME") {
        home.join(".cache/rsandbox/layers")
    } else {
        PathBuf::from(format!(
            "/tmp/rsandbox-{}/layers",
            nix::unistd::geteuid().as_raw()
        ))
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn image_config_of(image: &ImageConfiguration) -> ImageConfig {
    let Some(c) = image.config() else {
        return ImageConfig::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        working_dir: non_empty(c.working_dir()),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        user: non_empty(c.user()),
    }
}

// ---------------------------------------------------------------------------------------------
// The image's user, looked up in the image's own /etc/passwd and /etc/group.

/// The largest `/etc/passwd` or `/etc/group` [`resolve_user`] reads (some 50,000 users); a larger
/// one is an invalid image rather than memory spent.
pub const MAX_ID_FILE_SIZE: u64 = 4 << 20;
/// The symbolic links one lookup in the image follows before it gives up, as many as the kernel.
const MAX_SYMLINKS: usize = 40;

/// The uid and gid the image config's `User` stands for: `uid`, `uid:gid`, `name`, `name:group`
/// (or a mix); the gid is `None` for a bare numeric uid.
///
/// Names are looked up in the image's own `/etc/passwd` and `/etc/group` as the sandbox will see
/// them: in `layers` (bottom first, as in [`UnpackedImage::layers`]) stacked the way overlayfs
/// stacks them, whiteouts and opaque directories included, with symbolic links resolved inside the
/// image (an absolute one from the image's root), never on the host. Only a regular file of at
/// most [`MAX_ID_FILE_SIZE`] bytes is read. A name without a group takes its primary group from
/// `/etc/passwd`.
///
/// # Errors
/// [`Error::InvalidImage`] when the image does not define a name, when its `/etc/passwd` or
/// `/etc/group` is not a regular file, is too large or sits behind a loop of symbolic links, or
/// when an entry's id is not a number. [`Error::Io`] when a layer directory cannot be read.
pub fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<(u32, Option<u32>)> {
    let view = MergedView { layers };
    let unknown = |what: &str, name: &str| Error::InvalidImage {
        path: "config.User".into(),
        reason: format!("the image runs as {what} {name:?}, which its /etc/{what} does not define"),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => view
            .id_entry("etc/passwd", u)?
            .ok_or_else(|| unknown("passwd", u))?,
    };
    let gid = match g {
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                view.id_entry("etc/group", g)?
                    .ok_or_else(|| unknown("group", g))?
                    .0
            }
        }),
        None => primary,
    };
    Ok((uid, gid))
}

/// Read-only lookups in image layers stacked as overlayfs stacks them. Every name is looked up
/// one component at a time in a layer directory's descriptor, symbolic links included, which
/// this code resolves itself: nothing the kernel resolves can lead out of the layers.
struct MergedView<'a> {
    /// Bottom first.
    layers: &'a [PathBuf],
}

/// A directory of the merged view: the layer directories that make it up, topmost first.
struct MergedDir {
    parts: Vec<(usize, File)>,
}

impl MergedView<'_> {
    fn root(&self) -> Result<MergedDir> {
        let mut parts = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let dir = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(layer)
                .map_err(|e| Error::io("open the image layer", Some(layer.clone()), e))?;
            parts.push((i, dir));
        }
        Ok(MergedDir { parts })
    }

    /// Where `name` in the merged directory `names` lies in layer `layer`, for messages.
    fn host_path(&self, layer: usize, names: &[std::ffi::OsString], name: &OsStr) -> PathBuf {
        let mut path = self.layers[layer].clone();
        path.extend(names);
        path.push(name);
        path
    }

    /// Opens the regular file at `path` (relative to the image's root) in the merged view;
    /// `None` when there is none there (missing, whited out, or a non-directory on the way).
    fn open_file(&self, path: &str) -> Result<Option<(PathBuf, File)>> {
        let mut pending: std::collections::VecDeque<std::ffi::OsString> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(Into::into)
            .collect();
        let mut stack = vec![self.root()?];
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        let mut links = 0;
        'components: while let Some(name) = pending.pop_front() {
            if name == "." {
                continue;
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                    names.pop();
                }
                continue;
            }
            let last = pending.is_empty();
            let Some(dir) = stack.last() else {
                return Ok(None);
            };
            let mut merged: Option<MergedDir> = None;
            for (layer, fd) in &dir.parts {
                let host = || self.host_path(*layer, &names, &name);
                let st = match nix::sys::stat::fstatat(
                    fd,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(Error::io("stat", Some(host()), e.into())),
                };
                let format = st.st_mode & libc::S_IFMT;
                let Some(merged) = merged.as_mut() else {
                    // The topmost layer holding the name decides what it is.
                    if format == libc::S_IFCHR && st.st_rdev == 0 {
                        return Ok(None); // A whiteout.
                    }
                    if format == libc::S_IFLNK {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(invalid(
                                &host(),
                                format!(
                                    "/{path}: more than {MAX_SYMLINKS} symbolic links (a loop?)"
                                ),
                            ));
                        }
                        let target = nix::fcntl::readlinkat(fd, name.as_os_str())
                            .map_err(|e| Error::io("readlink", Some(host()), e.into()))?;
                        let target = target.as_bytes();
                        if target.first() == Some(&b'/') {
                            stack.truncate(1);
                            names.clear();
                        }
                        for part in target.split(|&b| b == b'/').rev() {
                            if !part.is_empty() {
                                pending.push_front(OsStr::from_bytes(part).to_owned());
                            }
                        }
                        continue 'components;
                    }
                    if format != libc::S_IFDIR {
                        if !last {
                            return Ok(None); // Not a directory: nothing lies beneath.
                        }
                        if format != libc::S_IFREG {
                            return Err(invalid(
                                &host(),
                                format!(
                                    "/{path} in the image is not a regular file but {}",
                                    file_kind(st.st_mode)
                                ),
                            ));
                        }
                        let file = open_component(fd, &name, libc::O_RDONLY | libc::O_NONBLOCK)
                            .map_err(|e| Error::io("open", Some(host()), e.into()))?;
                        return Ok(Some((host(), file)));
                    }
                    let sub = open_component(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY)
                        .map_err(|e| Error::io("open", Some(host()), e.into()))?;
                    let opaque = is_opaque(&sub);
                    merged = Some(MergedDir {
                        parts: vec![(*layer, sub)],
                    });
                    if opaque {
                        break;
                    }
                    continue;
                };
                // A directory merges with the lower layers' directories of the same name, down
                // to an opaque one; a whiteout or a non-directory below ends it.
                if format != libc::S_IFDIR {
                    break;
                }
                let sub = open_component(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| Error::io("open", Some(host()), e.into()))?;
                let opaque = is_opaque(&sub);
                merged.parts.push((*layer, sub));
                if opaque {
                    break;
                }
            }
            match merged {
                Some(dir) => {
                    stack.push(dir);
                    names.push(name);
                }
                None => return Ok(None),
            }
        }
        // The path named a directory.
        let host = match stack.last().and_then(|d| d.parts.first()) {
            Some((layer, _)) => {
                let mut path = self.layers[*layer].clone();
                path.extend(&names);
                path
            }
            None => PathBuf::from(path),
        };
        Err(invalid(
            &host,
            format!("/{path} in the image is not a regular file but a directory"),
        ))
    }

    /// The id and group id (`/etc/passwd`) or id (`/etc/group`) the file `rel` gives `name`;
    /// `None` when the file or the name is not there.
    fn id_entry(&self, rel: &str, name: &str) -> Result<Option<(u32, Option<u32>)>> {
        let Some((path, file)) = self.open_file(rel)? else {
            return Ok(None);
        };
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", Some(path.clone()), e))?
            .len();
        let too_large = || {
            invalid(
                &path,
                format!("/{rel} in the image is larger than the {MAX_ID_FILE_SIZE} bytes read"),
            )
        };
        if size > MAX_ID_FILE_SIZE {
            return Err(too_large());
        }
        let bytes = read_at_most(file, MAX_ID_FILE_SIZE + 1, &path)?;
        if bytes.len() as u64 > MAX_ID_FILE_SIZE {
            return Err(too_large());
        }
        for line in bytes.split(|&b| b == b'\n') {
            let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
            if fields.len() < 4 || fields[0] != name.as_bytes() {
                continue;
            }
            let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse::<u32>().ok();
            let Some(id) = number(fields[2]) else {
                return Err(invalid(
                    &path,
                    format!(
                        "/{rel} in the image gives {name:?} the id {:?}, which is not a number",
                        String::from_utf8_lossy(fields[2])
                    ),
                ));
            };
            return Ok(Some((id, number(fields[3]))));
        }
        Ok(None)
    }
}

/// Opens the single component `name` of the directory `dir` without following a symbolic link.
fn open_component(
    dir: &File,
    name: &OsStr,
    flags: libc::c_int,
) -> std::result::Result<File, Errno> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let fd = crate::sys::open_beneath_no_links(dir.as_raw_fd(), &name, flags | libc::O_NOCTTY)?;
    // SAFETY: a new descriptor, owned here.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether overlayfs (mounted with `userxattr`) takes the layer directory `dir` as opaque.
fn is_opaque(dir: &File) -> bool {
    use xattr::FileExt;
    matches!(dir.get_xattr(OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

// ---------------------------------------------------------------------------------------------
// The layout: index, manifest selection, verified blobs.

struct Layout {
    root: PathBuf,
    /// The layout directory, which every file of the layout is opened beneath.
    dir: File,
    index_path: PathBuf,
    index: ImageIndex,
}

impl Layout {
    fn open(root: &Path) -> Result<Layout> {
        let marker = root.join("oci-layout");
        // O_DIRECTORY: whatever else is there (a FIFO) fails without being opened.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => invalid(
                    &marker,
                    "missing oci-layout file (is this an OCI image layout?)",
                ),
                Some(libc::ENOTDIR) => {
                    invalid(root, "not a directory (an OCI image layout is one)")
                }
                _ => Error::io("open the image layout", Some(root.to_path_buf()), e),
            })?;
        let mut layout = Layout {
            root: root.to_path_buf(),
            dir,
            index_path: root.join("index.json"),
            index: ImageIndex::default(),
        };
        let text = layout.read_small(
            "oci-layout",
            "oci-layout file (is this an OCI image layout?)",
        )?;
        let header: OciLayout = serde_json::from_slice(&text)
            .map_err(|e| invalid(&marker, format!("malformed oci-layout: {e}")))?;
        if !header.image_layout_version().starts_with("1.") {
            return Err(invalid(
                &marker,
                format!(
                    "unsupported imageLayoutVersion {:?} (expected 1.x)",
                    header.image_layout_version()
                ),
            ));
        }
        let text = layout.read_small("index.json", "index.json")?;
        layout.index = serde_json::from_slice(&text)
            .map_err(|e| invalid(&layout.index_path, format!("malformed index.json: {e}")))?;
        Ok(layout)
    }

    /// Opens `rel`, a file of the layout, for reading: resolved beneath the layout directory (a
    /// symbolic link leading out of it is refused; one inside it is followed), opened without
    /// blocking (a FIFO would block `open` until a writer came) and accepted only as a regular
    /// file. Returns the file and its size; `missing` makes the error for a file that is not there.
    fn open_file(
        &self,
        rel: &str,
        what: &str,
        missing: impl FnOnce() -> Error,
    ) -> Result<(File, u64)> {
        let path = self.root.join(rel);
        let c_rel = CString::new(rel).map_err(|_| invalid(&path, "a NUL byte in the name"))?;
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let mut attempts = 0;
        let fd = loop {
            match open_beneath(&self.dir, &c_rel, flags) {
                Ok(fd) => break fd,
                // openat2 asks for a retry when a rename raced with the lookup.
                Err(Errno::EAGAIN | Errno::EINTR) if attempts < 16 => attempts += 1,
                Err(Errno::ENOENT) => return Err(missing()),
                Err(Errno::EXDEV) => {
                    return Err(invalid(
                        &path,
                        format!(
                            "the {what} is reached through a symbolic link that leads out of the \
                             layout directory"
                        ),
                    ))
                }
                Err(Errno::ELOOP) => {
                    return Err(invalid(
                        &path,
                        format!("the {what} is reached through a loop of symbolic links"),
                    ))
                }
                Err(e) => return Err(Error::io("open", Some(path), e.into())),
            }
        };
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat", Some(path.clone()), e))?;
        if !meta.is_file() {
            return Err(invalid(
                &path,
                format!(
                    "the {what} is not a regular file but {}",
                    file_kind(meta.mode())
                ),
            ));
        }
        Ok((file, meta.len()))
    }

    /// Reads a small file of the layout itself (`oci-layout`, `index.json`), at most
    /// [`MAX_JSON_SIZE`] bytes; a missing one is an invalid image.
    fn read_small(&self, rel: &str, what: &str) -> Result<Vec<u8>> {
        let path = self.root.join(rel);
        let (file, size) =
            self.open_file(rel, what, || invalid(&path, format!("missing {what}")))?;
        let too_large = || {
            invalid(
                &path,
                format!("{what} is larger than {MAX_JSON_SIZE} bytes"),
            )
        };
        if size > MAX_JSON_SIZE {
            return Err(too_large());
        }
        let bytes = read_at_most(file, MAX_JSON_SIZE + 1, &path)?;
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// Opens the blob `desc` names (`blobs/<alg>/<hex>`, `alg` and `hex` checked by
    /// [`checked_digest`]) after checking that its size is the descriptor's.
    fn open_blob(
        &self,
        alg: &str,
        hex: &str,
        desc: &Descriptor,
        what: &str,
        referrer: &Path,
    ) -> Result<File> {
        let rel = format!("blobs/{alg}/{hex}");
        let path = self.root.join(&rel);
        let (file, size) = self.open_file(&rel, &format!("{what} blob"), || {
            invalid(
                &path,
                format!("missing blob (the {what} named by {})", referrer.display()),
            )
        })?;
        // A blob of the wrong size fails before it is read.
        check_size(&path, desc, size)?;
        Ok(file)
    }

    /// The image manifest `tag` names, resolving a nested image index to this platform's entry.
    fn select(&self, tag: Option<&str>) -> Result<Descriptor> {
        let entries = self.index.manifests();
        let mut tags: Vec<&str> = entries.iter().filter_map(ref_name).collect();
        tags.sort_unstable();
        tags.dedup();
        let available = if tags.is_empty() {
            "the index names no tags".to_owned()
        } else {
            format!("available tags: {}", tags.join(", "))
        };
        let candidates: Vec<&Descriptor> = match tag {
            Some(tag) => {
                let found: Vec<_> = entries
                    .iter()
                    .filter(|d| ref_name(d) == Some(tag))
                    .collect();
                if found.is_empty() {
                    return Err(invalid(
                        &self.index_path,
                        format!("no manifest tagged {tag:?}; {available}"),
                    ));
                }
                found
            }
            None if entries.len() == 1 => vec![&entries[0]],
            None => {
                return Err(invalid(
                    &self.index_path,
                    format!(
                        "the index holds {} manifests and no tag was given; {available}",
                        entries.len()
                    ),
                ))
            }
        };
        let chosen = for_this_platform(&candidates, &self.index_path)?;
        if is_manifest(chosen.media_type()) {
            return Ok(chosen.clone());
        }
        if !is_index(chosen.media_type()) {
            return Err(not_a_manifest(&self.index_path, chosen));
        }
        let (nested, nested_path): (ImageIndex, _) =
            self.read_json(chosen, "image index", &self.index_path)?;
        // Attestations and other artifacts travel in the same index; only images are candidates.
        let images: Vec<&Descriptor> = nested
            .manifests()
            .iter()
            .filter(|d| !is_index(d.media_type()))
            .filter(|d| {
                d.platform()
                    .as_ref()
                    .is_none_or(|p| p.os().to_string() != "unknown")
            })
            .collect();
        if images.is_empty() {
            return Err(invalid(
                &nested_path,
                "the image index lists no image manifests",
            ));
        }
        let chosen = for_this_platform(&images, &nested_path)?;
        if !is_manifest(chosen.media_type()) {
            return Err(not_a_manifest(&nested_path, chosen));
        }
        Ok(chosen.clone())
    }

    /// Reads, verifies and parses the JSON blob `desc` names; `referrer` is the file naming it.
    fn read_json<T: DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &str,
        referrer: &Path,
    ) -> Result<(T, PathBuf)> {
        let (alg, hex) = checked_digest(desc.digest())
            .map_err(|r| invalid(referrer, format!("{what} digest {}: {r}", desc.digest())))?;
        let path = self.root.join("blobs").join(alg).join(hex);
        if desc.size() > MAX_JSON_SIZE {
            return Err(invalid(
                &path,
                format!(
                    "{what} is {} bytes, more than the {MAX_JSON_SIZE} allowed",
                    desc.size()
                ),
            ));
        }
        let file = self.open_blob(alg, hex, desc, what, referrer)?;
        // One byte more than declared tells a file that grew since from one of the right size.
        let bytes = read_at_most(file, desc.size().saturating_add(1), &path)?;
        check_size(&path, desc, bytes.len() as u64)?;
        let mut hasher = Hasher::new(desc.digest().algorithm());
        hasher.update(&bytes);
        check_digest(&path, desc.digest(), hasher.finish())?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&path, format!("malformed {what}: {e}")))?;
        Ok((value, path))
    }
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

/// The one candidate, or the one for linux on this machine's architecture.
fn for_this_platform<'a>(candidates: &[&'a Descriptor], referrer: &Path) -> Result<&'a Descriptor> {
    if let [only] = candidates {
        return Ok(only);
    }
    let arch = Arch::default();
    let matching = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == arch)
    });
    if let Some(found) = matching {
        return Ok(found);
    }
    let platforms: Vec<String> = candidates
        .iter()
        .map(|d| match d.platform() {
            Some(p) => format!("{}/{}", p.os(), p.architecture()),
            None => format!("{} (no platform)", d.digest()),
        })
        .collect();
    Err(invalid(
        referrer,
        format!(
            "no manifest for linux/{arch}; available: {}",
            platforms.join(", ")
        ),
    ))
}

fn not_a_manifest(referrer: &Path, desc: &Descriptor) -> Error {
    invalid(
        referrer,
        format!(
            "entry {} has media type {}; expected an image manifest or, one level deep, an image index",
            desc.digest(),
            desc.media_type()
        ),
    )
}

fn is_manifest(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageManifest)
        || matches!(m, MediaType::Other(s) if s == DOCKER_MANIFEST)
}

fn is_index(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex)
        || matches!(m, MediaType::Other(s) if s == DOCKER_MANIFEST_LIST)
}

fn is_config(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageConfig) || matches!(m, MediaType::Other(s) if s == DOCKER_CONFIG)
}

/// openat2 with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: `path` is resolved beneath `dir`,
/// symbolic links included (an absolute one, or one whose `..` climbs above `dir`, fails with
/// EXDEV), and the descriptor is close-on-exec.
fn open_beneath(
    dir: &File,
    path: &CStr,
    flags: libc::c_int,
) -> std::result::Result<OwnedFd, Errno> {
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_BENEATH: u64 = 0x08;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `dir` is an open descriptor, `path` is NUL-terminated, and `how` is a valid
    // `struct open_how` of the size passed; all outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(ret)?;
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: openat2 returned a new descriptor, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads at most `limit` bytes of `file`.
fn read_at_most(file: File, limit: u64, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", Some(path.to_path_buf()), e))?;
    Ok(bytes)
}

/// What kind of file a mode is, for messages: "a directory", "a FIFO", ….
fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "of an unknown type",
    }
}

/// The digest's algorithm directory and hex, checked so that both are safe as path components.
fn checked_digest(digest: &Digest) -> std::result::Result<(&'static str, &str), String> {
    let alg = match digest.algorithm() {
        DigestAlgorithm::Sha256 => "sha256",
        DigestAlgorithm::Sha512 => "sha512",
        other => return Err(format!("unsupported digest algorithm {other}")),
    };
    let hex = digest.digest();
    let want = if alg == "sha256" { 64 } else { 128 };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("not {want} lowercase hex digits"));
    }
    Ok((alg, hex))
}

fn check_size(path: &Path, desc: &Descriptor, actual: u64) -> Result<()> {
    if actual != desc.size() {
        return Err(invalid(
            path,
            format!(
                "size mismatch: the descriptor says {} bytes, the blob has {actual}",
                desc.size()
            ),
        ));
    }
    Ok(())
}

fn check_digest(path: &Path, expected: &Digest, got: String) -> Result<()> {
    if got != expected.as_ref() {
        return Err(invalid(
            path,
            format!("digest mismatch: expected {expected}, got {got}"),
        ));
    }
    Ok(())
}

/// Streams a blob through its digest, checking size and digest against `desc`: at most one byte
/// more than the descriptor's size is read.
fn verify_file(file: File, path: &Path, desc: &Descriptor) -> Result<()> {
    let mut file = file.take(desc.size().saturating_add(1));
    let mut hasher = Hasher::new(desc.digest().algorithm());
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", Some(path.to_path_buf()), e)),
        }
    }
    check_size(path, desc, total)?;
    check_digest(path, desc.digest(), hasher.finish())
}

/// SHA-256 or SHA-512, the algorithms [`checked_digest`] admits.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(alg: &DigestAlgorithm) -> Hasher {
        match alg {
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest in OCI form, `sha256:<hex>`.
    fn finish(self) -> String {
        let (alg, bytes) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let mut out = String::with_capacity(alg.len() + 1 + 2 * bytes.len());
        out.push_str(alg);
        out.push(':');
        for b in bytes {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

/// `store/<alg>`, created private to the caller, after checking nobody else can write to it.
fn store_dir(store: &Path, alg: &str) -> Result<PathBuf> {
    if !store.is_absolute() {
        return Err(Error::invalid(
            "filesystem.root.overlay.image.store",
            format!("must be an absolute path: {}", store.display()),
        ));
    }
    let dir = store.join(alg);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| Error::Io {
            op: "create the layer store",
            path: Some(dir.clone()),
            source,
            remedy: Some(
                "give a store directory this user may create (--image-store DIR, or \
                 RSANDBOX_IMAGE_STORE)"
                    .into(),
            ),
        })?;
    check_private(&dir)?;
    // Nobody else may even reach the layers: a world-writable directory of an image (its /tmp)
    // would otherwise take files from any user of the host, into every later sandbox.
    let meta = fs::metadata(&dir).map_err(|e| Error::io("stat", Some(dir.clone()), e))?;
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            Error::io(
                "make the layer store private (chmod 700)",
                Some(dir.clone()),
                e,
            )
        })?;
    }
    Ok(dir)
}

/// Refuses a store that a user other than the caller (or root) could plant layers in: the store
/// and every directory above it must be owned by the caller or root, and none may be writable by
/// others, except sticky directories above the store such as /tmp.
fn check_private(dir: &Path) -> Result<()> {
    match store_problem(dir)? {
        None => Ok(()),
        Some(problem) => Err(Error::io(
            "check that the layer store is private",
            Some(dir.to_path_buf()),
            io::Error::new(io::ErrorKind::PermissionDenied, problem),
        )),
    }
}

/// Why a layer store at `dir` would not be private (see `check_private`), or None when it would
/// be. `dir` need not exist yet: the directories that do are judged, those still to be created
/// would be the caller's own, mode 0700.
pub(crate) fn store_problem(dir: &Path) -> Result<Option<String>> {
    let mut existing = dir;
    let mut missing = 0;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
        missing += 1;
    }
    let canonical = fs::canonicalize(existing)
        .map_err(|e| Error::io("resolve the layer store", Some(existing.to_path_buf()), e))?;
    let me = nix::unistd::geteuid().as_raw();
    for (depth, ancestor) in canonical.ancestors().enumerate() {
        let meta = fs::metadata(ancestor)
            .map_err(|e| Error::io("stat", Some(ancestor.to_path_buf()), e))?;
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let problem = if meta.uid() != me && meta.uid() != 0 {
            format!("is owned by uid {}", meta.uid())
        } else if writable_by_others && (depth + missing == 0 || !sticky) {
            format!("is writable by others (mode {:o})", meta.mode() & 0o7777)
        } else {
            continue;
        };
        return Ok(Some(format!(
            "{} {problem}, so another user could plant layers; use a store only uid {me} can write to",
            ancestor.display()
        )));
    }
    Ok(None)
}

/// Whether a complete layer directory is present at `target`.
fn is_present(target: &Path) -> Result<bool> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(invalid(
            target,
            "the store holds something other than a directory under this layer's digest",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("stat", Some(target.to_path_buf()), e)),
    }
}

struct LayerPlan<'a> {
    index: usize,
    desc: &'a Descriptor,
    blob: PathBuf,
    compression: Compression,
    diff_id: Digest,
    /// `store/<alg>`.
    dir: PathBuf,
    alg: &'static str,
    hex: String,
    /// `store/<alg>/<hex>`.
    target: PathBuf,
    /// `store/<alg>/<hex>.skipped`.
    notes: PathBuf,
}

impl LayerPlan<'_> {
    /// Opens the layer's blob, checking its size.
    fn open(&self, layout: &Layout, manifest_path: &Path) -> Result<File> {
        let what = format!("layer {}", self.index);
        layout.open_blob(self.alg, &self.hex, self.desc, &what, manifest_path)
    }

    /// Unpacks the layer's blob, `file`, into a private temporary directory and renames that
    /// into place.
    fn unpack(&self, file: File) -> Result<()> {
        let tmp = TempTree::create(&self.dir, &self.hex)?;
        let skipped = extract(self, file, tmp.path())?;
        // The notes go first: whoever finds the layer directory finds its notes too.
        if !skipped.is_empty() {
            let notes_tmp = tmp.path().with_extension("skipped");
            let text: String = skipped.iter().map(|s| format!("{s}\n")).collect();
            fs::write(&notes_tmp, text)
                .and_then(|()| fs::rename(&notes_tmp, &self.notes))
                .map_err(|e| {
                    let _ = fs::remove_file(&notes_tmp);
                    Error::io("write", Some(self.notes.clone()), e)
                })?;
        }
        match rename_noreplace(tmp.path(), &self.target) {
            Ok(()) => {
                tmp.keep();
                Ok(())
            }
            // Another process unpacked the same layer first; its copy is as good as ours.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(()),
            Err(errno) => Err(Error::io(
                "rename the unpacked layer into the store",
                Some(self.target.clone()),
                io::Error::from_raw_os_error(errno as i32),
            )),
        }
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> std::result::Result<(), Errno> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // renameat2 by number: not every C library wraps it.
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        // File systems without RENAME_NOREPLACE: a plain rename fails on a non-empty target.
        Err(Errno::EINVAL) => {
            fs::rename(from, to).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        }
        Err(e) => Err(e),
    }
}

/// A temporary directory in the store, removed on drop unless kept.
struct TempTree(Option<PathBuf>);

impl TempTree {
    fn create(dir: &Path, hex: &str) -> Result<TempTree> {
        use std::hash::{BuildHasher, Hasher as _};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            let path = dir.join(format!(
                ".tmp-{hex}-{}-{:016x}",
                std::process::id(),
                h.finish()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempTree(Some(path))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        "create a temporary layer directory",
                        Some(path),
                        e,
                    ))
                }
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_tree(&path);
        }
    }
}

/// Removes a tree best-effort, first making its directories writable if a plain removal fails
/// (a layer may hold read-only directories).
fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = fs::set_permissions(
            &dir,
            fs::Permissions::from_mode(meta.mode() & 0o7777 | 0o700),
        );
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    let _ = fs::remove_dir_all(path);
}

// ---------------------------------------------------------------------------------------------
// Extraction.

#[derive(Clone, Copy, Debug)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    fn of(media: &MediaType) -> Option<Compression> {
        match media {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => {
                Some(Compression::None)
            }
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Compression::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Compression::Zstd)
            }
            MediaType::Other(s) => match s.as_str() {
                DOCKER_LAYER_TAR => Some(Compression::None),
                DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP => Some(Compression::Gzip),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How far reading the layer stream got, to tell a corrupt layer from a failing file system.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    Ended,
    Failed,
}

/// Hashes the uncompressed stream (for `rootfs.diff_ids`) and records how reading went.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    state: Rc<Cell<ReadState>>,
    counts: Rc<StreamCounts>,
}

/// What the extraction loop and the reader share about the uncompressed stream.
#[derive(Default)]
struct StreamCounts {
    /// Bytes read so far.
    total: Cell<u64>,
    /// Bytes read since the tar reader was asked for the next entry, while it is.
    between_entries: Cell<u64>,
    /// Whether the tar reader is looking for the next entry (not unpacking one).
    seeking_entry: Cell<bool>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let counts = &self.counts;
        if counts.seeking_entry.get() && counts.between_entries.get() > MAX_BYTES_BETWEEN_ENTRIES {
            self.state.set(ReadState::Failed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than {MAX_BYTES_BETWEEN_ENTRIES} bytes of headers (long names, PAX \
                     records) or skipped data between two entries"
                ),
            ));
        }
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.set(ReadState::Ended);
                Ok(0)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                counts.total.set(counts.total.get() + n as u64);
                if counts.seeking_entry.get() {
                    counts
                        .between_entries
                        .set(counts.between_entries.get() + n as u64);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.set(ReadState::Failed);
                }
                Err(e)
            }
        }
    }
}

/// Extracts the layer `plan` describes into `root`; returns the entries it had to skip.
fn extract(plan: &LayerPlan<'_>, file: File, root: &Path) -> Result<Vec<String>> {
    let blob = &plan.blob;
    // No more than the verified size is read, whatever the file has become since.
    let reader = BufReader::new(file.take(plan.desc.size()));
    let decompressed: Box<dyn Read> = match plan.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| Error::io("zstd decoder", Some(blob.clone()), e))?,
        ),
    };
    let state = Rc::new(Cell::new(ReadState::Reading));
    let counts = Rc::new(StreamCounts::default());
    let mut archive = tar::Archive::new(HashingReader {
        inner: decompressed,
        hasher: Hasher::new(plan.diff_id.algorithm()),
        state: Rc::clone(&state),
        counts: Rc::clone(&counts),
    });
    // Permission bits, without set-user-ID and set-group-ID: inert in a sandbox (no_new_privs),
    // they would work for anyone on the host who could reach the store.
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);

    let corrupt = |e: &dyn std::fmt::Display| {
        invalid(
            blob,
            format!(
                "corrupt or truncated {} layer: {e}",
                plan.compression.name()
            ),
        )
    };
    let root_canonical =
        fs::canonicalize(root).map_err(|e| Error::io("resolve", Some(root.to_path_buf()), e))?;
    let mut x = Extractor {
        root,
        root_canonical,
        blob,
        dirs: BTreeMap::new(),
        skipped: Vec::new(),
        skipped_paths: BTreeSet::new(),
        stream: Rc::clone(&state),
        compression: plan.compression,
    };
    x.dirs.insert(
        root.to_path_buf(),
        DirMeta {
            mode: 0o755,
            mtime: None,
        },
    );
    let mut entries = archive.entries().map_err(|e| corrupt(&root_cause(&e)))?;
    let mut count = 0u64;
    let mut next_check = (SPACE_CHECK_BYTES, SPACE_CHECK_ENTRIES);
    loop {
        counts.between_entries.set(0);
        counts.seeking_entry.set(true);
        let next = entries.next();
        counts.seeking_entry.set(false);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|e| corrupt(&root_cause(&e)))?;
        count += 1;
        if count > MAX_LAYER_ENTRIES {
            return Err(invalid(
                blob,
                format!(
                    "the layer holds more than {MAX_LAYER_ENTRIES} entries, the most a layer may"
                ),
            ));
        }
        if counts.total.get() >= next_check.0 || count >= next_check.1 {
            next_check = (
                counts.total.get() + SPACE_CHECK_BYTES,
                count + SPACE_CHECK_ENTRIES,
            );
            check_store_space(plan, root, counts.total.get(), count)?;
        }
        let name = entry.path_bytes().into_owned();
        x.entry(&mut entry).map_err(|e| match e {
            // A write that failed because the stream broke is the layer's fault.
            Error::Io { source, .. } if state.get() != ReadState::Reading => corrupt(&format!(
                "in entry {:?}: {}",
                String::from_utf8_lossy(&name),
                root_cause(&source)
            )),
            e => e,
        })?;
    }
    // Read to the very end (tar's trailing blocks and padding) so the digest covers everything.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt(&root_cause(&e)))?;
    let got = rest.hasher.finish();
    if got != plan.diff_id.as_ref() {
        return Err(invalid(
            blob,
            format!(
                "uncompressed digest mismatch: rootfs.diff_ids[{}] expects {}, got {got}",
                plan.index, plan.diff_id
            ),
        ));
    }
    x.finish_dirs()?;
    Ok(x.skipped)
}

/// Fails when the store's file system has come down to its reserve (see
/// [`STORE_RESERVE_PERCENT`]) while `plan`'s layer is unpacked into `root`.
fn check_store_space(plan: &LayerPlan<'_>, root: &Path, unpacked: u64, entries: u64) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(root)
        .map_err(|e| Error::io("statvfs", Some(root.to_path_buf()), e.into()))?;
    let unit = (stat.fragment_size() as u64).max(1);
    let space = Space {
        total_bytes: (stat.blocks() as u64).saturating_mul(unit),
        free_bytes: (stat.blocks_available() as u64).saturating_mul(unit),
        total_inodes: (stat.files() as u64),
        free_inodes: (stat.files_available() as u64),
    };
    let Some(problem) = space.problem() else {
        return Ok(());
    };
    Err(Error::Io {
        op: "unpack an image layer",
        path: Some(plan.dir.clone()),
        source: io::Error::from_raw_os_error(libc::ENOSPC),
        remedy: Some(format!(
            "layer {} ({}) stopped after {unpacked} bytes in {entries} entries: {problem}, the \
             reserve kept for the rest of the host; free space, or give a store on a larger file \
             system (--image-store DIR)",
            plan.desc.digest(),
            plan.blob.display()
        )),
    })
}

/// A file system's size and what is free of it (for unprivileged users).
struct Space {
    total_bytes: u64,
    free_bytes: u64,
    total_inodes: u64,
    free_inodes: u64,
}

impl Space {
    /// What is short of the reserve, if anything.
    fn problem(&self) -> Option<String> {
        let reserve = |total: u64, max: u64| (total / 100 * STORE_RESERVE_PERCENT).min(max);
        let bytes = reserve(self.total_bytes, STORE_RESERVE_MAX_BYTES);
        if self.free_bytes < bytes {
            return Some(format!(
                "the store's file system has {} bytes free, less than {bytes}",
                self.free_bytes
            ));
        }
        // File systems without an inode count (btrfs) report 0 of 0.
        let inodes = reserve(self.total_inodes, STORE_RESERVE_MAX_INODES);
        if self.total_inodes > 0 && self.free_inodes < inodes {
            return Some(format!(
                "the store's file system has {} inodes free, less than {inodes}",
                self.free_inodes
            ));
        }
        None
    }
}

/// The innermost error's message: the tar crate wraps decoder errors in "failed to unpack `…`".
fn root_cause(e: &io::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Option<i64>,
}

struct Extractor<'a> {
    root: &'a Path,
    root_canonical: PathBuf,
    blob: &'a Path,
    /// Directories whose mode and mtime are set once everything is in them: until then they stay
    /// writable, and adding entries would change their mtime.
    dirs: BTreeMap<PathBuf, DirMeta>,
    skipped: Vec<String>,
    skipped_paths: BTreeSet<PathBuf>,
    /// How reading the layer's stream is going: a write that failed because it broke is the
    /// layer's corruption.
    stream: Rc<Cell<ReadState>>,
    compression: Compression,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let name = entry
            .path()
            .map_err(|e| invalid(self.blob, format!("entry with an unreadable name: {e}")))?
            .into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let Some(rel) = self.relative(&name)? else {
            // The layer's root itself ("./").
            if kind.is_dir() {
                let meta = self.meta_of(header)?;
                self.dirs.insert(self.root.to_path_buf(), meta);
            }
            return Ok(());
        };
        let file_name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if file_name == OPAQUE_MARKER {
            return self.opaque(rel.parent().unwrap_or(Path::new("")));
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(invalid(
                    self.blob,
                    format!("entry {name:?} is not a valid whiteout"),
                ));
            }
            return self.whiteout(&rel.with_file_name(OsStr::from_bytes(hidden)));
        }
        match kind {
            tar::EntryType::Directory => {
                let meta = self.meta_of(header)?;
                self.dir(&rel, meta)
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Symlink => self.with_tar(entry, &rel),
            tar::EntryType::Link => self.hard_link(entry, &rel),
            tar::EntryType::Char
                if header.device_major().ok().flatten() == Some(0)
                    && header.device_minor().ok().flatten() == Some(0) =>
            {
                // Already in overlayfs form.
                self.whiteout(&rel)
            }
            tar::EntryType::Char => self.skip(&rel, "character device"),
            tar::EntryType::Block => self.skip(&rel, "block device"),
            tar::EntryType::Fifo => self.skip(&rel, "fifo"),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => Ok(()),
            other => self.skip(
                &rel,
                &format!("tar entry type {:?}", other.as_byte() as char),
            ),
        }
    }

    /// The entry's path relative to the layer root; `None` for the root itself.
    fn relative(&self, name: &Path) -> Result<Option<PathBuf>> {
        let mut rel = PathBuf::new();
        for component in name.components() {
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    return Err(invalid(
                        self.blob,
                        format!("entry {name:?} has a `..` component and would leave the layer"),
                    ))
                }
                Component::Normal(part) => rel.push(part),
            }
        }
        Ok((!rel.as_os_str().is_empty()).then_some(rel))
    }

    fn meta_of(&self, header: &tar::Header) -> Result<DirMeta> {
        let mode = header
            .mode()
            .map_err(|e| invalid(self.blob, format!("bad mode: {e}")))?;
        Ok(DirMeta {
            // The sticky bit stays (an image's /tmp needs it); set-group-ID does not.
            mode: mode & 0o1777,
            mtime: header.mtime().ok().and_then(|t| i64::try_from(t).ok()),
        })
    }

    /// Creates the missing parents of `rel` and returns its absolute path. Parents that are
    /// symbolic links are followed only when they resolve to a directory inside the layer.
    fn prepare_parent(&mut self, rel: &Path) -> Result<PathBuf> {
        let mut dir = self.root.to_path_buf();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let inside = fs::canonicalize(&dir)
                        .is_ok_and(|c| c.starts_with(&self.root_canonical) && c.is_dir());
                    if !inside {
                        return Err(invalid(
                            self.blob,
                            format!(
                                "entry {rel:?} goes through the symbolic link {:?}, which leads out of the layer",
                                dir.strip_prefix(self.root).unwrap_or(&dir)
                            ),
                        ));
                    }
                }
                Ok(_) => {
                    return Err(invalid(
                        self.blob,
                        format!(
                            "entry {rel:?}: {:?} is not a directory",
                            dir.strip_prefix(self.root).unwrap_or(&dir)
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    mkdir_owner_writable(&dir)?;
                    self.dirs.insert(
                        dir.clone(),
                        DirMeta {
                            mode: 0o755,
                            mtime: None,
                        },
                    );
                }
                Err(e) => return Err(Error::io("stat", Some(dir.clone()), e)),
            }
        }
        Ok(self.root.join(rel))
    }

    fn dir(&mut self, rel: &Path, meta: DirMeta) -> Result<()> {
        let path = self.prepare_parent(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                // A later entry replaces an earlier one of the same name.
                fs::remove_file(&path).map_err(|e| self.entry_error("unlink", rel, &path, &e))?;
                mkdir_owner_writable(&path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir_owner_writable(&path)?,
            Err(e) => return Err(Error::io("stat", Some(path), e)),
        }
        self.dirs.insert(path, meta);
        Ok(())
    }

    fn with_tar<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<()> {
        let path = self.prepare_parent(rel)?;
        self.remove_dir_at(rel, &path)?;
        // tar's unpack_in checks again that the parent resolves inside the root; it writes files
        // with O_EXCL after unlinking what was there, so it never writes through a symlink.
        match entry.unpack_in(self.root) {
            Ok(true) => Ok(()),
            Ok(false) => Err(invalid(
                self.blob,
                format!("entry {rel:?} was refused as leaving the layer"),
            )),
            Err(e) => Err(self.entry_error("unpack", rel, &path, &e)),
        }
    }

    /// A directory at `path` (an earlier entry's, or a parent made for one) goes with all it
    /// holds: the entry for `rel` that replaces it is not a directory. Nothing is followed: the
    /// tree is this layer's own, under construction.
    fn remove_dir_at(&mut self, rel: &Path, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
        remove_tree(path);
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.entry_error("stat", rel, path, &e)),
            Ok(_) => {
                let e = io::Error::from_raw_os_error(libc::ENOTEMPTY);
                return Err(self.entry_error("remove the directory it replaces", rel, path, &e));
            }
        }
        // The tree's recorded directories sort together, right from `path` on.
        let gone: Vec<PathBuf> = self
            .dirs
            .range(path.to_path_buf()..)
            .map(|(dir, _)| dir)
            .take_while(|dir| dir.starts_with(path))
            .cloned()
            .collect();
        for dir in gone {
            self.dirs.remove(&dir);
        }
        Ok(())
    }

    /// The error for an entry that could not be written: the store's file system failing (no
    /// space, I/O errors) is an I/O error at `path`, anything else the layer's fault, named by
    /// its blob and entry; the errno is kept either way.
    fn entry_error(&self, op: &'static str, rel: &Path, path: &Path, e: &io::Error) -> Error {
        if self.stream.get() != ReadState::Reading {
            return invalid(
                self.blob,
                format!(
                    "corrupt or truncated {} layer: in entry {rel:?}: {}",
                    self.compression.name(),
                    root_cause(e)
                ),
            );
        }
        let errno = os_error(e);
        let host = matches!(
            errno,
            Some(
                libc::ENOSPC
                    | libc::EDQUOT
                    | libc::EIO
                    | libc::EROFS
                    | libc::ENOMEM
                    | libc::EMFILE
                    | libc::ENFILE
            )
        );
        match errno {
            Some(errno) if host => Error::io(
                op,
                Some(path.to_path_buf()),
                io::Error::from_raw_os_error(errno),
            ),
            _ => invalid(
                self.blob,
                format!("entry {rel:?} cannot be unpacked: {op}: {}", root_cause(e)),
            ),
        }
    }

    fn hard_link<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<()> {
        let target_name = match entry.link_name() {
            Ok(Some(name)) => name.into_owned(),
            Ok(None) => {
                return Err(invalid(
                    self.blob,
                    format!("hard link {rel:?} has no target"),
                ))
            }
            Err(e) => return Err(invalid(self.blob, format!("hard link {rel:?}: {e}"))),
        };
        let Some(target_rel) = self.relative(&target_name)? else {
            return Err(invalid(
                self.blob,
                format!("hard link {rel:?} points at the layer root"),
            ));
        };
        if self.skipped_paths.contains(&target_rel) {
            return self.skip(rel, "hard link to a skipped entry");
        }
        let path = self.prepare_parent(rel)?;
        // link(2) does not follow the target's last component, so its parent must stay inside.
        let target = self.root.join(&target_rel);
        let parent_inside = target
            .parent()
            .and_then(|p| fs::canonicalize(p).ok())
            .is_some_and(|p| p.starts_with(&self.root_canonical));
        if !parent_inside {
            return Err(invalid(
                self.blob,
                format!("hard link {rel:?} points at {target_name:?}, outside the layer"),
            ));
        }
        self.remove_dir_at(rel, &path)?;
        remove_non_dir(&path).map_err(|e| self.entry_error("unlink", rel, &path, &e))?;
        fs::hard_link(&target, &path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => invalid(
                self.blob,
                format!(
                    "hard link {rel:?} points at {target_name:?}, which the layer does not hold"
                ),
            ),
            _ => self.entry_error("link", rel, &path, &e),
        })
    }

    /// `.wh.NAME`: whatever this layer has at NAME goes, and a 0/0 character device hides the
    /// lower layers' NAME.
    fn whiteout(&mut self, rel: &Path) -> Result<()> {
        let path = self.prepare_parent(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => self.remove_dir_at(rel, &path)?,
            Ok(_) => {
                fs::remove_file(&path).map_err(|e| self.entry_error("unlink", rel, &path, &e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", Some(path), e)),
        }
        nix::sys::stat::mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(|errno| {
            Error::io(
                "mknod(S_IFCHR, 0/0) for an overlayfs whiteout (unprivileged since Linux 5.8)",
                Some(path),
                io::Error::from_raw_os_error(errno as i32),
            )
        })
    }

    /// `DIR/.wh..wh..opq`: DIR hides the lower layers' DIR entirely.
    fn opaque(&mut self, dir_rel: &Path) -> Result<()> {
        let dir = if dir_rel.as_os_str().is_empty() {
            self.root.to_path_buf()
        } else {
            let path = self.prepare_parent(&dir_rel.join(".wh..wh..opq"))?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            if !dir.is_dir() {
                return Err(invalid(
                    self.blob,
                    format!("opaque marker in {dir_rel:?}, which is not a directory"),
                ));
            }
            dir
        };
        xattr::set(&dir, OPAQUE_XATTR, b"y")
            .map_err(|e| Error::io("setxattr user.overlay.opaque", Some(dir), e))
    }

    fn skip(&mut self, rel: &Path, what: &str) -> Result<()> {
        self.skipped.push(format!("/{} ({what})", rel.display()));
        self.skipped_paths.insert(rel.to_path_buf());
        Ok(())
    }

    /// Sets the recorded directory modes and mtimes, deepest first. Each directory is opened
    /// beneath the layer's root without following any symbolic link: a later entry of the
    /// layer may have replaced a directory on the way with a link (to anywhere), and what is
    /// then at the path is not the directory the layer made.
    fn finish_dirs(&mut self) -> Result<()> {
        let root = File::open(self.root)
            .map_err(|e| Error::io("open the layer's root", Some(self.root.to_path_buf()), e))?;
        let mut dirs: Vec<(&PathBuf, &DirMeta)> = self.dirs.iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, meta) in dirs {
            let Ok(rel) = path.strip_prefix(self.root) else {
                continue;
            };
            // The layer's root itself ("./" in the tar) is "." beneath itself.
            let rel = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            let Ok(rel) = CString::new(rel.as_os_str().as_bytes()) else {
                continue;
            };
            let opened = crate::sys::open_beneath_no_links(
                root.as_raw_fd(),
                &rel,
                libc::O_RDONLY | libc::O_DIRECTORY,
            );
            let dir = match opened {
                // SAFETY: a new descriptor, owned here.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                // Replaced since (by a whiteout, a file or a link, on the way or at the end).
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => continue,
                Err(e) => {
                    return Err(Error::io(
                        "open a layer directory",
                        Some(path.clone()),
                        e.into(),
                    ))
                }
            };
            if let Some(mtime) = meta.mtime {
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::futimens(&dir, &t, &t)
                    .map_err(|e| Error::io("futimens", Some(path.clone()), e.into()))?;
            }
            nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(meta.mode))
                .map_err(|e| Error::io("fchmod", Some(path.clone()), e.into()))?;
        }
        Ok(())
    }
}

/// Creates a directory that stays writable by its owner (whatever the umask) until
/// [`Extractor::finish_dirs`] gives it its final mode.
fn mkdir_owner_writable(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
        .map_err(|e| Error::io("mkdir", Some(path.to_path_buf()), e))
}

fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path),
        _ => Ok(()),
    }
}

/// The errno of the innermost `io::Error` in `e`'s chain (the tar crate wraps the OS error).
fn os_error(e: &io::Error) -> Option<i32> {
    if let Some(errno) = e.raw_os_error() {
        return Some(errno);
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e.get_ref() {
        Some(inner) => Some(inner),
        None => None,
    };
    while let Some(err) = next {
        if let Some(errno) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(errno);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_its_reserve() {
        const GIB: u64 = 1 << 30;
        let space = |total_bytes, free_bytes, total_inodes, free_inodes| Space {
            total_bytes,
            free_bytes,
            total_inodes,
            free_inodes,
        };
        // 5% of a small disk, at most 2 GiB of a large one.
        assert!(space(20 * GIB, GIB + 1, 0, 0).problem().is_none());
        let short = space(20 * GIB, GIB - 4096, 0, 0).problem().unwrap();
        assert!(short.contains("bytes free, less than"), "{short}");
        assert!(space(1000 * GIB, 2 * GIB, 0, 0).problem().is_none());
        assert!(space(1000 * GIB, 2 * GIB - 1, 0, 0).problem().is_some());
        // Inodes likewise, unless the file system counts none.
        assert!(space(GIB, GIB, 1_000_000, 50_000).problem().is_none());
        let short = space(GIB, GIB, 1_000_000, 49_999).problem().unwrap();
        assert!(short.contains("inodes free"), "{short}");
        assert!(space(GIB, GIB, 10_000_000, 100_000).problem().is_none());
        assert!(space(GIB, GIB, 0, 0).problem().is_none());
    }
}
