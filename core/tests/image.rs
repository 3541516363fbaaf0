//! OCI image layouts unpacked into the layer store. These run as root and as an unprivileged user;
//! the layouts are built here from in-memory entries (see oci_util).

mod common;
mod oci_util;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{my_uid, skip, TempDir};
use oci_util::*;
use rsandbox::image::{self, ImageConfig, UnpackedImage};
use rsandbox::{Error, ErrorKind};
use serde_json::json;

const BUSYBOX: &str = "/bin/busybox";

/// The file system under the temp dir lets this user create whiteout devices and user xattrs; a
/// skip (or, under RSANDBOX_MUST_WORK=1, a failure) otherwise.
fn overlay_metadata_supported(dir: &Path) -> bool {
    let dev = dir.join("probe-whiteout");
    if let Err(e) = nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    ) {
        skip(&format!(
            "cannot create whiteout devices here (needs Linux 5.8+): mknod => {e}"
        ));
        return false;
    }
    let _ = fs::remove_file(&dev);
    if let Err(e) = xattr::set(dir, "user.rsandbox-probe", b"1") {
        skip(&format!(
            "{} does not take user.* xattrs: {e}",
            dir.display()
        ));
        return false;
    }
    true
}

fn expect_invalid(result: rsandbox::Result<UnpackedImage>) -> (PathBuf, String) {
    match result {
        Err(Error::InvalidImage { path, reason }) => (path, reason),
        Err(e) => panic!("expected InvalidImage, got {:?}: {e}", e.kind()),
        Ok(img) => panic!("expected InvalidImage, got {img:?}"),
    }
}

