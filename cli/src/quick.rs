//! A quick reading of ordinary `rsandbox run` command lines.
//!
//! clap builds its whole model of the command line before reading it: ~0.12 ms of a cold
//! `rsandbox run`, a twentieth of the whole run, against a few microseconds for a direct scan.
//! This scan knows `run`'s long options (the table below, which a test holds equal to clap's
//! definition) and accepts only what clap accepts with the same meaning: every option once (the
//! repeatable ones any number of times), `--name value` or `--name=value` with a plain value,
//! the command after `--`. Anything else (help, version, short options, a missing, empty or
//! dash-led value, an unknown option, a repeated single option, a value clap would refuse, a
//! conflict) returns None and clap reads the command line instead, so every message and every
//! exit status stays clap's. A test compares the two readings over every option, form and pair.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{DriverArg, LevelArg, NetArg, NsArg, OnOffArg, RunArgs};

/// How an option's value is read.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    /// No value (a flag).
    Flag,
    /// One value; the option at most once.
    One,
    /// One value each time; the option any number of times.
    Many,
}

/// `run`'s long options, with how clap takes each.
pub(crate) const OPTIONS: &[(&str, Kind)] = &[
    ("spec", Kind::One),
    ("rootfs", Kind::One),
    ("rootfs-writable", Kind::Flag),
    ("overlay", Kind::One),
    ("overlay-driver", Kind::One),
    ("upper", Kind::One),
    ("upper-size", Kind::One),
    ("image", Kind::One),
    ("image-store", Kind::One),
    ("bind", Kind::Many),
    ("ro-bind", Kind::Many),
    ("tmpfs", Kind::Many),
    ("hostname", Kind::One),
    ("uid", Kind::One),
    ("gid", Kind::One),
    ("root", Kind::Flag),
    ("map-range", Kind::Flag),
    ("net", Kind::One),
    ("share", Kind::Many),
    ("time-ns", Kind::Flag),
    ("env", Kind::Many),
    ("cwd", Kind::One),
    ("timeout", Kind::One),
    ("memory", Kind::One),
    ("memory-swap", Kind::One),
    ("pids", Kind::One),
    ("cpus", Kind::One),
    ("cpu-weight", Kind::One),
    ("cpu-time", Kind::One),
    ("output-limit", Kind::One),
    ("cgroup-parent", Kind::One),
    ("limits", Kind::One),
    ("seccomp", Kind::One),
    ("landlock", Kind::One),
    ("landlock-rw", Kind::Many),
    ("landlock-ro", Kind::Many),
    ("cap-keep", Kind::Many),
    ("rlimit", Kind::Many),
    ("allow-nested-userns", Kind::Flag),
    ("no-mask-proc", Kind::Flag),
    ("json-result", Kind::One),
    ("report", Kind::Flag),
    ("print-spec", Kind::Flag),
];

/// `run`'s arguments from `argv` (the whole command line, program name first), or None when
/// clap must read it.
pub(crate) fn parse_run(argv: &[OsString]) -> Option<RunArgs> {
    let mut words = argv.iter().skip(1).map(|w| w.to_str());
    if words.next()? != Some("run") {
        return None;
    }
    let mut a = RunArgs::default();
    let mut seen = [false; OPTIONS.len()];
    while let Some(word) = words.next() {
        let word = word?;
        if word == "--" {
            for w in words.by_ref() {
                a.command.push(w?.to_string());
            }
            break;
        }
        let body = word.strip_prefix("--")?;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let index = OPTIONS.iter().position(|(n, _)| *n == name)?;
        let kind = OPTIONS[index].1;
        if kind != Kind::Many && std::mem::replace(&mut seen[index], true) {
            return None;
        }
        let value = match (kind, inline) {
            (Kind::Flag, Some(_)) => return None,
            (Kind::Flag, None) => "",
            (_, Some(v)) => v,
            (_, None) => words.next()??,
        };
        if kind != Kind::Flag && (value.is_empty() || value.starts_with('-')) {
            return None;
        }
        set(&mut a, name, value)?;
    }
    // clap's requires / conflicts_with: left to clap to explain.
    let conflicts = (a.rootfs_writable && a.rootfs.is_none())
        || (a.overlay.is_some() && a.rootfs.is_some())
        || (a.image.is_some() && a.rootfs.is_some())
        || (a.upper_size.is_some() && a.upper.is_some())
        || (a.image_store.is_some() && a.image.is_none())
        || (a.root && (a.uid.is_some() || a.gid.is_some()));
    (!conflicts).then_some(a)
}

