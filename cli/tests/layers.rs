//! The CLI's layered-root options, run as a real process: `--overlay`, `--overlay-driver`,
//! `--upper`, `--upper-size`, `--image`, `--image-store`, the `diff` subcommand, and their spec
//! round trip. These check what the options put in the spec and what the user sees; the overlay's
//! own properties are proved at the library level (core/tests/overlay.rs and image.rs).
//!
//! Every layer is created here, under the temp dir, by the user running the test (root or not).

mod common;

#[path = "../../core/tests/oci_util/mod.rs"]
mod oci_util;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Static busybox, or None (with a skip) when busybox-static is missing.
fn busybox() -> Option<&'static str> {
    let found = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        skip("busybox-static is not installed (apt-get install busybox-static)");
    }
    found
}

/// The busybox applets the scripts below use.
const TOOLS: [&str; 10] = [
    "sh", "cat", "echo", "rm", "dd", "ls", "test", "pwd", "mkdir", "id",
];

/// Three lower layers, top-most first: `top`, `mid`, and `base` (busybox and the files).
struct Layers {
    _dir: TempDir,
    top: String,
    mid: String,
    base: String,
}

impl Layers {
    /// `top:mid:base`, the `--overlay` value.
    fn all(&self) -> String {
        format!("{}:{}:{}", self.top, self.mid, self.base)
    }

    /// Every file of the three layers with its content (or link target).
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for layer in [&self.top, &self.mid, &self.base] {
            tree(Path::new(layer), &mut out);
        }
        out
    }
}

fn tree(dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let desc = if meta.is_dir() {
            tree(&path, out);
            format!("dir {:o}", meta.mode())
        } else if meta.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(&path).unwrap().display())
        } else if path.ends_with("bin/busybox") {
            format!("file {:o} {}", meta.mode(), meta.len())
        } else {
            format!(
                "file {:o} {:?}",
                meta.mode(),
                std::fs::read_to_string(&path).unwrap()
            )
        };
        out.insert(path.display().to_string(), desc);
    }
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// The layers: `/etc/shadowed` is in all three, `/etc/mid-over-base` in mid and base, the rest
/// only in base.
fn layers() -> Option<Layers> {
    let busybox = busybox()?;
    let dir = TempDir::new("cli-layers");
    let base = dir.path().join("base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::copy(busybox, base.join("bin/busybox")).unwrap();
    for tool in TOOLS {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(tool)).unwrap();
    }
    write(
        &base,
        &[
            ("etc/shadowed", "base\n"),
            ("etc/mid-over-base", "base\n"),
            ("etc/base-only", "base\n"),
            ("etc/appended", "line1\n"),
            ("etc/doomed", "doomed\n"),
        ],
    );
    let mid = dir.path().join("mid");
    write(
        &mid,
        &[("etc/shadowed", "mid\n"), ("etc/mid-over-base", "mid\n")],
    );
    let top = dir.path().join("top");
    write(&top, &[("etc/shadowed", "top\n")]);
    let s = |p: PathBuf| p.display().to_string();
    Some(Layers {
        top: s(top),
        mid: s(mid),
        base: s(base),
        _dir: dir,
    })
}

/// Whether fuse-overlayfs can run here; skips (or fails under RSANDBOX_MUST_WORK=1) otherwise.
fn fuse_usable() -> bool {
    if !Path::new("/usr/bin/fuse-overlayfs").exists() {
        skip("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)");
        return false;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        skip(&format!(
            "/dev/fuse does not open read-write ({e}): chmod 0666 /dev/fuse (scripts/test does)"
        ));
        return false;
    }
    true
}

/// `--overlay-driver` values to try, with the name `--report` gives each.
fn drivers() -> Vec<(&'static str, &'static str)> {
    let mut d = vec![("kernel", "kernel overlayfs")];
    if fuse_usable() {
        d.push(("fuse", "fuse-overlayfs"));
    }
    d
}

/// `SCRIPT` on all the layers with `DRIVER` and the persistent upper `UP`.
#[track_caller]
fn on_upper(l: &Layers, driver: &str, up: &str, script: &str) -> Run {
    sh_in(
        &[
            "--overlay",
            &l.all(),
            "--overlay-driver",
            driver,
            "--upper",
            up,
        ],
        script,
    )
}

/// `rsandbox run --timeout 60 OPTIONS... -- /bin/sh -c SCRIPT`.
#[track_caller]
fn sh_in(options: &[&str], script: &str) -> Run {
    let mut opts = vec!["--timeout", "60"];
    opts.extend_from_slice(options);
    run_sh(&opts, script)
}

/// The `mount /` line of a `--report` (not `mount /proc`, …).
fn root_mount_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("mount") && words.next() == Some("/")
    })
}