/// Names in `store/sha256`, sorted.
fn store_names(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(store.join("sha256")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn no_temp_dirs(store: &Path) {
    let tmp: Vec<_> = store_names(store)
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(tmp.is_empty(), "temporary dirs left in the store: {tmp:?}");
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// The three-layer image most tests use: gzip bottom, uncompressed middle, zstd top.
fn main_image() -> (ImageSpec, bool) {
    let mut bottom = vec![
        dir("./", 0o755),
        dir("bin", 0o755),
        dir("etc", 0o755),
        file("etc/hostname", "base\n"),
        hardlink("etc/hostname.link", "etc/hostname"),
        file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        file_mode("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755),
        dir("usr/share/doc", 0o755),
        file("usr/share/doc/a.txt", "a\n"),
        file("usr/share/doc/b.txt", "b\n"),
        dir("data", 0o755),
        file("data/old.txt", "old\n"),
        dir("opt/keep", 0o755),
        file("opt/keep/x", "x\n"),
        dir("private", 0o700),
        file_mode("private/key", "k\n", 0o600),
        // Read-only directory with content after it: extraction must still be able to fill it.
        dir("ro", 0o555),
        file("ro/inside", "in\n"),
        Item::Fifo("run/fifo".into()),
        Item::Char {
            path: "dev/null".into(),
            major: 1,
            minor: 3,
        },
        symlink("etc/alias", "hostname"),
    ];
    let busybox = Path::new(BUSYBOX).exists();
    if busybox {
        bottom.push(file_mode("bin/busybox", fs::read(BUSYBOX).unwrap(), 0o755));
        bottom.push(symlink("bin/sh", "busybox"));
    }
    let middle = vec![
        whiteout("etc/hostname"),
        file("etc/motd", "welcome\n"),
        whiteout("usr/share/doc/a.txt"),
        whiteout("data"),
        // Already in overlayfs form.
        Item::Char {
            path: "etc/gone".into(),
            major: 0,
            minor: 0,
        },
    ];
    let top = vec![
        opaque("opt/keep"),
        file("opt/keep/y", "y\n"),
        // A whiteout for something this very layer had first: the whiteout wins.
        file("tmpfile", "t\n"),
        whiteout("tmpfile"),
        file(
            "/abs.txt",
            "absolute names are taken relative to the layer\n",
        ),
    ];
    let mut spec = ImageSpec::new(vec![
        LayerSpec::new(Comp::Gzip, bottom),
        LayerSpec::new(Comp::None, middle),
        LayerSpec::new(Comp::Zstd, top),
    ]);
    spec.config = json!({
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello world"],
        "WorkingDir": "/srv",
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING"],
        "User": "1000:1000",
    });
    (spec, busybox)
}

#[test]
fn unpacks_layers_whiteouts_and_opaque_dirs() {
    let tmp = TempDir::new("image-main");
    if !overlay_metadata_supported(tmp.path()) {
        return;
    }
    let (spec, busybox) = main_image();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let built = layout.add(Some("v1"), &spec);
    let store = tmp.path().join("store");

    let img = image::unpack(&layout.dir, Some("v1"), &store).unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    let expected: Vec<PathBuf> = (0..3)
        .map(|i| store.join("sha256").join(built.layer_hex(i)))
        .collect();
    assert_eq!(img.layers, expected, "layer dirs, bottom first");
    let [l0, l1, l2] = [&img.layers[0], &img.layers[1], &img.layers[2]];

    // Bottom layer: contents, modes, mtimes, links, ownership.
    assert_eq!(read(l0.join("etc/hostname")), "base\n");
    let m = fs::metadata(l0.join("etc/hostname")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!(m.mtime(), MTIME as i64);
    assert_eq!(m.uid(), my_uid(), "ownership in the archive is ignored");
    let link = fs::metadata(l0.join("etc/hostname.link")).unwrap();
    assert_eq!(link.ino(), m.ino(), "hard link shares the inode");
    assert_eq!(
        fs::read_link(l0.join("etc/alias")).unwrap(),
        Path::new("hostname")
    );
    let tool = fs::metadata(l0.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    for (dir, mode) in [
        ("", 0o755),
        ("etc", 0o755),
        ("private", 0o700),
        ("ro", 0o555),
    ] {
        let m = fs::metadata(l0.join(dir)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "mode of /{dir}");
        assert_eq!(m.mtime(), MTIME as i64, "mtime of /{dir}");
    }
    assert_eq!(read(l0.join("ro/inside")), "in\n");
    assert_eq!(
        fs::metadata(l0.join("private/key")).unwrap().mode() & 0o7777,
        0o600
    );
    // Devices and FIFOs cannot be made unprivileged: skipped and listed.
    assert!(fs::symlink_metadata(l0.join("run/fifo")).is_err());
    assert!(fs::symlink_metadata(l0.join("dev/null")).is_err());
    let l0_digest = &built.layer_digests[0];
    assert!(
        img.skipped
            .contains(&format!("{l0_digest}: /run/fifo (fifo)")),
        "{:?}",
        img.skipped
    );
    assert!(
        img.skipped
            .contains(&format!("{l0_digest}: /dev/null (character device)")),
        "{:?}",
        img.skipped
    );
    assert_eq!(img.skipped.len(), 2, "{:?}", img.skipped);
    if busybox {
        let bb = l0.join("bin/busybox");
        assert_eq!(fs::read(&bb).unwrap(), fs::read(BUSYBOX).unwrap());
        assert_eq!(
            fs::read_link(l0.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let out = Command::new(&bb)
            .args(["echo", "from-layer"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-layer\n");
    } else {
        skip("busybox-static is not installed: the image is not a complete rootfs");
    }

    // Middle layer: whiteouts are character devices 0/0.
    for hidden in ["etc/hostname", "usr/share/doc/a.txt", "data", "etc/gone"] {
        assert!(is_whiteout(&l1.join(hidden)), "{hidden} is a whiteout");
    }
    assert!(fs::symlink_metadata(l1.join("etc/.wh.hostname")).is_err());
    assert_eq!(read(l1.join("etc/motd")), "welcome\n");
    assert!(!l1.join("usr/share/doc/b.txt").exists());

    // Top layer: the opaque directory carries the userxattr marker, and nothing else does.
    assert_eq!(
        xattr::get(l2.join("opt/keep"), "user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(l2.join("opt"), "user.overlay.opaque").unwrap(),
        None
    );
    assert!(fs::symlink_metadata(l2.join("opt/keep/.wh..wh..opq")).is_err());
    assert_eq!(read(l2.join("opt/keep/y")), "y\n");
    assert!(is_whiteout(&l2.join("tmpfile")));
    assert!(read(l2.join("abs.txt")).starts_with("absolute"));

    // The store is private and holds exactly the three layers and the bottom one's notes.
    let sha = fs::metadata(store.join("sha256")).unwrap();
    assert_eq!(sha.mode() & 0o777, 0o700);
    let mut want: Vec<String> = (0..3).map(|i| built.layer_hex(i).to_owned()).collect();
    want.push(format!("{}.skipped", built.layer_hex(0)));
    want.sort();
    assert_eq!(store_names(&store), want);

    assert_eq!(
        img.config,
        ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hello world".into()],
            working_dir: Some("/srv".into()),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo $GREETING".into()],
            user: Some("1000:1000".into()),
        }
    );

    // Let TempDir remove the read-only directory.
    fs::set_permissions(l0.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn second_unpack_reuses_the_store() {
    let tmp = TempDir::new("image-reuse");
    if !overlay_metadata_supported(tmp.path()) {
        return;
    }
    let (spec, _) = main_image();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let built = layout.add(Some("v1"), &spec);
    let store = tmp.path().join("store");
    let first = image::unpack(&layout.dir, Some("v1"), &store).unwrap();
    let stamp = |p: &PathBuf| {
        let m = fs::symlink_metadata(p).unwrap();
        (
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    let before: Vec<_> = first.layers.iter().map(stamp).collect();

    // Without the layer blobs, only the store can supply the layers.
    for blob in &built.layer_blobs {
        fs::remove_file(blob).unwrap();
    }
    let second = image::unpack(&layout.dir, Some("v1"), &store).unwrap();
    assert_eq!(second.layers, first.layers);
    assert_eq!(second.layers.iter().map(stamp).collect::<Vec<_>>(), before);
    assert_eq!(second.skipped, first.skipped, "notes survive reuse");
    assert_eq!(second.config, first.config);
    no_temp_dirs(&store);

    // A fresh store does need the blobs, and says which is missing.
    let (path, reason) = expect_invalid(image::unpack(
        &layout.dir,
        Some("v1"),
        &tmp.path().join("store2"),
    ));
    assert_eq!(path, built.layer_blobs[0]);
    assert!(reason.contains("missing blob"), "{reason}");
    fs::set_permissions(
        first.layers[0].join("ro"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn small_image(tag_content: &str) -> ImageSpec {
    let mut spec = ImageSpec::new(vec![LayerSpec::new(
        Comp::Gzip,
        vec![file("which", tag_content)],
    )]);
    spec.config = json!({"Cmd": [tag_content]});
    spec
}

#[test]
fn tags_select_manifests_and_a_missing_tag_lists_them() {
    let tmp = TempDir::new("image-tags");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let v1 = layout.add(Some("v1"), &small_image("one"));
    let v2 = layout.add(Some("v2"), &small_image("two"));
    layout.add(None, &small_image("untagged"));

    for (tag, built, content) in [("v1", &v1, "one"), ("v2", &v2, "two")] {
        let img = image::unpack(&layout.dir, Some(tag), &store).unwrap();
        assert_eq!(img.manifest_digest, built.manifest_digest);
        assert_eq!(read(img.layers[0].join("which")), content);
        assert_eq!(img.config.cmd, vec![content.to_owned()]);
    }

    let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("v3"), &store));
    assert_eq!(path, layout.dir.join("index.json"));
    assert!(reason.contains("no manifest tagged \"v3\""), "{reason}");
    assert!(reason.contains("available tags: v1, v2"), "{reason}");

    let (_, reason) = expect_invalid(image::unpack(&layout.dir, None, &store));
    assert!(reason.contains("3 manifests"), "{reason}");
    assert!(reason.contains("v1, v2"), "{reason}");

    // A single-image layout needs no tag.
    let single = TempDir::new("image-single");
    let mut layout = Layout::new(single.path());
    let only = layout.add(None, &small_image("only"));
    let img = image::unpack(single.path(), None, &store).unwrap();
    assert_eq!(img.manifest_digest, only.manifest_digest);
}

#[test]
fn nested_index_resolves_to_this_platform() {
    let tmp = TempDir::new("image-nested");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let foreign_arch = if host_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let mut foreign = small_image("foreign");
    foreign.arch = foreign_arch.into();
    let native = small_image("native");
    // An attestation manifest, as buildkit writes them, must not be taken for an image.
    let attestation = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 2,
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
    });
    let built = layout.add_nested("multi", &[foreign, native], &[attestation]);
    let img = image::unpack(&layout.dir, Some("multi"), &store).unwrap();
    assert_eq!(img.manifest_digest, built[1].manifest_digest);
    assert_eq!(read(img.layers[0].join("which")), "native");

    // No entry for this machine: the error lists what there is.
    let mut only_foreign = Layout::new(&tmp.path().join("layout2"));
    let mut a = small_image("a");
    a.arch = foreign_arch.into();
    let mut b = small_image("b");
    b.arch = "mips64le".into();
    only_foreign.add_nested("multi", &[a, b], &[]);
    let (_, reason) = expect_invalid(image::unpack(&only_foreign.dir, Some("multi"), &store));
    assert!(
        reason.contains(&format!("no manifest for linux/{}", host_arch())),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("linux/{foreign_arch}")),
        "{reason}"
    );
}

#[test]
fn flipped_byte_is_a_digest_mismatch_naming_the_blob() {
    let tmp = TempDir::new("image-flip");
    let (spec, _) = main_image();
    // Each blob of the image in turn: a layer (which must stop every layer from being unpacked,
    // even the valid ones before it), the config and the manifest.
    for target in ["layer", "config", "manifest"] {
        let dir = tmp.path().join(target);
        let mut layout = Layout::new(&dir.join("layout"));
        let built = layout.add(Some("v1"), &spec);
        let blob = match target {
            "layer" => built.layer_blobs[1].clone(),
            "config" => built.config_blob.clone(),
            _ => built.manifest_blob.clone(),
        };
        let mut bytes = fs::read(&blob).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x01;
        fs::write(&blob, bytes).unwrap();
        let want = format!(
            "digest mismatch: expected sha256:{}, got sha256:",
            blob.file_name().unwrap().to_str().unwrap()
        );

        let store = dir.join("store");
        let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("v1"), &store));
        assert_eq!(path, blob, "{target}");
        assert!(reason.starts_with(&want), "{target}: {reason}");
        let layers: Vec<_> = store_names(&store);
        assert!(layers.is_empty(), "{target}: store touched: {layers:?}");
    }
}

#[test]
fn truncated_layers_fail_and_leave_nothing_behind() {
    let tmp = TempDir::new("image-trunc");
    for comp in [Comp::Gzip, Comp::Zstd, Comp::None] {
        let dir = tmp.path().join(format!("{comp:?}"));
        let mut layout = Layout::new(&dir.join("layout"));
        let items: Vec<Item> = (0..64)
            .map(|i| file(&format!("f{i}"), noise(i, 4096)))
            .collect();
        let mut layer = LayerSpec::new(comp, items);
        layer.truncate = true;
        let built = layout.add(Some("t"), &ImageSpec::new(vec![layer]));
        let store = dir.join("store");
        let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("t"), &store));
        assert_eq!(path, built.layer_blobs[0], "{comp:?}");
        assert!(
            reason.contains("corrupt or truncated")
                || reason.contains("uncompressed digest mismatch"),
            "{comp:?}: {reason}"
        );
        assert_eq!(store_names(&store), Vec::<String>::new(), "{comp:?}");
    }
}

#[test]
fn uncompressed_content_must_match_the_configs_diff_ids() {
    let tmp = TempDir::new("image-diffid");
    let mut layout = Layout::new(tmp.path());
    let mut spec = ImageSpec::new(vec![LayerSpec::new(Comp::Gzip, vec![file("a", "a")])]);
    let wrong = sha256(b"something else");
    spec.diff_ids = Some(vec![wrong.clone()]);
    let built = layout.add(Some("x"), &spec);
    let store = tmp.path().join("store");
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, built.layer_blobs[0]);
    assert!(
        reason.starts_with(&format!(
            "uncompressed digest mismatch: rootfs.diff_ids[0] expects {wrong}, got sha256:"
        )),
        "{reason}"
    );
    assert_eq!(store_names(&store), Vec::<String>::new());

    spec.diff_ids = Some(vec![]);
    let built = layout.add(Some("y"), &spec);
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("y"), &store));
    assert_eq!(path, built.config_blob);
    assert!(
        reason.contains("rootfs.diff_ids lists 0 layers but the manifest has 1"),
        "{reason}"
    );
}

#[test]
fn unknown_layer_media_type_is_named() {
    let tmp = TempDir::new("image-media");
    let mut layout = Layout::new(tmp.path());
    let mut layer = LayerSpec::new(Comp::None, vec![file("a", "a")]);
    layer.media_type = Some("application/vnd.example.layer.v1.tar+lz4".into());
    let built = layout.add(Some("x"), &ImageSpec::new(vec![layer]));
    let store = tmp.path().join("store");
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, built.layer_blobs[0]);
    assert!(
        reason.contains("unsupported media type application/vnd.example.layer.v1.tar+lz4"),
        "{reason}"
    );
}

#[test]
fn malformed_and_missing_layout_files_are_invalid_images() {
    let tmp = TempDir::new("image-malformed");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(tmp.path());
    let built = layout.add(Some("x"), &small_image("x"));

    fs::write(tmp.path().join("index.json"), "{\"manifests\": [").unwrap();
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, tmp.path().join("index.json"));
    assert!(reason.starts_with("malformed index.json: "), "{reason}");

    layout.write_index();
    fs::write(&built.config_blob, "not json").unwrap();
    // The digest is checked before the JSON is parsed.
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, built.config_blob);
    assert!(reason.contains("mismatch"), "{reason}");

    fs::remove_file(&built.manifest_blob).unwrap();
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, built.manifest_blob);
    assert!(reason.contains("missing blob"), "{reason}");

    fs::remove_file(tmp.path().join("oci-layout")).unwrap();
    let (path, reason) = expect_invalid(image::unpack(tmp.path(), Some("x"), &store));
    assert_eq!(path, tmp.path().join("oci-layout"));
    assert!(reason.contains("missing oci-layout"), "{reason}");

    // A blob whose JSON is malformed but whose digest matches: the serde message comes through.
    let other = TempDir::new("image-badjson");
    let mut layout = Layout::new(other.path());
    let built = layout.add(Some("x"), &small_image("x"));
    let (digest, size) = layout.put(b"{\"schemaVersion\": 2, \"config\": 7}");
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": "bad"},
    }]});
    fs::write(other.path().join("index.json"), index.to_string()).unwrap();
    let (path, reason) = expect_invalid(image::unpack(other.path(), Some("bad"), &store));
    assert_eq!(path, layout.blob_path(&digest));
    assert!(reason.starts_with("malformed image manifest: "), "{reason}");
    drop(built);
}

