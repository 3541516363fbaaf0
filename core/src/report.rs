//! The enforcement report: what a sandbox actually enforced, what it skipped, and why.
//!
//! Every successful spawn returns one. A feature the caller asked for either appears as
//! [`Status::Enforced`] or as [`Status::Skipped`] with the reason; it is never left out.

use serde::{Deserialize, Serialize};

use crate::spec::Want;

/// What happened to one protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// In force for the whole life of the command.
    Enforced,
    /// Asked for (best-effort) but not available on this host; `detail` says why.
    Skipped,
    /// Not asked for, or not provided by this version; `detail` says which.
    Off,
}

/// One protection and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Dotted name, e.g. `namespace.pid`, `no-new-privs`.
    pub name: String,
    /// What the spec asked for.
    pub level: Want,
    /// What happened.
    pub status: Status,
    /// How it is enforced, or why it is not.
    pub detail: String,
}

/// One line of a uid or gid map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// One mount of the sandbox's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Path inside the sandbox.
    pub destination: String,
    /// Host path for binds, filesystem type otherwise.
    pub source: String,
    /// `bind`, `tmpfs`, `proc`, `devpts`, `symlink`, `rootfs`.
    pub kind: String,
    /// Mount attributes set, e.g. `ro`, `nosuid`, `nodev`, `noexec`, `size=…`.
    pub options: Vec<String>,
    /// Whether it was mounted; default mounts whose source is missing are skipped.
    pub status: Status,
    /// Why it was skipped, when it was.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub detail: String,
}

/// The enforcement report of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    /// Namespaces and process-level protections.
    pub features: Vec<Feature>,
    /// The user namespace's uid map (empty without one).
    pub uid_map: Vec<IdRange>,
    /// The user namespace's gid map (empty without one).
    pub gid_map: Vec<IdRange>,
    /// The filesystem, in mount order.
    pub mounts: Vec<MountEntry>,
    /// The sandbox's own cgroup, when it has one (removed after exit unless the sandbox outlives
    /// its handle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::path::PathBuf>,
}

impl Report {
    /// The entry for a named feature.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Names of every protection that was asked for but not enforced.
    pub fn skipped(&self) -> Vec<&str> {
        self.features
            .iter()
            .filter(|f| f.status == Status::Skipped)
            .map(|f| f.name.as_str())
            .collect()
    }

    pub(crate) fn push(&mut self, name: &str, level: Want, status: Status, detail: String) {
        self.features.push(Feature {
            name: name.into(),
            level,
            status,
            detail,
        });
    }

    /// A human-readable summary, one line per item.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for f in &self.features {
            let _ = writeln!(
                out,
                "{:<22} {:<9} {}",
                f.name,
                status_word(f.status),
                f.detail
            );
        }
        let maps = |m: &[IdRange]| {
            m.iter()
                .map(|r| format!("{}->{}x{}", r.inside, r.outside, r.count))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !self.uid_map.is_empty() {
            let _ = writeln!(out, "{:<22} {}", "uid map", maps(&self.uid_map));
            let _ = writeln!(out, "{:<22} {}", "gid map", maps(&self.gid_map));
        }
        for m in &self.mounts {
            let _ = writeln!(
                out,
                "mount {:<16} {:<9} {:<7} {} [{}]{}",
                m.destination,
                status_word(m.status),
                m.kind,
                m.source,
                m.options.join(","),
                if m.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", m.detail)
                }
            );
        }
        out
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Enforced => "enforced",
        Status::Skipped => "SKIPPED",
        Status::Off => "off",
    }
}