/// `rsandbox run --print-spec OPTIONS... -- true`, parsed.
#[track_caller]
fn printed_spec(options: &[&str]) -> Value {
    let mut args = vec!["run", "--print-spec"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "true"]);
    let r = rsandbox(&args);
    assert_eq!(r.code, 0, "{args:?}: {r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

/// Asserts a clap usage error: exit 125 (never a code the command could give), `error: ` first,
/// and `needle` in the message.
#[track_caller]
fn assert_usage_error(args: &[&str], needle: &str) {
    let r = rsandbox(args);
    assert_eq!(r.code, 125, "{args:?}: {r:?}");
    assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
    assert!(r.stderr.contains(needle), "{args:?}: {r:?}");
    assert!(!r.stdout.contains("ran"), "{args:?}: {r:?}");
}

/// Asserts a refused setup: exit 125, `rsandbox: ` first, every needle in the message, and the
/// command (which prints `ran`) never started.
#[track_caller]
fn assert_setup_error(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.starts_with("rsandbox: "), "{r:?}");
    for n in needles {
        assert!(r.stderr.contains(n), "{n:?} missing: {r:?}");
    }
    assert!(!r.stdout.contains("ran"), "{r:?}");
}

/// A temp dir that may hold persistent uppers. Kernel overlayfs leaves `.NAME.work/work` with mode
/// 000, which only root could remove; the directories are opened up before the removal.
struct Scratch(TempDir);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(TempDir::new(tag))
    }
}

impl std::ops::Deref for Scratch {
    type Target = TempDir;

    fn deref(&self) -> &TempDir {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        fn open_up(dir: &Path) {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
        open_up(self.0.path());
    }
}

/// `DIR/.NAME.layers.json`, where the library records the lowers of a persistent upper `DIR/NAME`.
fn sidecar(upper: &Path) -> PathBuf {
    let name = upper.file_name().unwrap().to_string_lossy();
    upper.parent().unwrap().join(format!(".{name}.layers.json"))
}

// ---------------------------------------------------------------------------------------------
// --overlay and --overlay-driver

#[test]
fn overlay_reads_top_most_first_and_writes_never_reach_the_lowers() {
    let Some(l) = layers() else { return };
    let before = l.snapshot();
    for (driver, name) in drivers() {
        let r = sh_in(
            &[
                "--report",
                "--overlay",
                &l.all(),
                "--overlay-driver",
                driver,
            ],
            "cat /etc/shadowed /etc/mid-over-base /etc/base-only
             echo new > /etc/new; echo more >> /etc/appended; echo changed > /etc/shadowed
             rm /etc/doomed
             cat /etc/new /etc/appended /etc/shadowed; test -e /etc/doomed || echo doomed-gone",
        );
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (
                0,
                "top\nmid\nbase\nnew\nline1\nmore\nchanged\ndoomed-gone\n"
            ),
            "{driver}: {r:?}"
        );
        let line = root_mount_line(&r.stderr)
            .unwrap_or_else(|| panic!("{driver}: no `mount /` line: {}", r.stderr));
        assert!(
            line.contains("overlay") && line.contains(name),
            "{driver}: {line}"
        );
        // The layers, in the order given, are what the report names.
        let (t, m, b) = (
            line.find(&l.top).unwrap_or_else(|| panic!("{line}")),
            line.find(&l.mid).unwrap_or_else(|| panic!("{line}")),
            line.find(&l.base).unwrap_or_else(|| panic!("{line}")),
        );
        assert!(t < m && m < b, "{driver}: {line}");
        assert_eq!(l.snapshot(), before, "{driver}: a lower layer changed");
    }
    // The next run starts from the unchanged lowers again (the upper was ephemeral).
    let r = sh_in(
        &["--overlay", &l.all()],
        "cat /etc/shadowed /etc/doomed; test -e /etc/new || echo no-new",
    );
    assert_eq!(r.stdout, "top\ndoomed\nno-new\n", "{r:?}");
}

#[test]
fn overlay_order_on_the_command_line_decides_which_layer_wins() {
    let Some(l) = layers() else { return };
    // base above mid above top: base's files win now.
    let reversed = format!("{}:{}:{}", l.base, l.mid, l.top);
    let r = sh_in(
        &["--overlay", &reversed],
        "cat /etc/shadowed /etc/mid-over-base",
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "base\nbase\n"), "{r:?}");
    // Empty items of the list (`::`, a trailing `:`) are ignored.
    let sloppy = format!("{}::{}:{}:", l.mid, l.top, l.base);
    let r = sh_in(&["--overlay", &sloppy], "cat /etc/shadowed");
    assert_eq!((r.code, r.stdout.as_str()), (0, "mid\n"), "{r:?}");
}

#[test]
fn auto_driver_reports_which_overlay_it_chose() {
    let Some(l) = layers() else { return };
    for options in [
        &["--overlay-driver", "auto"][..],
        &[][..], // auto is the default
    ] {
        let mut opts = vec!["--report", "--overlay", &l.base];
        opts.extend_from_slice(options);
        let r = sh_in(&opts, "cat /etc/base-only");
        assert_eq!((r.code, r.stdout.as_str()), (0, "base\n"), "{r:?}");
        let line = root_mount_line(&r.stderr).unwrap_or_else(|| panic!("{}", r.stderr));
        assert!(
            line.contains("overlay")
                && (line.contains("kernel overlayfs") || line.contains("fuse-overlayfs")),
            "{options:?}: {line}"
        );
    }
}