/// What a naive extractor (path joined onto the root, tar's own `unpack`) does with a layer:
/// the negative control showing that the hostile layers really do escape without the checks.
fn naive_extract(items: &[Item], root: &Path) {
    let tar = tar_bytes(items);
    let mut archive = tar::Archive::new(&tar[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let dst = root.join(&path);
        if let Some(parent) = dst.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let _ = entry.unpack(&dst);
    }
}

#[test]
fn hostile_layers_cannot_write_outside() {
    let tmp = TempDir::new("image-escape");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "secret\n").unwrap();
    let outside_str = outside.to_str().unwrap();

    let cases: Vec<(&str, Vec<Item>, PathBuf)> = vec![
        (
            "dotdot",
            vec![Item::RawFile {
                name: "../../../outside/dotdot".into(),
                data: b"pwned".to_vec(),
            }],
            outside.join("dotdot"),
        ),
        (
            "absolute-symlink",
            vec![symlink("evil", outside_str), file("evil/abs-link", "pwned")],
            outside.join("abs-link"),
        ),
        (
            "relative-symlink",
            vec![
                dir("a", 0o755),
                symlink("a/up", "../../../../../../outside"),
                file("a/up/rel-link", "pwned"),
            ],
            outside.join("rel-link"),
        ),
        (
            "hardlink",
            vec![hardlink("stolen", "../../../../outside/secret")],
            PathBuf::new(),
        ),
        (
            "whiteout-through-symlink",
            vec![symlink("evil", outside_str), whiteout("evil/secret")],
            PathBuf::new(),
        ),
    ];
    for (name, items, escaped) in cases {
        let dir = tmp.path().join(name);
        // Negative control: without the checks these layers do write outside.
        if !escaped.as_os_str().is_empty() {
            let naive_root = dir.join("naive/a/b/c");
            fs::create_dir_all(&naive_root).unwrap();
            naive_extract(&items, &naive_root);
            let landed = match name {
                "dotdot" => naive_root.join("../../../outside/dotdot").exists(),
                _ => escaped.exists(),
            };
            assert!(
                landed,
                "{name}: the naive extractor did not escape; the test proves nothing"
            );
            let _ = fs::remove_file(&escaped);
            let _ = fs::remove_dir_all(dir.join("naive"));
        }

        let mut layout = Layout::new(&dir.join("layout"));
        let built = layout.add(
            Some("x"),
            &ImageSpec::new(vec![LayerSpec::new(Comp::Gzip, items)]),
        );
        let store = dir.join("s/t/o/r/e");
        let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("x"), &store));
        assert_eq!(path, built.layer_blobs[0], "{name}: {reason}");
        if !escaped.as_os_str().is_empty() {
            assert!(!escaped.exists(), "{name}: wrote {}", escaped.display());
        }
        assert_eq!(read(outside.join("secret")), "secret\n", "{name}");
        assert_eq!(store_names(&store), Vec::<String>::new(), "{name}");
        let mut left: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec!["secret"], "{name}: {reason}");
    }
}

