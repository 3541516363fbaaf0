//! Builds OCI image layouts from entries described in the test, with real digests, so that the
//! image tests need no registry and no tool besides this crate's dependencies.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::Digest as _;

/// The mtime every entry gets.
pub const MTIME: u64 = 1_600_000_000;

/// One entry of a layer.
#[derive(Clone, Debug)]
pub enum Item {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    /// Hides `path` of the layers below (`dir/.wh.name`).
    Whiteout(String),
    /// Makes the directory opaque (`dir/.wh..wh..opq`).
    Opaque(String),
    Fifo(String),
    /// A character device `major:minor`.
    Char {
        path: String,
        major: u32,
        minor: u32,
    },
    /// A regular file whose raw name bypasses the tar crate's path checks (`../escape`).
    RawFile {
        name: String,
        data: Vec<u8>,
    },
}

pub fn file(path: &str, data: impl AsRef<[u8]>) -> Item {
    Item::File {
        path: path.into(),
        data: data.as_ref().to_vec(),
        mode: 0o644,
    }
}

pub fn file_mode(path: &str, data: impl AsRef<[u8]>, mode: u32) -> Item {
    Item::File {
        path: path.into(),
        data: data.as_ref().to_vec(),
        mode,
    }
}

pub fn dir(path: &str, mode: u32) -> Item {
    Item::Dir {
        path: path.into(),
        mode,
    }
}

pub fn symlink(path: &str, target: &str) -> Item {
    Item::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

pub fn hardlink(path: &str, target: &str) -> Item {
    Item::HardLink {
        path: path.into(),
        target: target.into(),
    }
}

pub fn whiteout(path: &str) -> Item {
    Item::Whiteout(path.into())
}

pub fn opaque(dir: &str) -> Item {
    Item::Opaque(dir.into())
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A layer to write.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub items: Vec<Item>,
    pub comp: Comp,
    /// Overrides the media type the compression implies.
    pub media_type: Option<String>,
    /// Keeps only the first half of the compressed blob (the descriptor still matches the blob).
    pub truncate: bool,
}

impl LayerSpec {
    pub fn new(comp: Comp, items: Vec<Item>) -> LayerSpec {
        LayerSpec {
            items,
            comp,
            media_type: None,
            truncate: false,
        }
    }
}

/// An image to write.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<LayerSpec>,
    /// The `config` object of the image config (Env, Cmd, …).
    pub config: Value,
    pub os: String,
    pub arch: String,
    /// Replaces the config's `rootfs.diff_ids` (which otherwise match the layers).
    pub diff_ids: Option<Vec<String>>,
}

impl ImageSpec {
    pub fn new(layers: Vec<LayerSpec>) -> ImageSpec {
        ImageSpec {
            layers,
            config: json!({}),
            os: "linux".into(),
            arch: host_arch(),
            diff_ids: None,
        }
    }
}

/// What was written for one image.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest_digest: String,
    pub manifest_blob: PathBuf,
    pub config_blob: PathBuf,
    /// `sha256:<hex>` of each layer blob, bottom first.
    pub layer_digests: Vec<String>,
    pub layer_blobs: Vec<PathBuf>,
}

impl Built {
    pub fn layer_hex(&self, i: usize) -> &str {
        self.layer_digests[i].trim_start_matches("sha256:")
    }
}

/// The OCI name of this machine's architecture.
pub fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An OCI layout being written.
pub struct Layout {
    pub dir: PathBuf,
    entries: Vec<Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Writes a blob; returns its digest and size.
    pub fn put(&self, bytes: &[u8]) -> (String, u64) {
        let digest = sha256(bytes);
        std::fs::write(self.blob_path(&digest), bytes).unwrap();
        (digest, bytes.len() as u64)
    }