#[test]
fn overlay_usage_errors_give_125() {
    assert_usage_error(
        &[
            "run",
            "--overlay",
            "/a",
            "--overlay-driver",
            "bogus",
            "--",
            "echo",
            "ran",
        ],
        "bogus",
    );
    assert_usage_error(
        &[
            "run",
            "--overlay",
            "/a",
            "--rootfs",
            "/",
            "--",
            "echo",
            "ran",
        ],
        "--rootfs",
    );
}

#[test]
fn bad_lowers_give_125_and_name_the_path() {
    let Some(l) = layers() else { return };
    let missing = format!("/nonexistent-lower-{}", marker());
    let list = format!("{}:{missing}", l.top);
    let r = sh_in(&["--overlay", &list], "echo ran");
    assert_setup_error(&r, &[&missing]);
    // A relative lower is the current directory's, as any path on a command line: missing
    // there, it is named as it resolved; there, it is used.
    let r = sh_in(&["--overlay", "relative/lower"], "echo ran");
    let cwd = std::env::current_dir().unwrap().join("relative/lower");
    assert_setup_error(&r, &[&cwd.display().to_string()]);
    let top = Path::new(&l.top);
    let name = |p: &str| {
        let p = Path::new(p);
        assert_eq!(p.parent(), top.parent(), "the layers are siblings");
        p.file_name().unwrap().to_str().unwrap().to_string()
    };
    let relative = format!("{}:{}:{}", name(&l.top), name(&l.mid), name(&l.base));
    let mut cmd = cli([
        "run",
        "--overlay",
        &relative,
        "--",
        "/bin/sh",
        "-c",
        "echo ran",
    ]);
    cmd.current_dir(top.parent().unwrap());
    let r = run_cmd(cmd, None);
    assert_eq!((r.code, r.stdout.as_str()), (0, "ran\n"), "{r:?}");
    // An empty list has no lower at all.
    let r = sh_in(&["--overlay", ":"], "echo ran");
    assert_setup_error(&r, &["lower"]);
}

// ---------------------------------------------------------------------------------------------
// --upper and diff

#[test]
fn persistent_upper_keeps_the_changes_and_diff_lists_exactly_them() {
    let Some(l) = layers() else { return };
    let before = l.snapshot();
    for (driver, _) in drivers() {
        let upper_dir = Scratch::new("cli-upper");
        let upper = upper_dir.path().join("changes");
        let up = upper.display().to_string();
        let r = on_upper(
            &l,
            driver,
            &up,
            "echo n > /etc/new; echo more >> /etc/appended; rm /etc/doomed",
        );
        assert_eq!(r.code, 0, "{driver}: {r:?}");
        assert_eq!(l.snapshot(), before, "{driver}: a lower layer changed");
        // The changes are files of the caller's.
        let new = upper.join("etc/new");
        assert_eq!(std::fs::read_to_string(&new).unwrap(), "n\n", "{driver}");
        assert_eq!(std::fs::metadata(&new).unwrap().uid(), my_uid(), "{driver}");

        let d = rsandbox(&["diff", &up]);
        assert_eq!(
            (d.code, d.stdout.as_str(), d.stderr.as_str()),
            (0, "A /etc/new\nM /etc/appended\nD /etc/doomed\n", ""),
            "{driver}: {d:?}"
        );

        // A second run on the same upper starts where the first stopped.
        let r = sh_in(
            &["--overlay", &l.all(), "--upper", &up],
            "cat /etc/new /etc/appended; test -e /etc/doomed || echo doomed-gone",
        );
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "n\nline1\nmore\ndoomed-gone\n"),
            "{driver}: {r:?}"
        );
    }
}