fn concurrent_image() -> ImageSpec {
    let mut items = vec![dir("big", 0o755)];
    for i in 0..400 {
        items.push(file(&format!("big/{i:03}"), noise(i, 8192)));
    }
    items.push(symlink("big/link", "000"));
    let small = vec![file("small", "s\n")];
    ImageSpec::new(vec![
        LayerSpec::new(Comp::Gzip, items),
        LayerSpec::new(Comp::Zstd, small),
    ])
}

fn check_concurrent_result(img: &UnpackedImage) {
    let big = &img.layers[0];
    for i in 0..400u64 {
        let got = fs::read(big.join(format!("big/{i:03}"))).unwrap();
        assert!(got == noise(i, 8192), "big/{i:03} differs");
    }
    assert_eq!(fs::read_dir(big.join("big")).unwrap().count(), 401);
    assert_eq!(read(img.layers[1].join("small")), "s\n");
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let tmp = TempDir::new("image-replace");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "secret\n").unwrap();
    let target = outside.join("secret");
    let items = vec![
        symlink("f", target.to_str().unwrap()),
        file("f", "replaced\n"),
        symlink("d", outside.to_str().unwrap()),
        dir("d", 0o755),
        file("d/inside", "in\n"),
        // A hard link to a symlink links the symlink itself, whatever it points at.
        symlink("s", target.to_str().unwrap()),
        hardlink("h", "s"),
    ];
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, items)]),
    );
    let img = image::unpack(&layout.dir, Some("x"), &tmp.path().join("store")).unwrap();
    let layer = &img.layers[0];
    assert_eq!(read(layer.join("f")), "replaced\n");
    assert!(fs::symlink_metadata(layer.join("d")).unwrap().is_dir());
    assert_eq!(read(layer.join("d/inside")), "in\n");
    assert_eq!(fs::read_link(layer.join("h")).unwrap(), target);
    assert_eq!(read(&target), "secret\n");
    let mut left: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec!["secret"]);

    // A hard link whose target the layer lacks is an invalid layer, not an I/O error.
    let items = vec![hardlink("h", "nowhere")];
    layout.add(
        Some("y"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, items)]),
    );
    let (_, reason) = expect_invalid(image::unpack(
        &layout.dir,
        Some("y"),
        &tmp.path().join("store"),
    ));
    assert!(reason.contains("which the layer does not hold"), "{reason}");
}

/// A directory's mode and time are set at the end of a layer: by then a later entry may have
/// made a directory on its path a link to anywhere, which must not be followed. Set-user-ID and
/// set-group-ID bits are dropped (they would work for anyone who reached the store).
#[test]
fn a_layer_cannot_change_a_directory_outside_through_a_replaced_link() {
    let tmp = TempDir::new("image-dir-link");
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("x")).unwrap();
    fs::set_permissions(victim.join("x"), fs::Permissions::from_mode(0o700)).unwrap();
    let before = fs::metadata(victim.join("x")).unwrap();
    let items = vec![
        dir("sub", 0o755),
        symlink("d", "sub"),
        dir("d/x", 0o777),
        symlink("d", victim.to_str().unwrap()),
        // Controls: the layer's own directory gets its mode (sticky bit included), and a file
        // keeps its execute bits.
        dir("kept", 0o1750),
        file_mode("tool", "#!/bin/sh\n", 0o6755),
    ];
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, items)]),
    );
    let img = image::unpack(&layout.dir, Some("x"), &tmp.path().join("store")).unwrap();
    let after = fs::metadata(victim.join("x")).unwrap();
    assert_eq!(
        after.mode() & 0o7777,
        0o700,
        "the layer changed a directory outside"
    );
    assert_eq!(
        after.mtime(),
        before.mtime(),
        "the layer re-timed a directory outside"
    );
    let layer = &img.layers[0];
    assert_eq!(
        fs::metadata(layer.join("kept")).unwrap().mode() & 0o7777,
        0o1750
    );
    assert_eq!(
        fs::metadata(layer.join("tool")).unwrap().mode() & 0o7777,
        0o755
    );
    // Nobody else can reach the unpacked layers.
    let store = fs::metadata(tmp.path().join("store/sha256")).unwrap();
    assert_eq!(store.mode() & 0o077, 0);
}

