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
//! permission bits, including set-id bits, and modification times are kept. Device nodes and FIFOs
//! cannot be made without privilege and are skipped (and listed), except the overlayfs whiteout
//! device 0/0. OCI whiteouts become their overlayfs form: `.wh.NAME` becomes a character device 0/0
//! named `NAME` (which Linux 5.8 and later let unprivileged users create) and `.wh..wh..opq` sets
//! `user.overlay.opaque=y` on its directory, the form overlayfs reads when mounted with `userxattr`
//! in a user namespace.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
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
/// # Errors
/// [`Error::InvalidImage`] naming the file or blob at fault when the layout is missing a file, holds
/// malformed JSON, has no manifest for `tag` (the message lists the tags there are), a blob fails
/// verification, a layer has an unsupported media type or is corrupt, or an entry tries to leave
/// its layer. [`Error::Io`] for failures of the store's file system (including a whiteout device
/// that the kernel refuses to create), or a store that other users could write to.
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
            hex: hex.to_owned(),
        });
    }

    // Verify every blob that will be read before unpacking any, so a bad image leaves no trace.
    let verify = |plan: &LayerPlan<'_>| {
        let what = format!("layer {}", plan.index);
        verify_file(&plan.blob, plan.desc, &what, &manifest_path)
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
            plan.unpack()?;
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
// The layout: index, manifest selection, verified blobs.

struct Layout {
    root: PathBuf,
    index_path: PathBuf,
    index: ImageIndex,
}

impl Layout {
    fn open(root: &Path) -> Result<Layout> {
        let marker = root.join("oci-layout");
        let text = read_small(&marker, "oci-layout file (is this an OCI image layout?)")?;
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
        let index_path = root.join("index.json");
        let text = read_small(&index_path, "index.json")?;
        let index = serde_json::from_slice(&text)
            .map_err(|e| invalid(&index_path, format!("malformed index.json: {e}")))?;
        Ok(Layout {
            root: root.to_path_buf(),
            index_path,
            index,
        })
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
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => return Err(blob_open_error(&path, what, referrer, e)),
        };
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

/// Reads a small file of the layout itself; a missing one is an invalid image.
fn read_small(path: &Path, what: &str) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => invalid(path, format!("missing {what}")),
        _ => Error::io("open", Some(path.to_path_buf()), e),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", Some(path.to_path_buf()), e))?;
    if bytes.len() as u64 > MAX_JSON_SIZE {
        return Err(invalid(
            path,
            format!("{what} is larger than {MAX_JSON_SIZE} bytes"),
        ));
    }
    Ok(bytes)
}

fn blob_open_error(path: &Path, what: &str, referrer: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => invalid(
            path,
            format!("missing blob (the {what} named by {})", referrer.display()),
        ),
        _ => Error::io("read", Some(path.to_path_buf()), e),
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

/// Streams a blob through its digest, checking size and digest against `desc`.
fn verify_file(path: &Path, desc: &Descriptor, what: &str, referrer: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(|e| blob_open_error(path, what, referrer, e))?;
    // A blob of the wrong size fails before it is read.
    if let Ok(meta) = file.metadata() {
        check_size(path, desc, meta.len())?;
    }
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
    hex: String,
    /// `store/<alg>/<hex>`.
    target: PathBuf,
    /// `store/<alg>/<hex>.skipped`.
    notes: PathBuf,
}

impl LayerPlan<'_> {
    /// Unpacks into a private temporary directory and renames it into place.
    fn unpack(&self) -> Result<()> {
        let tmp = TempTree::create(&self.dir, &self.hex)?;
        let skipped = extract(self, tmp.path())?;
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
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.set(ReadState::Ended);
                Ok(0)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
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
fn extract(plan: &LayerPlan<'_>, root: &Path) -> Result<Vec<String>> {
    let blob = &plan.blob;
    let file = File::open(blob).map_err(|e| Error::io("open", Some(blob.clone()), e))?;
    let reader = BufReader::new(file);
    let decompressed: Box<dyn Read> = match plan.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| Error::io("zstd decoder", Some(blob.clone()), e))?,
        ),
    };
    let state = Rc::new(Cell::new(ReadState::Reading));
    let mut archive = tar::Archive::new(HashingReader {
        inner: decompressed,
        hasher: Hasher::new(plan.diff_id.algorithm()),
        state: Rc::clone(&state),
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
    };
    x.dirs.insert(
        root.to_path_buf(),
        DirMeta {
            mode: 0o755,
            mtime: None,
        },
    );
    for entry in archive.entries().map_err(|e| corrupt(&root_cause(&e)))? {
        let mut entry = entry.map_err(|e| corrupt(&root_cause(&e)))?;
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
                fs::remove_file(&path).map_err(|e| Error::io("unlink", Some(path.clone()), e))?;
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
        // tar's unpack_in checks again that the parent resolves inside the root; it writes files
        // with O_EXCL after unlinking what was there, so it never writes through a symlink.
        match entry.unpack_in(self.root) {
            Ok(true) => Ok(()),
            Ok(false) => Err(invalid(
                self.blob,
                format!("entry {rel:?} was refused as leaving the layer"),
            )),
            Err(e) => Err(Error::io("unpack", Some(path), e)),
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
        remove_non_dir(&path)?;
        fs::hard_link(&target, &path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => invalid(
                self.blob,
                format!(
                    "hard link {rel:?} points at {target_name:?}, which the layer does not hold"
                ),
            ),
            _ => Error::io("link", Some(path), e),
        })
    }

    /// `.wh.NAME`: whatever this layer has at NAME goes, and a 0/0 character device hides the
    /// lower layers' NAME.
    fn whiteout(&mut self, rel: &Path) -> Result<()> {
        let path = self.prepare_parent(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                remove_tree(&path);
                if path.exists() {
                    return Err(Error::io(
                        "remove",
                        Some(path),
                        io::Error::from_raw_os_error(libc::ENOTEMPTY),
                    ));
                }
            }
            Ok(_) => {
                fs::remove_file(&path).map_err(|e| Error::io("unlink", Some(path.clone()), e))?
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

fn remove_non_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => {
            fs::remove_file(path).map_err(|e| Error::io("unlink", Some(path.to_path_buf()), e))
        }
        _ => Ok(()),
    }
}