#[test]
fn diff_json_has_added_modified_and_deleted() {
    let Some(l) = layers() else { return };
    let upper_dir = Scratch::new("cli-diff-json");
    let up = upper_dir.join("u");
    let r = sh_in(
        &["--overlay", &l.all(), "--upper", &up],
        "mkdir /etc/newdir; echo x > /etc/newdir/f; echo more >> /etc/appended; echo t >> /etc/shadowed; rm /etc/doomed /etc/base-only",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let d = rsandbox(&["diff", "--json", &up]);
    assert_eq!(d.code, 0, "{d:?}");
    let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
    assert_eq!(
        v,
        json!({
            "added": ["/etc/newdir", "/etc/newdir/f"],
            "modified": ["/etc/appended", "/etc/shadowed"],
            "deleted": ["/etc/base-only", "/etc/doomed"],
        }),
        "{d:?}"
    );
    // Nothing changed: three empty lists, and no text at all.
    let empty = Scratch::new("cli-diff-empty");
    let up = empty.join("u");
    assert_eq!(
        sh_in(&["--overlay", &l.base, "--upper", &up], "true").code,
        0
    );
    let d = rsandbox(&["diff", "--json", &up]);
    let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
    assert_eq!(
        v,
        json!({"added": [], "modified": [], "deleted": []}),
        "{d:?}"
    );
    let d = rsandbox(&["diff", &up]);
    assert_eq!((d.code, d.stdout.as_str()), (0, ""), "{d:?}");
}

/// What a sandbox does in its upper cannot hide its changes from diff: a directory named like
/// an opaque marker or a whiteout is an added directory, and a directory made unreadable is
/// listed as such while the rest of the diff stands.
#[test]
fn diff_is_not_fooled_by_names_or_an_unreadable_directory() {
    if my_uid() == 0 {
        // root reads any directory: nothing is unreadable.
        eprintln!("as root every directory is readable: the unreadable case is the user's");
    }
    let Some(l) = layers() else { return };
    let dir = Scratch::new("cli-diff-tricks");
    let up = dir.join("u");
    let r = sh_in(
        &["--overlay", &l.all(), "--upper", &up],
        "mkdir -p /w/.wh..wh..opq /w/.wh.etc; echo x > /w/.wh..wh..opq/hidden; \
         mkdir /hide; echo y > /hide/f; chmod 000 /hide; echo z > /etc/appended",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let d = rsandbox(&["diff", "--json", &up]);
    assert_eq!(d.code, 0, "{d:?}");
    let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
    let added: Vec<&str> = v["added"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for path in [
        "/w/.wh..wh..opq",
        "/w/.wh..wh..opq/hidden",
        "/w/.wh.etc",
        "/hide",
    ] {
        assert!(added.contains(&path), "{path} not added: {v}");
    }
    assert!(v["deleted"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["modified"], json!(["/etc/appended"]), "{v}");
    if my_uid() != 0 {
        assert_eq!(v["unreadable"], json!(["/hide"]), "{v}");
    }
    // The text form marks it too.
    let t = rsandbox(&["diff", &up]);
    if my_uid() != 0 {
        assert!(t.stdout.lines().any(|l| l == "? /hide"), "{t:?}");
    }
    // Leave the scratch removable.
    let _ = std::fs::set_permissions(
        std::path::Path::new(&up).join("hide"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
}

/// A file named `.wh.NAME` is a whiteout only where fuse-overlayfs wrote the upper (the record
/// beside it says which drivers did); a directory whose own mode changed is listed as modified,
/// one copied up for a change below it is not.
#[test]
fn diff_knows_the_driver_and_sees_a_directory_changed_itself() {
    let Some(l) = layers() else { return };
    for (driver, _) in drivers() {
        let dir = Scratch::new("cli-diff-driver");
        let upper = dir.path().join("u");
        let up = upper.display().to_string();
        // fuse-overlayfs refuses names starting with .wh. (they are its whiteouts).
        let script = if driver == "kernel" {
            "chmod 750 /etc; echo x > /etc/.wh.doomed; echo y > /etc/.wh.nothing-below; \
             mkdir -p /bin/sub; echo z >> /etc/appended"
        } else {
            "chmod 750 /etc; mkdir -p /bin/sub; echo z >> /etc/appended; rm /etc/doomed"
        };
        let r = on_upper(&l, driver, &up, script);
        assert_eq!(r.code, 0, "{driver}: {r:?}");
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(sidecar(&upper)).unwrap()).unwrap();
        assert_eq!(
            record["fuse"],
            json!(driver == "fuse"),
            "{driver}: {record}"
        );
        let d = rsandbox(&["diff", "--json", &up]);
        let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
        if driver == "kernel" {
            assert_eq!(
                v,
                json!({
                    "added": ["/bin/sub", "/etc/.wh.doomed", "/etc/.wh.nothing-below"],
                    "modified": ["/etc", "/etc/appended"],
                    "deleted": [],
                }),
                "{driver}: {d:?}"
            );
        } else {
            assert_eq!(
                v,
                json!({
                    "added": ["/bin/sub"],
                    "modified": ["/etc", "/etc/appended"],
                    "deleted": ["/etc/doomed"],
                }),
                "{driver}: {d:?}"
            );
        }
    }
    // An upper whose past is unknown (a record without the driver, as before it was kept): a
    // .wh. file over something a lower has is taken as the whiteout it may be.
    let dir = Scratch::new("cli-diff-unknown");
    let upper = dir.path().join("u");
    let up = upper.display().to_string();
    let r = sh_in(
        &[
            "--overlay",
            &l.all(),
            "--overlay-driver",
            "kernel",
            "--upper",
            &up,
        ],
        "echo x > /etc/.wh.doomed; echo y > /etc/.wh.nothing-below",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let lowers = format!(
        "{{\"lowers\": [\"{}\", \"{}\", \"{}\"]}}",
        l.top, l.mid, l.base
    );
    std::fs::write(sidecar(&upper), lowers).unwrap();
    let d = rsandbox(&["diff", &up]);
    assert_eq!(
        d.stdout, "A /etc/.wh.nothing-below\nD /etc/doomed\n",
        "{d:?}"
    );
}

#[test]
fn diff_with_explicit_lowers_needs_no_record() {
    let Some(l) = layers() else { return };
    let upper_dir = Scratch::new("cli-diff-lower");
    let upper = upper_dir.path().join("u");
    let up = upper.display().to_string();
    let lowers = format!("{}:{}", l.top, l.base);
    let r = sh_in(
        &["--overlay", &lowers, "--upper", &up],
        "echo n > /etc/new; echo more >> /etc/appended; echo t >> /etc/shadowed; rm /etc/doomed",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let expected = "A /etc/new\nM /etc/appended\nM /etc/shadowed\nD /etc/doomed\n";
    assert_eq!(rsandbox(&["diff", &up]).stdout, expected);

    let record = sidecar(&upper);
    assert!(record.exists(), "no layer record at {}", record.display());
    std::fs::remove_file(&record).unwrap();
    // Without the record nothing tells a changed file from a new one ...
    let d = rsandbox(&["diff", &up]);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(!d.stdout.contains("M /etc/appended"), "{d:?}");
    assert!(d.stdout.contains("D /etc/doomed\n"), "{d:?}");
    // ... and --lower does: each one counts (/etc/appended is only in base).
    let d = rsandbox(&["diff", "--lower", &l.top, "--lower", &l.base, &up]);
    assert_eq!((d.code, d.stdout.as_str()), (0, expected), "{d:?}");
    let d = rsandbox(&["diff", "--lower", &l.top, &up]);
    assert_eq!(
        d.stdout, "A /etc/appended\nA /etc/new\nM /etc/shadowed\nD /etc/doomed\n",
        "{d:?}"
    );
    let d = rsandbox(&["diff", "--json", "--lower", &l.top, "--lower", &l.base, &up]);
    let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
    assert_eq!(v["modified"], json!(["/etc/appended", "/etc/shadowed"]));
}

/// Names a sandbox chooses cannot forge lines of `diff` nor merge two changes into one: each
/// change is one line with its name escaped (`\n`, `\xNN` for a byte that is not UTF-8), and
/// `--json` keeps every byte (a path that is not UTF-8 as `{"base64": ...}`).
#[test]
fn diff_text_cannot_be_forged_and_json_keeps_every_byte() {
    let Some(l) = layers() else { return };
    for (driver, _) in drivers() {
        let dir = Scratch::new("cli-diff-names");
        let up = dir.join("u");
        let r = on_upper(
            &l,
            driver,
            &up,
            r#"set -e; cd /etc; f=$(printf 'z\nD ')
               mkdir -p "/$f/etc"; echo x > "/$f/etc/shadowed"
               echo x > "$(printf 'bad\377name')"; echo x > "$(printf 'bad\357\277\275name')""#,
        );
        assert_eq!(r.code, 0, "{driver}: {r:?}");
        let t = rsandbox(&["diff", &up]);
        assert_eq!(
            (t.code, t.stdout.as_str()),
            (
                0,
                "A /etc/bad\u{fffd}name\n\
                 A /etc/bad\\xffname\n\
                 A /z\\nD \n\
                 A /z\\nD /etc\n\
                 A /z\\nD /etc/shadowed\n"
            ),
            "{driver}: {t:?}"
        );
        assert!(
            !t.stdout.lines().any(|l| l == "D /etc/shadowed"),
            "{driver}: {t:?}"
        );
        let d = rsandbox(&["diff", "--json", &up]);
        assert_eq!(d.code, 0, "{driver}: {d:?}");
        let v: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
        assert_eq!(
            v,
            json!({
                "added": [
                    "/etc/bad\u{fffd}name",
                    {"base64": "L2V0Yy9iYWT/bmFtZQ=="},
                    "/z\nD ",
                    "/z\nD /etc",
                    "/z\nD /etc/shadowed",
                ],
                "modified": [],
                "deleted": [],
            }),
            "{driver}: {d:?}"
        );
    }
}

/// A sandbox can nest directories past the host's PATH_MAX (moving chains it can name into one
/// another): `diff` still succeeds and lists every other change, and a directory too deep to
/// list is marked `?`.
#[test]
fn diff_of_an_upper_nested_past_path_max_still_lists_the_rest() {
    let Some(l) = layers() else { return };
    for (driver, _) in drivers() {
        let dir = Scratch::new("cli-diff-deep");
        let up = dir.join("u");
        // 3 x 15 levels of 200-character names: /deep is about 9000 bytes deep.
        let r = on_upper(
            &l,
            driver,
            &up,
            "set -e; rm /etc/doomed; n=$(printf %0200d 0); c=$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n; \
             mkdir -p /deep/$c /w/a/$c /w/b/$c; mv /w/b/$n /w/a/$c/; mv /w/a/$n /deep/$c/",
        );
        assert_eq!(r.code, 0, "{driver}: {r:?}");
        let t = rsandbox(&["diff", &up]);
        assert_eq!(t.code, 0, "{driver}: {t:?}");
        assert!(
            t.stdout.lines().any(|l| l == "D /etc/doomed"),
            "{driver}: {t:?}"
        );
        let n = "0".repeat(200);
        let unreadable: Vec<&str> = t.stdout.lines().filter(|l| l.starts_with("? ")).collect();
        assert_eq!(unreadable.len(), 1, "{driver}: {unreadable:?}");
        assert!(
            unreadable[0].starts_with(&format!("? /deep/{n}/{n}/")),
            "{driver}: {unreadable:?}"
        );
        // The deepest listed directory is no deeper than diff lists.
        let longest = t.stdout.lines().map(str::len).max().unwrap();
        assert!(longest <= 2 + 2 * 4096 + 201, "{driver}: {longest}");
    }
}

/// A persistent upper another user could write to (made world-writable, or below a directory
/// others can write that is not sticky), or that another user made, is refused before the
/// command runs, with the remedy.
#[test]
fn an_upper_others_could_write_is_refused() {
    let Some(l) = layers() else { return };
    let dir = Scratch::new("cli-foreign-upper");
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let r = on_upper(&l, "kernel", &open.display().to_string(), "echo ran");
    assert_setup_error(&r, &["writable by others", "only uid"]);
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let r = on_upper(&l, "kernel", &dir.join("shared/u"), "echo ran");
    assert_setup_error(&r, &["writable by others", "only uid"]);
    assert!(!shared.join("u").exists(), "created before it was refused");
    if my_uid() == 0 {
        // Another user's upper, holding a planted file.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir_all(theirs.join("bin")).unwrap();
        std::fs::write(theirs.join("bin/planted"), "#!/bin/sh\necho planted\n").unwrap();
        for p in [
            theirs.clone(),
            theirs.join("bin"),
            theirs.join("bin/planted"),
        ] {
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        let r = on_upper(&l, "kernel", &theirs.display().to_string(), "echo ran");
        assert_setup_error(&r, &["owned by uid 65534", "only uid 0"]);
    }
}

#[test]
fn diff_of_a_missing_upper_gives_125_and_names_the_path() {
    let missing = format!("/nonexistent-upper-{}", marker());
    for json in [false, true] {
        let mut args = vec!["diff"];
        if json {
            args.push("--json");
        }
        args.push(&missing);
        let r = rsandbox(&args);
        assert_eq!((r.code, r.stdout.as_str()), (125, ""), "{r:?}");
        assert!(r.stderr.starts_with("rsandbox: "), "{r:?}");
        assert!(r.stderr.contains(&missing), "{r:?}");
    }
    // A file is no upper either.
    let dir = TempDir::new("cli-diff-file");
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let r = rsandbox(&["diff", &file]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains(&file), "{r:?}");
    // No upper at all is a usage error.
    let r = rsandbox(&["diff"]);
    assert_eq!(r.code, 125, "{r:?}");
}

#[test]
fn layer_options_without_a_layered_root_give_125() {
    let dir = TempDir::new("cli-no-layers");
    let upper = dir.join("upper");
    for options in [
        &["--upper", upper.as_str()][..],
        &["--upper-size", "1M"][..],
        &["--overlay-driver", "kernel"][..],
        &["--rootfs", "/", "--upper", upper.as_str()][..],
    ] {
        let r = sh_in(options, "echo ran");
        assert_setup_error(&r, &[options[options.len() - 2], "--overlay or --image"]);
    }
    assert!(
        !Path::new(&upper).exists(),
        "a refused --upper was created anyway"
    );
}

// ---------------------------------------------------------------------------------------------
// --upper-size

#[test]
fn upper_size_caps_the_ephemeral_upper() {
    let Some(l) = layers() else { return };
    let fill = "dd if=/dev/zero of=/big bs=65536 count=32 && echo fit";
    let r = sh_in(&["--overlay", &l.base, "--upper-size", "1M"], fill);
    assert_ne!(r.code, 0, "2 MiB fit in a 1 MiB upper: {r:?}");
    assert!(!r.stdout.contains("fit"), "{r:?}");
    assert!(r.stderr.contains("No space left on device"), "{r:?}");
    // Negative controls: the same write fits without the cap and under a larger one.
    for options in [&[][..], &["--upper-size", "4M"][..]] {
        let mut opts = vec!["--overlay", &l.base];
        opts.extend_from_slice(options);
        let r = sh_in(&opts, fill);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "fit\n"),
            "{options:?}: {r:?}"
        );
    }
}

#[test]
fn upper_size_suffixes_and_bad_sizes() {
    for (text, bytes) in [
        ("512", 512u64),
        ("1K", 1 << 10),
        ("4k", 4 << 10),
        ("3M", 3 << 20),
        ("2m", 2 << 20),
        ("1G", 1 << 30),
        ("5g", 5 << 30),
    ] {
        let v = printed_spec(&["--overlay", "/a", "--upper-size", text]);
        let upper = &v["filesystem"]["root"]["overlay"]["upper"];
        assert_eq!(upper, &json!({"ephemeral": {"size": bytes}}), "{text}");
    }
    for bad in ["12Q", "", "M", "1.5M", "-1", "1 M", "99999999999G"] {
        let value = format!("--upper-size={bad}");
        assert_usage_error(
            &["run", "--overlay", "/a", &value, "--", "echo", "ran"],
            "--upper-size",
        );
    }
    // A capped ephemeral upper and a persistent one are exclusive.
    assert_usage_error(
        &[
            "run",
            "--overlay",
            "/a",
            "--upper",
            "/u",
            "--upper-size",
            "1M",
            "--",
            "echo",
            "ran",
        ],
        "--upper",
    );
}

// ---------------------------------------------------------------------------------------------
// --print-spec and --spec

#[test]
fn overlay_options_fill_the_printed_spec() {
    let v = printed_spec(&[
        "--overlay",
        "/a::/b:",
        "--upper",
        "/u",
        "--overlay-driver",
        "fuse",
    ]);
    assert_eq!(
        v["filesystem"]["root"]["overlay"],
        json!({
            "lowers": ["/a", "/b"],
            "image": null,
            "upper": {"persistent": {"path": "/u"}},
            "driver": "fuse",
        }),
        "{v}"
    );
    for driver in ["auto", "kernel", "fuse"] {
        let v = printed_spec(&["--overlay", "/a", "--overlay-driver", driver]);
        assert_eq!(v["filesystem"]["root"]["overlay"]["driver"], driver, "{v}");
    }
    // Without options: an ephemeral upper without a cap, and the automatic driver.
    let v = printed_spec(&["--overlay", "/a"]);
    let ov = &v["filesystem"]["root"]["overlay"];
    assert_eq!(ov["upper"], json!({"ephemeral": {"size": null}}), "{v}");
    assert_eq!(ov["driver"], "auto", "{v}");
    // An image: DIR[:TAG] and the store.
    let v = printed_spec(&["--image", "/img/layout:v1.2", "--image-store", "/s"]);
    assert_eq!(
        v["filesystem"]["root"]["overlay"],
        json!({
            "lowers": [],
            "image": {"layout": "/img/layout", "tag": "v1.2", "store": "/s"},
            "upper": {"ephemeral": {"size": null}},
            "driver": "auto",
        }),
        "{v}"
    );
    let v = printed_spec(&["--image", "/img/layout"]);
    assert_eq!(
        v["filesystem"]["root"]["overlay"]["image"],
        json!({"layout": "/img/layout", "tag": null, "store": null}),
        "{v}"
    );
}

#[test]
fn printed_overlay_spec_round_trips_through_spec() {
    let Some(l) = layers() else { return };
    let dir = Scratch::new("cli-spec-rt");
    let upper = dir.path().join("u");
    let up = upper.display().to_string();
    let lowers = format!("{}:{}", l.top, l.base);
    let printed = rsandbox(&[
        "run",
        "--print-spec",
        "--overlay",
        &lowers,
        "--upper",
        &up,
        "--overlay-driver",
        "kernel",
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/shadowed; echo s > /etc/from-spec",
    ]);
    assert_eq!(printed.code, 0, "{printed:?}");
    let v: Value = serde_json::from_str(&printed.stdout).unwrap();
    assert_eq!(
        v["filesystem"]["root"]["overlay"],
        json!({
            "lowers": [l.top, l.base],
            "image": null,
            "upper": {"persistent": {"path": up}},
            "driver": "kernel",
        }),
        "{v}"
    );
    assert!(!upper.exists(), "--print-spec created the upper");
    let file = dir.join("spec.json");
    std::fs::write(&file, &printed.stdout).unwrap();

    // The file prints back unchanged, and runs.
    let again = rsandbox(&["run", "--print-spec", "--spec", &file]);
    assert_eq!(
        (again.code, again.stdout.as_str()),
        (0, printed.stdout.as_str())
    );
    let r = rsandbox(&["run", "--timeout", "60", "--spec", &file]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "top\n"), "{r:?}");
    let d = rsandbox(&["diff", &up]);
    assert_eq!(d.stdout, "A /etc/from-spec\n", "{d:?}");

    // Options override single fields of the file's overlay and keep the rest.
    let ov = |options: &[&str]| {
        let mut opts = vec!["--spec", file.as_str()];
        opts.extend_from_slice(options);
        printed_spec(&opts)["filesystem"]["root"]["overlay"].clone()
    };
    let o = ov(&["--overlay-driver", "fuse"]);
    assert_eq!(
        (
            &o["driver"],
            &o["lowers"],
            &o["upper"]["persistent"]["path"]
        ),
        (&json!("fuse"), &json!([l.top, l.base]), &json!(up)),
        "{o}"
    );
    let o = ov(&["--overlay", &l.mid]);
    assert_eq!(
        (
            &o["driver"],
            &o["lowers"],
            &o["upper"]["persistent"]["path"]
        ),
        (&json!("kernel"), &json!([l.mid]), &json!(up)),
        "{o}"
    );
    let o = ov(&["--upper-size", "2M"]);
    assert_eq!(o["upper"], json!({"ephemeral": {"size": 2 << 20}}), "{o}");
    assert_eq!(o["lowers"], json!([l.top, l.base]), "{o}");
    // The file's layered root is enough for --upper.
    let other = dir.join("other");
    let o = ov(&["--upper", &other]);
    assert_eq!(o["upper"], json!({"persistent": {"path": other}}), "{o}");
}

// ---------------------------------------------------------------------------------------------
// --image

/// An OCI layout with two tagged images, `v1` and `v2`, whose configs set Cmd, Env and
/// WorkingDir; None (with a skip) without busybox.
fn image_layout(dir: &Path) -> Option<PathBuf> {
    use oci_util::{dir as d, file, file_mode, symlink, Comp, ImageSpec, LayerSpec, Layout};
    let busybox = busybox()?;
    let mut bottom = vec![
        d("bin", 0o755),
        file_mode("bin/busybox", std::fs::read(busybox).unwrap(), 0o755),
        d("etc", 0o755),
        file("etc/motd", "bottom motd\n"),
        d("opt", 0o755),
        d("opt/app", 0o755),
    ];
    for tool in TOOLS {
        bottom.push(symlink(&format!("bin/{tool}"), "busybox"));
    }
    let mut layout = Layout::new(&dir.join("layout"));
    for (tag, motd) in [("v1", "motd v1\n"), ("v2", "motd v2\n")] {
        let mut image = ImageSpec::new(vec![
            LayerSpec::new(Comp::Gzip, bottom.clone()),
            LayerSpec::new(Comp::Zstd, vec![file("etc/motd", motd)]),
        ]);
        image.config = json!({
            "Env": ["GREETING=hello", "PATH=/bin"],
            "Cmd": ["/bin/sh", "-c", "echo $GREETING; pwd; cat /etc/motd"],
            "WorkingDir": "/opt/app",
        });
        layout.add(Some(tag), &image);
    }
    Some(layout.dir)
}

#[test]
fn image_config_runs_by_default() {
    let dir = TempDir::new("cli-image-default");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let store = dir.join("store");
    for (tag, motd) in [("v1", "motd v1\n"), ("v2", "motd v2\n")] {
        let image = format!("{}:{tag}", layout.display());
        let r = rsandbox(&[
            "run",
            "--timeout",
            "60",
            "--image",
            &image,
            "--image-store",
            &store,
        ]);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, format!("hello\n/opt/app\n{motd}").as_str()),
            "{tag}: {r:?}"
        );
    }
}

#[test]
fn image_command_line_overrides_cmd_and_keeps_env_and_workdir() {
    let dir = TempDir::new("cli-image-cmd");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let store = dir.join("store");
    let image = format!("{}:v1", layout.display());
    let opts = ["--report", "--image", &image, "--image-store", &store];
    let r = sh_in(&opts, "echo mine; echo $GREETING; pwd; cat /etc/motd");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "mine\nhello\n/opt/app\nmotd v1\n"),
        "{r:?}"
    );
    let line = root_mount_line(&r.stderr).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("overlay"), "{line}");
    // --env and --cwd win over the image's Env and WorkingDir.
    let mut more = opts.to_vec();
    more.extend_from_slice(&["--env", "GREETING=hi", "--cwd", "/etc"]);
    let r = sh_in(&more, "echo $GREETING; pwd");
    assert_eq!((r.code, r.stdout.as_str()), (0, "hi\n/etc\n"), "{r:?}");
}