/// A relative store is refused before anything is unpacked (it would land wherever the
/// process happens to be).
#[test]
fn a_relative_store_is_refused_before_unpacking() {
    let tmp = TempDir::new("image-relative-store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, vec![file("f", "x")])]),
    );
    let e = image::unpack(&layout.dir, Some("x"), Path::new("relative-store-rsbx")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}");
    assert!(!Path::new("relative-store-rsbx").exists());
    // Control: an absolute one unpacks.
    image::unpack(&layout.dir, Some("x"), &tmp.path().join("store")).unwrap();
}

const CHILD_ENV: &str = "RSANDBOX_IMAGE_TEST_CHILD";

/// Not a test on its own: the other process of `concurrent_unpacks_yield_one_intact_layer`.
#[test]
fn child_process_unpack() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = args.split('\n');
    let (layout, store, go) = (
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.exists() {
        assert!(Instant::now() < deadline, "never told to go");
        std::thread::yield_now();
    }
    let img = image::unpack(&layout, Some("c"), &store).unwrap();
    check_concurrent_result(&img);
    println!("CHILD-OK {}", img.layers[0].display());
}

#[test]
fn concurrent_unpacks_yield_one_intact_layer() {
    let tmp = TempDir::new("image-race");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let built = layout.add(Some("c"), &concurrent_image());
    let store = tmp.path().join("store");
    let go = tmp.path().join("go");
    let exe = std::env::current_exe().unwrap();

    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_unpack",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CHILD_ENV,
                    format!(
                        "{}\n{}\n{}",
                        layout.dir.display(),
                        store.display(),
                        go.display()
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Give the children time to start spinning on the go file before everyone is released.
    std::thread::sleep(Duration::from_millis(300));

    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, layout, store) = (barrier.clone(), layout.dir.clone(), store.clone());
            std::thread::spawn(move || {
                barrier.wait();
                image::unpack(&layout, Some("c"), &store)
            })
        })
        .collect();
    fs::write(&go, "").unwrap();
    barrier.wait();

    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().unwrap().unwrap());
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = format!(
            "CHILD-OK {}",
            store.join("sha256").join(built.layer_hex(0)).display()
        );
        assert!(stdout.contains(&expected), "{stdout}");
    }
    for img in &results {
        assert_eq!(img.layers, results[0].layers);
        check_concurrent_result(img);
    }
    let mut want = vec![built.layer_hex(0).to_owned(), built.layer_hex(1).to_owned()];
    want.sort();
    assert_eq!(
        store_names(&store),
        want,
        "one directory per layer, no leftovers"
    );
}

#[test]
fn image_config_defaults_and_empty_strings() {
    let tmp = TempDir::new("image-config");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(tmp.path());
    let mut empty = small_image("e");
    empty.config = json!({"WorkingDir": "", "User": ""});
    layout.add(Some("empty"), &empty);
    let mut none = small_image("n");
    none.config = serde_json::Value::Null;
    layout.add(Some("none"), &none);
    for tag in ["empty", "none"] {
        let img = image::unpack(tmp.path(), Some(tag), &store).unwrap();
        assert_eq!(img.config, ImageConfig::default(), "{tag}");
    }
    // ImageConfig is plain data that round-trips through JSON.
    let config = ImageConfig {
        env: vec!["A=1".into()],
        working_dir: Some("/w".into()),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        user: None,
    };
    let text = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<ImageConfig>(&text).unwrap(), config);
}

#[test]
fn a_store_others_can_write_to_is_refused() {
    let tmp = TempDir::new("image-shared");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add(Some("x"), &small_image("x"));
    let store = tmp.path().join("store");
    fs::create_dir_all(store.join("sha256")).unwrap();
    fs::set_permissions(store.join("sha256"), fs::Permissions::from_mode(0o777)).unwrap();
    let err = image::unpack(&layout.dir, Some("x"), &store).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("writable by others"), "{err}");
    fs::set_permissions(store.join("sha256"), fs::Permissions::from_mode(0o700)).unwrap();
    image::unpack(&layout.dir, Some("x"), &store).unwrap();
}

const DEFAULT_STORE_ENV: &str = "RSANDBOX_IMAGE_TEST_DEFAULT_STORE";

/// Not a test on its own: prints `default_store()` for `default_store_follows_the_environment`.
#[test]
fn child_print_default_store() {
    if std::env::var_os(DEFAULT_STORE_ENV).is_some() {
        println!("STORE={}", image::default_store().display());
    }
}