/// Stores one option's value; None when clap's reading of the value might differ.
fn set(a: &mut RunArgs, name: &str, v: &str) -> Option<()> {
    let path = || PathBuf::from(v);
    match name {
        "spec" => a.spec = Some(path()),
        "rootfs" => a.rootfs = Some(path()),
        "rootfs-writable" => a.rootfs_writable = true,
        "overlay" => a.overlay = Some(v.into()),
        "overlay-driver" => {
            a.overlay_driver = Some(match v {
                "auto" => DriverArg::Auto,
                "kernel" => DriverArg::Kernel,
                "fuse" => DriverArg::Fuse,
                _ => return None,
            })
        }
        "upper" => a.upper = Some(path()),
        "upper-size" => a.upper_size = Some(crate::parse_size(v).ok()?),
        "image" => a.image = Some(v.into()),
        "image-store" => a.image_store = Some(path()),
        "bind" => a.bind.push(v.into()),
        "ro-bind" => a.ro_bind.push(v.into()),
        "tmpfs" => a.tmpfs.push(v.into()),
        "hostname" => a.hostname = Some(v.into()),
        "uid" => a.uid = Some(u32::try_from(integer(v)?).ok()?),
        "gid" => a.gid = Some(u32::try_from(integer(v)?).ok()?),
        "root" => a.root = true,
        "map-range" => a.map_range = true,
        "net" => {
            a.net = Some(match v {
                "none" => NetArg::None,
                "host" => NetArg::Host,
                _ => return None,
            })
        }
        "share" => a.share.push(match v {
            "user" => NsArg::User,
            "mount" => NsArg::Mount,
            "pid" => NsArg::Pid,
            "ipc" => NsArg::Ipc,
            "uts" => NsArg::Uts,
            "net" => NsArg::Net,
            "cgroup" => NsArg::Cgroup,
            _ => return None,
        }),
        "time-ns" => a.time_ns = true,
        "env" => a.env.push(v.into()),
        "cwd" => a.cwd = Some(v.into()),
        "timeout" => a.timeout = Some(decimal(v)?),
        "memory" => a.memory = Some(crate::parse_size(v).ok()?),
        "memory-swap" => a.memory_swap = Some(crate::parse_size(v).ok()?),
        "pids" => a.pids = Some(integer(v)?),
        "cpus" => a.cpus = Some(decimal(v)?),
        "cpu-weight" => a.cpu_weight = Some(integer(v)?),
        "cpu-time" => a.cpu_time = Some(decimal(v)?),
        "output-limit" => a.output_limit = Some(crate::parse_size(v).ok()?),
        "cgroup-parent" => a.cgroup_parent = Some(path()),
        "limits" => {
            a.limits = Some(match v {
                "required" => LevelArg::Required,
                "best-effort" => LevelArg::BestEffort,
                _ => return None,
            })
        }
        "seccomp" => a.seccomp = Some(v.into()),
        "landlock" => {
            a.landlock = Some(match v {
                "on" => OnOffArg::On,
                "required" => OnOffArg::Required,
                "off" => OnOffArg::Off,
                _ => return None,
            })
        }
        "landlock-rw" => a.landlock_rw.push(v.into()),
        "landlock-ro" => a.landlock_ro.push(v.into()),
        "cap-keep" => a.cap_keep.push(v.into()),
        "rlimit" => a.rlimit.push(v.into()),
        "allow-nested-userns" => a.allow_nested_userns = true,
        "no-mask-proc" => a.no_mask_proc = true,
        "json-result" => a.json_result = Some(path()),
        "report" => a.report = true,
        "print-spec" => a.print_spec = true,
        _ => return None,
    }
    Some(())
}