#[test]
fn image_store_holds_the_unpacked_layers() {
    let dir = TempDir::new("cli-image-store");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let store = dir.path().join("my-store");
    let image = format!("{}:v1", layout.display());
    let r = sh_in(
        &[
            "--image",
            &image,
            "--image-store",
            &store.display().to_string(),
        ],
        "cat /etc/motd",
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "motd v1\n"), "{r:?}");
    let sha = store.join("sha256");
    assert!(sha.is_dir(), "no sha256/ in the store {}", store.display());
    let layers = std::fs::read_dir(&sha)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert!(layers >= 2, "{layers} entries in {}", sha.display());
    assert_eq!(std::fs::metadata(&sha).unwrap().uid(), my_uid());
}

#[test]
fn image_lowers_from_overlay_go_above_the_image() {
    let dir = TempDir::new("cli-image-overlay");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let extra = dir.path().join("extra");
    write(&extra, &[("etc/motd", "extra motd\n")]);
    let image = format!("{}:v2", layout.display());
    let r = sh_in(
        &[
            "--overlay",
            &extra.display().to_string(),
            "--image",
            &image,
            "--image-store",
            &dir.join("store"),
        ],
        "cat /etc/motd; echo $GREETING",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "extra motd\nhello\n"),
        "{r:?}"
    );
}