#[test]
fn default_store_follows_the_environment() {
    let exe = std::env::current_exe().unwrap();
    let store_for = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "child_print_default_store", "--nocapture"])
            .env_clear()
            .env(DEFAULT_STORE_ENV, "1");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("STORE="))
            .unwrap_or_else(|| panic!("no STORE= line: {stdout}"))
            .to_owned()
    };
    let all = [
        ("RSANDBOX_IMAGE_STORE", "/s"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ];
    assert_eq!(store_for(&all), "/s");
    assert_eq!(store_for(&all[1..]), "/x/rsandbox/layers");
    assert_eq!(store_for(&all[2..]), "/h/.cache/rsandbox/layers");
    assert_eq!(
        store_for(&[("XDG_CACHE_HOME", "relative"), ("HOME", "")]),
        format!("/tmp/rsandbox-{}/layers", nix::unistd::geteuid())
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile layouts that would make a reader wait or read without end: run in a bounded child.

const BOUNDED_ENV: &str = "RSANDBOX_IMAGE_TEST_BOUNDED";
/// The address space (KiB) of a bounded child: an unbounded read there ends in a failed
/// allocation, not in a host out of memory.
const BOUNDED_KIB: u64 = 512 << 10;
/// How long a bounded child may take before it is killed (a read that never ends, a FIFO).
const BOUNDED_TIME: Duration = Duration::from_secs(20);
/// The most memory (peak resident KiB) a bounded child may have used: a read that was cut off
/// only by the address-space limit (and then ignored) shows here.
const BOUNDED_RSS_KIB: u64 = 128 << 10;

/// Not a test on its own: the process `run_bounded` starts. Unpacks the layout's tag and, when
/// a user is given, looks it up in the image; prints `BOUNDED-RESULT <outcome>`.
#[test]
fn child_bounded_unpack() {
    let Ok(args) = std::env::var(BOUNDED_ENV) else {
        return;
    };
    let parts: Vec<&str> = args.split('\n').collect();
    let (layout, store, tag) = (Path::new(parts[0]), Path::new(parts[1]), parts[2]);
    let result = image::unpack(layout, Some(tag), store).and_then(|img| match parts.get(3) {
        Some(user) => image::resolve_user(user, &img.layers).map(|ids| format!("{ids:?}")),
        None => Ok("unpacked".to_owned()),
    });
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim();
    println!("\nBOUNDED-PEAK {}", peak.trim_end_matches(" kB"));
    match result {
        Ok(what) => println!("BOUNDED-RESULT ok {what}"),
        Err(Error::InvalidImage { path, reason }) => {
            println!("BOUNDED-RESULT invalid-image {}\t{reason}", path.display())
        }
        Err(e) => println!("BOUNDED-RESULT {} {e}", e.kind().name()),
    }
}

/// Unpacks `tag` of `layout` (and resolves `user`) in a child limited to [`BOUNDED_KIB`] of
/// address space and [`BOUNDED_TIME`]; returns the child's outcome: `ok …`,
/// `invalid-image PATH\tREASON` or `KIND MESSAGE`. A child that had to be killed, died, or used
/// more than [`BOUNDED_RSS_KIB`] of memory fails the test.
fn run_bounded(layout: &Path, store: &Path, tag: &str, user: Option<&str>) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut args = format!("{}\n{}\n{tag}", layout.display(), store.display());
    if let Some(user) = user {
        args.push('\n');
        args.push_str(user);
    }
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("ulimit -v {BOUNDED_KIB} && exec \"$0\" \"$@\""),
        ])
        .arg(&exe)
        .args([
            "--exact",
            "child_bounded_unpack",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(BOUNDED_ENV, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BOUNDED_TIME;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{tag}: still running after {BOUNDED_TIME:?} (blocked, or reading without end): killed"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BOUNDED-PEAK "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{tag}: no BOUNDED-PEAK line ({})\n{stdout}", out.status));
    assert!(
        peak < BOUNDED_RSS_KIB,
        "{tag}: the child used {peak} KiB of memory (reading without end?)\n{stdout}"
    );
    match stdout
        .lines()
        .find_map(|l| Some(&l[l.find("BOUNDED-RESULT ")? + 15..]))
    {
        Some(result) if out.status.success() => result.to_owned(),
        _ => panic!(
            "{tag}: the child failed ({}; out of memory?)\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Replaces `path` by a symbolic link to `target`.
fn replace_with_symlink(path: &Path, target: &Path) {
    fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// Replaces `path` by a FIFO.
fn replace_with_fifo(path: &Path) {
    fs::remove_file(path).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Every file of a layout is opened beneath the layout directory, without blocking, and read only
/// if it is a regular file, no further than its descriptor's size: a blob or index that is a
/// symbolic link out of the layout (to /dev/zero, to a host file), or a FIFO, is an invalid
/// image naming it, not an endless read or wait. Symbolic links inside the layout still work.
#[test]
fn layout_files_are_regular_files_read_within_the_layout() {
    let tmp = TempDir::new("image-layout-files");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let store = tmp.path().join("store");
    let fresh = |name: &str| {
        let mut layout = Layout::new(&tmp.path().join(name));
        let built = layout.add(Some("t"), &small_image(name));
        (layout, built)
    };
    let expect_at = |result: String, path: &Path, wanted: &str| {
        let (kind, rest) = result.split_once(' ').unwrap();
        assert_eq!(kind, "invalid-image", "{result}");
        let (at, reason) = rest.split_once('\t').unwrap();
        assert_eq!(Path::new(at), path, "{result}");
        assert!(reason.contains(wanted), "{result}");
    };

    // Controls: links that stay inside the layout are followed.
    let (layout, built) = fresh("inside");
    let moved = layout.dir.join("index-copy.json");
    fs::rename(layout.dir.join("index.json"), &moved).unwrap();
    std::os::unix::fs::symlink("index-copy.json", layout.dir.join("index.json")).unwrap();
    let config_copy = layout.dir.join("config-copy");
    fs::rename(&built.config_blob, &config_copy).unwrap();
    std::os::unix::fs::symlink("../../config-copy", &built.config_blob).unwrap();
    let img = image::unpack(&layout.dir, Some("t"), &store).unwrap();
    assert_eq!(img.config.cmd, vec!["inside".to_owned()]);

    // A blob that is a link to a host file with the very content the digest wants.
    let (layout, built) = fresh("host-file");
    let host_copy = outside.join("config");
    fs::copy(&built.config_blob, &host_copy).unwrap();
    replace_with_symlink(&built.config_blob, &host_copy);
    let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("t"), &store));
    assert_eq!(path, built.config_blob);
    assert!(reason.contains("leads out of the layout"), "{reason}");

    // The manifest blob links to /dev/zero.
    let (layout, built) = fresh("manifest-zero");
    replace_with_symlink(&built.manifest_blob, Path::new("/dev/zero"));
    let result = run_bounded(&layout.dir, &store, "t", None);
    expect_at(result, &built.manifest_blob, "leads out of the layout");

    // A layer blob links to /dev/zero, and the manifest says it is empty.
    let (mut layout, built) = fresh("layer-zero");
    layout.edit_manifest(0, |m| m["layers"][0]["size"] = json!(0));
    replace_with_symlink(&built.layer_blobs[0], Path::new("/dev/zero"));
    let result = run_bounded(&layout.dir, &store, "t", None);
    expect_at(result, &built.layer_blobs[0], "leads out of the layout");

    // FIFOs: index.json, a config blob, a layer blob.
    let (layout, _) = fresh("index-fifo");
    let index = layout.dir.join("index.json");
    replace_with_fifo(&index);
    let result = run_bounded(&layout.dir, &store, "t", None);
    expect_at(result, &index, "not a regular file but a FIFO");
    let (layout, built) = fresh("config-fifo");
    replace_with_fifo(&built.config_blob);
    let result = run_bounded(&layout.dir, &store, "t", None);
    expect_at(result, &built.config_blob, "not a regular file but a FIFO");
    let (layout, built) = fresh("layer-fifo");
    replace_with_fifo(&built.layer_blobs[0]);
    let result = run_bounded(&layout.dir, &store, "t", None);
    expect_at(
        result,
        &built.layer_blobs[0],
        "not a regular file but a FIFO",
    );

    // The layout directory itself being a FIFO fails without waiting too.
    let fifo = tmp.path().join("layout-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let result = run_bounded(&fifo, &store, "t", None);
    expect_at(result, &fifo, "not a directory");
    let layers: Vec<_> = store_names(&store);
    assert_eq!(layers.len(), 1, "only the control's layer: {layers:?}");
}

/// The `User` of an image is looked up in the image's own files: links in its layers are
/// resolved inside the image, never on the host, so neither a host file nor the host's /etc
/// can decide the ids a sandbox runs with.
#[test]
fn the_image_user_is_never_looked_up_on_the_host() {
    let tmp = TempDir::new("image-user-host");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    fs::write(&secret, "key:x:4242:4343::/:/bin/sh\n").unwrap();
    let secret_str = secret.to_str().unwrap();
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    // Where a layer's etc sits under `tmp`, to reach the secret from it with `..` (a link a
    // layer may hold; short, whatever the length of the temporary directory's path).
    layout.add(
        Some("probe"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, vec![dir("etc", 0o755)])]),
    );
    let probe = image::unpack(&layout.dir, Some("probe"), &store).unwrap();
    let depth = probe.layers[0]
        .strip_prefix(tmp.path())
        .expect("the store is under tmp")
        .components()
        .count()
        + 1;
    let up = format!("{}outside/secret", "../".repeat(depth));
    let cases: Vec<(&str, Vec<Item>, &str)> = vec![
        (
            "absolute",
            vec![dir("etc", 0o755), symlink("etc/passwd", secret_str)],
            "key",
        ),
        (
            "relative",
            vec![dir("etc", 0o755), symlink("etc/passwd", &up)],
            "key",
        ),
        ("host-etc", vec![symlink("etc", "/etc")], "root"),
        (
            "group",
            vec![
                file("etc/passwd", "app:x:1000:1000::/:/bin/sh\n"),
                symlink("etc/group", secret_str),
            ],
            "app:key",
        ),
    ];
    for (tag, items, user) in cases {
        layout.add(
            Some(tag),
            &ImageSpec::new(vec![LayerSpec::new(Comp::None, items)]),
        );
        let img = image::unpack(&layout.dir, Some(tag), &store).unwrap();
        match image::resolve_user(user, &img.layers) {
            Err(Error::InvalidImage { reason, .. }) => assert!(
                reason.contains("does not define") || reason.contains("symbolic links (a loop?)"),
                "{tag}: {reason}"
            ),
            other => panic!("{tag}: {user:?} resolved through the host: {other:?}"),
        }
    }

    // /etc/passwd linking to /dev/zero is looked for in the image (where there is no such file),
    // in a bounded child in case it is read.
    layout.add(
        Some("zero"),
        &ImageSpec::new(vec![LayerSpec::new(
            Comp::None,
            vec![dir("etc", 0o755), symlink("etc/passwd", "/dev/zero")],
        )]),
    );
    let result = run_bounded(&layout.dir, &store, "zero", Some("nobody"));
    assert!(
        result.starts_with("invalid-image config.User\t") && result.contains("does not define"),
        "{result}"
    );
}

/// Names resolve as the sandbox sees the image: through the layers stacked as overlayfs stacks
/// them (the topmost file wins, whiteouts and opaque directories hide what is below, links
/// resolve across layers), and only a regular file of bounded size is read.
#[test]
fn the_image_user_is_looked_up_in_the_merged_layers() {
    let tmp = TempDir::new("image-user-merged");
    if !overlay_metadata_supported(tmp.path()) {
        return;
    }
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let bottom = || {
        LayerSpec::new(
            Comp::Gzip,
            vec![
                dir("etc", 0o755),
                file(
                    "etc/passwd",
                    "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
                ),
                file("etc/passwd.real", "app:x:2000:2001::/:/bin/sh\n"),
                file("etc/group", "root:x:0:\nstaff:x:50:app\n"),
            ],
        )
    };
    let top = |items: Vec<Item>| LayerSpec::new(Comp::None, items);
    let mut resolve = |tag: &str, layers: Vec<LayerSpec>, user: &str| {
        layout.add(Some(tag), &ImageSpec::new(layers));
        let img = image::unpack(&layout.dir, Some(tag), &store).unwrap();
        image::resolve_user(user, &img.layers)
    };
    let ok = |r: rsandbox::Result<(u32, Option<u32>)>| r.unwrap_or_else(|e| panic!("{e}"));
    let invalid = |r: rsandbox::Result<(u32, Option<u32>)>| match r {
        Err(Error::InvalidImage { path, reason }) => (path, reason),
        other => panic!("expected InvalidImage, got {other:?}"),
    };

    // Controls: one layer; numbers need no lookup.
    assert_eq!(
        ok(resolve("plain", vec![bottom()], "app")),
        (1000, Some(1000))
    );
    assert_eq!(
        ok(resolve("plain", vec![bottom()], "app:staff")),
        (1000, Some(50))
    );
    assert_eq!(
        ok(resolve("plain", vec![bottom()], "7:staff")),
        (7, Some(50))
    );
    assert_eq!(ok(resolve("plain", vec![bottom()], "7")), (7, None));
    assert_eq!(ok(resolve("plain", vec![bottom()], "7:8")), (7, Some(8)));

    // A link in an upper layer to a file of a lower one, relative or absolute.
    let relink = vec![bottom(), top(vec![symlink("etc/passwd", "passwd.real")])];
    assert_eq!(ok(resolve("relative", relink, "app")), (2000, Some(2001)));
    let abslink = vec![
        bottom(),
        top(vec![symlink("etc/passwd", "/etc/passwd.real")]),
    ];
    assert_eq!(ok(resolve("absolute", abslink, "app")), (2000, Some(2001)));
    let dirlink = vec![
        bottom(),
        top(vec![
            dir("alt", 0o755),
            file("alt/passwd", "app:x:3000:3001::/:/bin/sh\n"),
        ]),
        top(vec![
            opaque("etc"),
            symlink("etc/passwd", "../x/../alt/./passwd"),
            symlink("x", "alt"),
        ]),
    ];
    assert_eq!(ok(resolve("dir-link", dirlink, "app")), (3000, Some(3001)));

    // The topmost /etc/passwd is the one: it hides the lower one's names.
    let shadowed = vec![
        bottom(),
        top(vec![file("etc/passwd", "other:x:1:1::/:/bin/sh\n")]),
    ];
    let (path, reason) = invalid(resolve("shadowed", shadowed, "app"));
    assert_eq!(path, Path::new("config.User"));
    assert!(reason.contains("does not define"), "{reason}");
    // A whiteout of the file, or an opaque /etc, hides it too.
    let whited = vec![bottom(), top(vec![whiteout("etc/passwd")])];
    let (_, reason) = invalid(resolve("whiteout", whited, "app"));
    assert!(reason.contains("does not define"), "{reason}");
    let opaque_etc = vec![bottom(), top(vec![opaque("etc"), file("etc/motd", "hi\n")])];
    let (_, reason) = invalid(resolve("opaque", opaque_etc, "app"));
    assert!(reason.contains("does not define"), "{reason}");
    let whited_group = vec![bottom(), top(vec![whiteout("etc")])];
    let (_, reason) = invalid(resolve("whiteout-etc", whited_group, "7:staff"));
    assert!(reason.contains("does not define"), "{reason}");

    // Only regular files are read, and not without bound.
    let loop_ = vec![bottom(), top(vec![symlink("etc/passwd", "passwd")])];
    let (_, reason) = invalid(resolve("loop", loop_, "app"));
    assert!(reason.contains("symbolic links (a loop?)"), "{reason}");
    let a_dir = vec![bottom(), top(vec![opaque("etc"), dir("etc/passwd", 0o755)])];
    let (path, reason) = invalid(resolve("dir", a_dir, "app"));
    assert!(path.ends_with("etc/passwd"), "{}", path.display());
    assert!(
        reason.contains("not a regular file but a directory"),
        "{reason}"
    );
    let mut huge = b"app:x:1000:1000::/:/bin/sh\n".to_vec();
    huge.resize(image::MAX_ID_FILE_SIZE as usize + 1, b'#');
    let big = vec![bottom(), top(vec![file("etc/passwd", huge)])];
    let (path, reason) = invalid(resolve("huge", big, "app"));
    assert!(path.ends_with("etc/passwd"), "{}", path.display());
    assert!(reason.contains("larger than"), "{reason}");
    let bad_id = vec![
        bottom(),
        top(vec![file("etc/passwd", "app:x:me:1::/:/bin/sh\n")]),
    ];
    let (_, reason) = invalid(resolve("bad-id", bad_id, "app"));
    assert!(reason.contains("not a number"), "{reason}");
}

/// Per the OCI image spec a later entry replaces an earlier one of the same name, a directory
/// holding files included; what still cannot be unpacked is an invalid image naming the blob and
/// the entry, with the system's reason.
#[test]
fn a_later_entry_replaces_a_directory_tree() {
    let tmp = TempDir::new("image-replace-dir");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let items = vec![
        dir("f", 0o755),
        file("f/a", "a\n"),
        dir("f/sub", 0o555),
        file("f/sub/b", "b\n"),
        file("f", "now a file\n"),
        dir("l", 0o700),
        file("l/a", "a\n"),
        symlink("l", "f"),
        file("t", "target\n"),
        dir("h/deep", 0o755),
        file("h/deep/c", "c\n"),
        hardlink("h", "t"),
        // And back: a directory where a file was.
        file("d", "file\n"),
        dir("d", 0o750),
        file("d/e", "e\n"),
    ];
    layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::Gzip, items)]),
    );
    let img = image::unpack(&layout.dir, Some("x"), &store).unwrap();
    let layer = &img.layers[0];
    assert_eq!(read(layer.join("f")), "now a file\n");
    assert_eq!(fs::read_link(layer.join("l")).unwrap(), Path::new("f"));
    let (h, t) = (
        fs::symlink_metadata(layer.join("h")).unwrap(),
        fs::metadata(layer.join("t")).unwrap(),
    );
    assert_eq!(h.ino(), t.ino(), "h is a hard link to t");
    assert_eq!(read(layer.join("d/e")), "e\n");
    assert_eq!(
        fs::metadata(layer.join("d")).unwrap().mode() & 0o7777,
        0o750
    );
    no_temp_dirs(&store);

    // A hard link to a directory cannot be made: the blob and the entry are named.
    let items = vec![dir("dir", 0o755), hardlink("link", "dir")];
    let built = layout.add(
        Some("y"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::None, items)]),
    );
    let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("y"), &store));
    assert_eq!(path, built.layer_blobs[0]);
    assert!(reason.contains("\"link\""), "{reason}");
    assert!(reason.contains("os error"), "the errno is kept: {reason}");
    no_temp_dirs(&store);
}

