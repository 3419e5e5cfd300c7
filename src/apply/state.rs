//! What cnet built and how to undo it, recorded under /run/cnet (a tmpfs: gone at reboot,
//! as everything cnet builds is).
//!
//! A node's record is a journal: a header line (the options it was built with), then one
//! line per finished step, appended as it finishes. Appending keeps the cost per step
//! constant (1000 containers are ~10,000 steps), and a killed `up` leaves a journal that
//! `down` can still undo exactly: a torn last line is ignored. The header holds the steps
//! themselves, so that `down` undoes what was done as it was written down then, not a plan
//! recomputed by whatever cnet build runs it. The lab's record is one small JSON file,
//! written to a temporary name and renamed.
//!
//! A record that cannot be read (deleted, truncated, garbled, from an older format) is an
//! [`UnusableRecord`]: `down` then removes what carries cnet's marks instead (sweep.rs).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::plan::Step;
use crate::model::topology::Options;

/// The node record's format. 1 (no field): steps recomputed from the options at `down`;
/// 2: the steps recorded in the header.
pub const RECORD_FORMAT: u32 = 2;

/// A record that exists but cannot be used: `down` falls back on cnet's marks.
#[derive(Debug)]
pub struct UnusableRecord {
    pub path: PathBuf,
    pub why: String,
}

impl std::fmt::Display for UnusableRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is unusable: {}", self.path.display(), self.why)
    }
}

impl std::error::Error for UnusableRecord {}

fn unusable(path: &Path, why: impl Into<String>) -> anyhow::Error {
    UnusableRecord { path: path.to_path_buf(), why: why.into() }.into()
}

/// Whether an error is an [`UnusableRecord`].
pub fn is_unusable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<UnusableRecord>())
}

pub const RUN_DIR: &str = "/run/cnet";

pub fn run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR)
}

/// Who built a node, with what, and the steps of its plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeHeader {
    /// [`RECORD_FORMAT`] when written; 0 when absent (format 1).
    #[serde(default)]
    pub format: u32,
    pub options: Options,
    pub node: u32,
    pub underlay: String,
    pub node_ip: Ipv4Addr,
    /// Peers' underlay addresses by node index (from `--peer`, or the talk's defaults).
    pub peers: Vec<(u32, Ipv4Addr)>,
    /// Directory holding the containers' namespace files (/run/netns).
    pub netns_dir: PathBuf,
    /// True when run by the lab inside one of its nodes, false on a real host.
    pub in_lab: bool,
    /// cnet made /run/netns a mount point (as `ip netns add` does); `down` undoes it when
    /// no namespace is left there.
    #[serde(default)]
    pub made_netns_mount: bool,
    /// The plan's steps as `up` ran them; a done line's `step` indexes this list.
    #[serde(default)]
    pub steps: Vec<Step>,
}

impl NodeHeader {
    /// The topology this node was built with (addresses as resolved at `up`).
    pub fn topology(&self) -> Result<crate::model::topology::Topology> {
        let mut topo = crate::model::topology::Topology::new(self.options.clone())?;
        if !self.node_ip.is_unspecified() {
            topo.set_node_ip(self.node, self.node_ip);
        }
        for (i, ip) in &self.peers {
            topo.set_node_ip(*i, *ip);
        }
        Ok(topo)
    }
}

/// One finished step and what is needed to undo it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Done {
    pub step: usize,
    /// A sysctl's value before cnet changed it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub old: Option<String>,
    /// A background process cnet started (the tunnel).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<u32>,
    /// A namespace cnet created: its identity (device, inode), so that `down` never
    /// touches another namespace that was later given the same name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ns: Option<(u64, u64)>,
    /// A qdisc that was there before cnet's step (someone else's): `down` leaves it.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub existed: bool,
}

/// A journal line: a batch about to start, or a step done.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    /// Steps `[from, to)` are about to run: if `up` dies before recording them, `down`
    /// still knows they may exist.
    Started {
        started: (usize, usize),
    },
    Done(Done),
}

/// What a node's journal says.
pub struct NodeRecord {
    pub header: NodeHeader,
    pub done: Vec<Done>,
    /// Every step below this index may have run (started), recorded or not.
    pub started_until: usize,
}

pub struct NodeJournal {
    path: PathBuf,
    file: File,
}

pub fn node_journal_path() -> PathBuf {
    run_dir().join("node.jsonl")
}

impl NodeJournal {
    /// Start a new journal; fails if one exists (a stage is already up).
    pub fn create(header: &NodeHeader) -> Result<NodeJournal> {
        let path = node_journal_path();
        fs::create_dir_all(run_dir()).with_context(|| format!("cannot create {RUN_DIR}"))?;
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{}", serde_json::to_string(header)?)?;
        fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(NodeJournal { path, file })
    }

    pub fn record(&mut self, done: &Done) -> Result<()> {
        self.append(&serde_json::to_vec(done)?)
    }

    pub fn started(&mut self, from: usize, to: usize) -> Result<()> {
        self.append(&serde_json::to_vec(&Line::Started { started: (from, to) })?)
    }

    fn append(&mut self, line: &[u8]) -> Result<()> {
        let mut line = line.to_vec();
        line.push(b'\n');
        // One write of one line: a crash leaves at worst a torn last line.
        self.file.write_all(&line).with_context(|| format!("cannot record a step in {}", self.path.display()))
    }