    /// Writes an image's blobs and returns its manifest descriptor (not yet in the index).
    pub fn put_image(&self, image: &ImageSpec) -> (Value, Built) {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        let mut layer_blobs = Vec::new();
        for layer in &image.layers {
            let tar = tar_bytes(&layer.items);
            diff_ids.push(sha256(&tar));
            let (mut blob, media) = match layer.comp {
                Comp::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
                Comp::Gzip => {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&tar).unwrap();
                    (
                        enc.finish().unwrap(),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Comp::Zstd => (
                    zstd::encode_all(&tar[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            if layer.truncate {
                blob.truncate(blob.len() / 2);
            }
            let (digest, size) = self.put(&blob);
            layer_descs.push(json!({
                "mediaType": layer.media_type.as_deref().unwrap_or(media),
                "digest": digest,
                "size": size,
            }));
            layer_blobs.push(self.blob_path(&digest));
            layer_digests.push(digest);
        }
        let config = json!({
            "architecture": image.arch,
            "os": image.os,
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": image.diff_ids.clone().unwrap_or(diff_ids)},
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let (config_digest, config_size) = self.put(&config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let (manifest_digest, manifest_size) = self.put(&manifest_bytes);
        let desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"os": image.os, "architecture": image.arch},
        });
        let built = Built {
            manifest_blob: self.blob_path(&manifest_digest),
            manifest_digest,
            config_blob: self.blob_path(&config_digest),
            layer_digests,
            layer_blobs,
        };
        (desc, built)
    }

    /// Adds an image to the index, tagged (`org.opencontainers.image.ref.name`) when `tag` is given.
    pub fn add(&mut self, tag: Option<&str>, image: &ImageSpec) -> Built {
        let (mut desc, built) = self.put_image(image);
        if let Some(tag) = tag {
            desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        }
        self.entries.push(desc);
        self.write_index();
        built
    }

    /// Adds a nested image index holding `images` (plus any `extra` raw descriptors) under `tag`.
    pub fn add_nested(&mut self, tag: &str, images: &[ImageSpec], extra: &[Value]) -> Vec<Built> {
        let mut descs = Vec::new();
        let mut built = Vec::new();
        for image in images {
            let (desc, b) = self.put_image(image);
            descs.push(desc);
            built.push(b);
        }
        descs.extend(extra.iter().cloned());
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descs,
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let (digest, size) = self.put(&bytes);
        self.entries.push(json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index();
        built
    }

    /// Rewrites the manifest of index entry `entry` through `edit` (e.g. to declare another
    /// layer size), stores it as a new blob and points the entry at it; returns the new blob.
    pub fn edit_manifest(&mut self, entry: usize, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let old = self.entries[entry]["digest"].as_str().unwrap().to_owned();
        let mut manifest: Value =
            serde_json::from_slice(&std::fs::read(self.blob_path(&old)).unwrap()).unwrap();
        edit(&mut manifest);
        let (digest, size) = self.put(&serde_json::to_vec(&manifest).unwrap());
        self.entries[entry]["digest"] = json!(digest);
        self.entries[entry]["size"] = json!(size);
        self.write_index();
        self.blob_path(&digest)
    }

    pub fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.entries,
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Appends an entry under its exact name (the tar crate's own setters refuse `..`, leading `/`
/// and `./`, which hostile and unusual layers have); long names go through the crate.
fn put(
    b: &mut tar::Builder<Vec<u8>>,
    mut h: tar::Header,
    path: &str,
    link: Option<&str>,
    data: &[u8],
) {
    if let Some(link) = link {
        set_raw(&mut h.as_old_mut().linkname, link);
    }
    if path.len() < 100 {
        set_raw(&mut h.as_old_mut().name, path);
        h.set_cksum();
        b.append(&h, data).unwrap();
    } else {
        b.append_data(&mut h, path, data).unwrap();
    }
}

/// The uncompressed tar of a layer.
pub fn tar_bytes(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        match item {
            Item::File { path, data, mode } => {
                let h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                put(&mut b, h, path, None, data);
            }
            Item::Dir { path, mode } => {
                put(
                    &mut b,
                    header(tar::EntryType::Directory, *mode, 0),
                    path,
                    None,
                    &[],
                );
            }
            Item::Symlink { path, target } => {
                let h = header(tar::EntryType::Symlink, 0o777, 0);
                put(&mut b, h, path, Some(target), &[]);
            }
            Item::HardLink { path, target } => {
                let h = header(tar::EntryType::Link, 0o644, 0);
                put(&mut b, h, path, Some(target), &[]);
            }
            Item::Whiteout(path) => {
                let p = Path::new(path);
                let name = format!(".wh.{}", p.file_name().unwrap().to_str().unwrap());
                let full = p.with_file_name(name);
                let h = header(tar::EntryType::Regular, 0o644, 0);
                put(&mut b, h, full.to_str().unwrap(), None, &[]);
            }
            Item::Opaque(dir) => {
                let full = Path::new(dir).join(".wh..wh..opq");
                let h = header(tar::EntryType::Regular, 0o644, 0);
                put(&mut b, h, full.to_str().unwrap(), None, &[]);
            }
            Item::Fifo(path) => {
                put(
                    &mut b,
                    header(tar::EntryType::Fifo, 0o644, 0),
                    path,
                    None,
                    &[],
                );
            }
            Item::Char { path, major, minor } => {
                let mut h = header(tar::EntryType::Char, 0o644, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                put(&mut b, h, path, None, &[]);
            }
            Item::RawFile { name, data } => {
                let h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                put(&mut b, h, name, None, data);
            }
        }
    }
    b.into_inner().unwrap()
}

fn set_raw(field: &mut [u8], value: &str) {
    assert!(value.len() < field.len(), "raw tar name too long: {value}");
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
}

/// Deterministic, poorly compressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