/// The tar reader keeps a long name or PAX record in memory whole: one of many MiB (which
/// compresses to almost nothing) is refused once it passes the bound, not read to its end.
#[test]
fn oversized_tar_headers_are_refused() {
    let tmp = TempDir::new("image-long-name");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let long = "n".repeat(20 << 20);
    let built = layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(
            Comp::Gzip,
            vec![file("before", "b\n"), file(&long, "x")],
        )]),
    );
    let (path, reason) = expect_invalid(image::unpack(&layout.dir, Some("x"), &store));
    assert_eq!(path, built.layer_blobs[0]);
    assert!(reason.contains("bytes of headers"), "{reason}");
    assert_eq!(store_names(&store), Vec::<String>::new());
}

/// A layer of more entries than the store's free space is checked after (every
/// `SPACE_CHECK_ENTRIES`) unpacks whole: the check runs, and passes on a file system with room.
#[test]
fn a_layer_of_many_entries_passes_the_space_check() {
    let tmp = TempDir::new("image-many");
    let store = tmp.path().join("store");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let n = image::SPACE_CHECK_ENTRIES as usize * 2 + 1;
    let items: Vec<Item> = (0..n).map(|i| file(&format!("d/{i}"), "")).collect();
    layout.add(
        Some("x"),
        &ImageSpec::new(vec![LayerSpec::new(Comp::Zstd, items)]),
    );
    let img = image::unpack(&layout.dir, Some("x"), &store).unwrap();
    assert_eq!(fs::read_dir(img.layers[0].join("d")).unwrap().count(), n);
}