    /// The header and the steps done so far; None if nothing is up; an [`UnusableRecord`]
    /// if the file is there but cannot be trusted.
    pub fn read() -> Result<Option<NodeRecord>> {
        let path = node_journal_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        parse_journal(&path, &bytes).map(Some)
    }

    pub fn remove() -> Result<()> {
        Self::remove_stale_tmp()?;
        remove_if_exists(&node_journal_path())
    }

    /// The half-written header of an `up` killed between creating it and renaming it into
    /// place (found by scripts/torture, about 1 kill in 50 in the first 10 ms). Only ever
    /// called under the lock, so no `up` is writing it now.
    pub fn remove_stale_tmp() -> Result<()> {
        remove_if_exists(&node_journal_path().with_extension("tmp"))
    }
}

/// A journal's bytes: the header line, then done and started lines up to the first torn one.
fn parse_journal(path: &Path, bytes: &[u8]) -> Result<NodeRecord> {
    let mut lines = bytes.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    if first.is_empty() {
        return Err(unusable(path, "it is empty"));
    }
    let header: NodeHeader =
        serde_json::from_slice(first).map_err(|e| unusable(path, format!("its header is not a cnet record ({e})")))?;
    if header.format != RECORD_FORMAT {
        return Err(unusable(
            path,
            format!(
                "it was written by another cnet version (record format {}, this one reads {RECORD_FORMAT})",
                header.format.max(1)
            ),
        ));
    }
    if header.steps.is_empty() {
        return Err(unusable(path, "it records no steps"));
    }
    let mut done = Vec::new();
    let mut started_until = 0;
    for line in lines {
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Done(d)) if d.step < header.steps.len() => {
                started_until = started_until.max(d.step + 1);
                done.push(d);
            }
            Ok(Line::Started { started: (_, to) }) => started_until = started_until.max(to.min(header.steps.len())),
            _ => break, // a torn last line from a killed `up` (or the end)
        }
    }
    Ok(NodeRecord { header, done, started_until })
}

pub fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}

/// Every sysctl `up` changed, with the value it had, in a file of its own: the one thing
/// cnet changes that carries no mark in the kernel, so that `down` can still put it back
/// when the journal itself is lost or damaged (the sweep's case). One line per change.
pub struct SysctlLog;

#[derive(Serialize, Deserialize)]
pub struct SysctlChange {
    pub key: String,
    pub old: String,
    pub set: String,
}

impl SysctlLog {
    fn path() -> PathBuf {
        run_dir().join("sysctls.jsonl")
    }

    /// Where it is, for messages.
    pub fn describe() -> String {
        Self::path().display().to_string()
    }

    pub fn append(change: &SysctlChange) -> Result<()> {
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let p = Self::path();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| format!("cannot record a sysctl in {}", p.display()))
    }

    /// The changes in the order they were made (a torn line ends the list); None if there
    /// is no log.
    pub fn read() -> Option<Vec<SysctlChange>> {
        let bytes = fs::read(Self::path()).ok()?;
        Some(bytes.split(|b| *b == b'\n').map_while(|l| serde_json::from_slice(l).ok()).collect())
    }

    pub fn remove() -> Result<()> {
        remove_if_exists(&Self::path())
    }
}

/// The lab: which VM-like nodes exist and where their namespaces are persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub options: Options,
    /// Node indexes whose namespaces were created (so far).
    pub nodes: Vec<u32>,
    /// True once every node's plan has been applied.
    pub complete: bool,
    /// cnet bind-mounted /run/cnet onto itself (a mount namespace file needs a private
    /// parent mount); `down` undoes it.
    #[serde(default)]
    pub made_run_mount: bool,
    /// cnet created the (empty) /run/netns directory that nodes mount their own over.
    #[serde(default)]
    pub made_netns_dir: bool,
    /// Faults put in by `cnet break` ("no-forwarding on node2"), for `status` to show.
    #[serde(default)]
    pub faults: Vec<String>,
    /// Lab members that are not nodes (the routed fabric's `router`), created so far.
    #[serde(default)]
    pub members: Vec<String>,
}

pub fn lab_dir() -> PathBuf {
    run_dir().join("lab")
}

pub fn lab_state_path() -> PathBuf {
    run_dir().join("lab.json")
}

impl LabState {
    pub fn read() -> Result<Option<LabState>> {
        let p = lab_state_path();
        match fs::read(&p) {
            Ok(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|e| unusable(&p, format!("it is not a cnet lab record ({e})")))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    pub fn write(&self) -> Result<()> {
        let p = lab_state_path();
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
    }

    pub fn remove() -> Result<()> {
        remove_if_exists(&lab_state_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines_are_compact() {
        let d = Done { step: 3, old: Some("0".into()), ..Default::default() };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"step":3,"old":"0"}"#);
        let back: Done = serde_json::from_str(r#"{"step":7}"#).unwrap();
        assert_eq!(back, Done { step: 7, ..Default::default() });
        assert!(matches!(serde_json::from_str::<Line>(r#"{"started":[3,9]}"#).unwrap(), Line::Started { started: (3, 9) }));
        assert!(matches!(
            serde_json::from_str::<Line>(r#"{"step":4,"ns":[1,2]}"#).unwrap(),
            Line::Done(Done { step: 4, ns: Some((1, 2)), .. })
        ));
    }
}