#[test]
fn image_with_a_persistent_upper_diffs_against_the_image() {
    let dir = Scratch::new("cli-image-upper");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let upper = dir.join("upper");
    let image = format!("{}:v1", layout.display());
    let r = sh_in(
        &[
            "--image",
            &image,
            "--image-store",
            &dir.join("store"),
            "--upper",
            &upper,
        ],
        "echo more >> /etc/motd; echo n > /opt/app/new",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let d = rsandbox(&["diff", &upper]);
    assert_eq!(
        (d.code, d.stdout.as_str()),
        (0, "A /opt/app/new\nM /etc/motd\n"),
        "{d:?}"
    );
}

#[test]
fn image_tag_errors_list_the_tags() {
    let dir = TempDir::new("cli-image-tag");
    let Some(layout) = image_layout(dir.path()) else {
        return;
    };
    let store = dir.join("store");
    let image = format!("{}:nope", layout.display());
    let r = sh_in(&["--image", &image, "--image-store", &store], "echo ran");
    assert_setup_error(&r, &["nope", "v1", "v2"]);
    // Two images and no tag: which one is ambiguous.
    let image = layout.display().to_string();
    let r = sh_in(&["--image", &image, "--image-store", &store], "echo ran");
    assert_setup_error(&r, &["v1", "v2"]);
    // A layout that is not there is named.
    let missing = format!("/nonexistent-layout-{}", marker());
    let r = sh_in(&["--image", &missing, "--image-store", &store], "echo ran");
    assert_setup_error(&r, &[&missing]);
}

#[test]
fn image_and_rootfs_are_exclusive() {
    assert_usage_error(
        &[
            "run", "--image", "/l:v1", "--rootfs", "/", "--", "echo", "ran",
        ],
        "--rootfs",
    );
}