/// Plain decimal digits only (clap also takes forms this scan leaves to it).
fn integer(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Digits with at most one '.' between digits.
fn decimal(v: &str) -> Option<f64> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(whole) && digits(frac)) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::{ArgAction, CommandFactory, Parser};

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// clap's reading: Some(args) when it accepts the command line as `run`.
    fn clap_reading(argv: &[OsString]) -> Option<RunArgs> {
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Run(a),
            }) => Some(*a),
            _ => None,
        }
    }

    /// Asserts the quick reading is clap's whenever it gives one; returns whether it did.
    fn agrees(words: &[&str]) -> bool {
        let argv = os(words);
        let quick = parse_run(&argv);
        if let Some(q) = &quick {
            assert_eq!(
                Some(q),
                clap_reading(&argv).as_ref(),
                "the quick reading differs from clap's for {words:?}"
            );
        }
        quick.is_some()
    }

    /// A value clap accepts for each option (the flags take none).
    fn sample(name: &str) -> &'static str {
        match name {
            "overlay-driver" => "fuse",
            "net" => "none",
            "share" => "net",
            "limits" => "best-effort",
            "landlock" => "required",
            "upper-size" | "memory" | "memory-swap" | "output-limit" => "64M",
            "uid" | "gid" | "pids" | "cpu-weight" => "1000",
            "timeout" | "cpus" | "cpu-time" => "2.5",
            "env" => "K=V",
            "rlimit" => "nofile=64",
            "bind" | "ro-bind" => "/srv:/data",
            "tmpfs" => "/scratch:1M",
            _ => "/some/path",
        }
    }

    fn with_option(name: &str, kind: Kind, inline: bool) -> Vec<String> {
        let mut w = vec!["rsandbox".to_string(), "run".to_string()];
        // The options clap wants company for.
        match name {
            "rootfs-writable" => w.extend(["--rootfs".into(), "/r".into()]),
            "image-store" => w.extend(["--image".into(), "/layout:tag".into()]),
            _ => {}
        }
        match (kind, inline) {
            (Kind::Flag, _) => w.push(format!("--{name}")),
            (_, true) => w.push(format!("--{name}={}", sample(name))),
            (_, false) => w.extend([format!("--{name}"), sample(name).to_string()]),
        }
        w.extend(["--".into(), "echo".into(), "-n".into(), "--x".into()]);
        w
    }

    #[test]
    fn the_table_is_clap_s_definition_of_run() {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").unwrap();
        let mut clap_options: Vec<(String, Kind)> = run
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?.to_string();
                let kind = match arg.get_action() {
                    ArgAction::SetTrue => Kind::Flag,
                    ArgAction::Append => Kind::Many,
                    ArgAction::Set => Kind::One,
                    ArgAction::Help | ArgAction::Version => return None,
                    other => panic!("--{long}: action {other:?} unknown to the quick reading"),
                };
                Some((long, kind))
            })
            .collect();
        clap_options.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ours: Vec<(String, Kind)> =
            OPTIONS.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        ours.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ours, clap_options);
    }

    #[test]
    fn every_option_in_both_forms_reads_as_clap_reads_it() {
        for &(name, kind) in OPTIONS {
            for inline in [false, true] {
                let w = with_option(name, kind, inline);
                let words: Vec<&str> = w.iter().map(String::as_str).collect();
                assert!(agrees(&words), "not read quickly: {words:?}");
            }
        }
        assert!(agrees(&["rsandbox", "run", "--", "/bin/true"]));
        assert!(agrees(&["rsandbox", "run"]));
        assert!(agrees(&["rsandbox", "run", "--", "sh", "--", "-c", ""]));
    }

    #[test]
    fn every_pair_of_options_reads_as_clap_reads_it() {
        let mut quick = 0;
        for &(a, ka) in OPTIONS {
            for &(b, kb) in OPTIONS {
                let mut w = with_option(a, ka, false);
                let tail = with_option(b, kb, true);
                // Splice b's option (and any company it needs) in before "--".
                let cut = w.iter().position(|x| x == "--").unwrap();
                let extra: Vec<String> =
                    tail[2..tail.iter().position(|x| x == "--").unwrap()].to_vec();
                w.splice(cut..cut, extra);
                let words: Vec<&str> = w.iter().map(String::as_str).collect();
                if agrees(&words) {
                    quick += 1;
                }
            }
        }
        // Repeats of single options and conflicting pairs go to clap; the rest are quick.
        assert!(
            quick > OPTIONS.len() * OPTIONS.len() / 2,
            "only {quick} quick"
        );
    }

    #[test]
    fn what_clap_must_explain_is_left_to_clap() {
        for words in [
            &["rsandbox", "run", "--help"][..],
            &["rsandbox", "run", "-h"],
            &["rsandbox", "--version"],
            &["rsandbox", "doctor"],
            &["rsandbox", "run", "--bogus", "--", "true"],
            &["rsandbox", "run", "true"],
            &["rsandbox", "run", "--hostname"],
            &["rsandbox", "run", "--hostname", "--", "true"],
            &["rsandbox", "run", "--hostname=", "--", "true"],
            &[
                "rsandbox",
                "run",
                "--hostname",
                "a",
                "--hostname",
                "b",
                "--",
                "true",
            ],
            &["rsandbox", "run", "--report=yes", "--", "true"],
            &["rsandbox", "run", "--net", "bridge", "--", "true"],
            &["rsandbox", "run", "--uid", "-1", "--", "true"],
            &["rsandbox", "run", "--uid", "4294967296", "--", "true"],
            &["rsandbox", "run", "--uid", "+5", "--", "true"],
            &["rsandbox", "run", "--timeout", "1e3", "--", "true"],
            &["rsandbox", "run", "--memory", "12Q", "--", "true"],
            &["rsandbox", "run", "--rootfs-writable", "--", "true"],
            &[
                "rsandbox",
                "run",
                "--rootfs",
                "/r",
                "--overlay",
                "/l",
                "--",
                "true",
            ],
            &["rsandbox", "run", "--root", "--uid", "5", "--", "true"],
            &[
                "rsandbox",
                "run",
                "--upper",
                "/u",
                "--upper-size",
                "1M",
                "--",
                "true",
            ],
            &["rsandbox", "run", "--image-store", "/s", "--", "true"],
        ] {
            assert!(
                !agrees(words),
                "read quickly but clap must explain: {words:?}"
            );
        }
        // Non-UTF-8 words are clap's too.
        use std::os::unix::ffi::OsStringExt;
        let mut argv = os(&["rsandbox", "run", "--"]);
        argv.push(OsString::from_vec(vec![0xff, 0xfe]));
        assert!(parse_run(&argv).is_none());
    }
}
