//! The one way into a lab node. `command_in` makes any program run inside a node (or one
//! of its containers): `cnet exec`, `cnet shell`. [`cnet`] is the only way cnet runs
//! itself inside a node (the node runner, its removal, status, test, capture): it passes
//! verbosity and colour on, and gets the child's failure back as data — kind, message, exit
//! code, as JSON on a channel of its own (fd 3) — never by reading its stderr.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::error::{Failure, FailureKind};
use crate::sys::ns::{self, Entry, NodeNs, REPORT_FD};

/// What a failing cnet sends its parent on the report channel.
#[derive(Serialize, Deserialize)]
pub struct Report {
    /// "environment", "interrupted", "stopped", or "request".
    pub kind: String,
    pub message: String,
    pub code: u8,
}

impl Report {
    pub fn of(e: &anyhow::Error) -> Report {
        let kind = match crate::error::kind(e) {
            Some(FailureKind::Environment) => "environment",
            Some(FailureKind::Interrupted) => "interrupted",
            Some(FailureKind::Stopped) => "stopped",
            None => "request",
        };
        Report { kind: kind.into(), message: format!("{e:#}"), code: crate::error::exit_code(e) }
    }

    /// Back into an error of the same kind, its message prefixed with where it happened.
    fn into_error(self, place: &str) -> anyhow::Error {
        let message = format!("{place}: {}", self.message);
        match self.kind.as_str() {
            "environment" => Failure::environment(message),
            "interrupted" => Failure::interrupted(message),
            "stopped" => Failure::stopped(message),
            _ => anyhow!(message),
        }
    }
}

/// A program to run inside lab node `node` (`name` for messages), or inside one of its
/// containers.
pub fn command_in(node: &NodeNs, container: Option<&str>, program: &str, args: &[String]) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    ns::enter_node(&mut cmd, node, Entry { container: container.map(str::to_string), ..Entry::default() })?;
    Ok(cmd)
}

/// `cnet ARGS` to run inside a lab node. Build it with [`cnet`]; set its stdio on
/// [`CnetInNode::command`]; then `run`, `spawn` or `exec` it.
pub struct CnetInNode {
    place: String,
    cmd: Command,
    report: UnixStream,
}

/// cnet itself inside lab node `node` (named `place` in messages): `-v` and `--color` as
/// this process has them, and a report channel for its failure. With `die_with_parent`, it
/// dies with this process (a node runner must not go on building after a killed `up`).
pub fn cnet(node: &NodeNs, place: &str, container: Option<&str>, args: &[String], die_with_parent: bool) -> Result<CnetInNode> {
    let (ours, theirs) = UnixStream::pair().context("cannot create a report channel")?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(crate::out::passed_on()).arg("--report-fd").arg(REPORT_FD.to_string()).args(args);
    let entry = Entry { container: container.map(str::to_string), report: Some(OwnedFd::from(theirs)), die_with_parent };
    ns::enter_node(&mut cmd, node, entry)?;
    Ok(CnetInNode { place: place.to_string(), cmd, report: ours })
}

impl CnetInNode {
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Run it to the end: its stdout (when piped) and exit status, or its failure as an
    /// error of the kind it reported. A non-zero exit without a report (`cnet test` whose
    /// checks failed) is not an error; a death by signal is.
    pub fn run(mut self) -> Result<(ExitStatus, Vec<u8>)> {
        let out = self.cmd.output().with_context(|| format!("cannot run cnet inside {}", self.place))?;
        drop(self.cmd);
        outcome(&self.place, out.status, &mut self.report).map(|s| (s, out.stdout))
    }

    /// Start it; [`Running::wait`] collects it.
    pub fn spawn(mut self) -> Result<Running> {
        let child = self.cmd.spawn().with_context(|| format!("cannot run cnet inside {}", self.place))?;
        drop(self.cmd);
        Ok(Running { place: self.place, child, report: self.report })
    }

    /// Start it and await it without blocking the async runtime; dropping the future kills it.
    pub async fn run_async(self) -> Result<ExitStatus> {
        let CnetInNode { place, cmd, mut report } = self;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let status = cmd.status().await.with_context(|| format!("cannot run cnet inside {place}"))?;
        drop(cmd);
        outcome(&place, status, &mut report)
    }

    /// Become it (`cnet capture` in a node): returns only if that fails.
    pub fn exec(mut self) -> anyhow::Error {
        let err = self.cmd.exec();
        anyhow!("cannot run cnet inside {}: {err}", self.place)
    }
}

/// A cnet started inside a node.
pub struct Running {
    place: String,
    child: std::process::Child,
    report: UnixStream,
}

impl Running {
    pub fn wait(mut self) -> Result<ExitStatus> {
        let status = self.child.wait().with_context(|| format!("cannot wait for cnet inside {}", self.place))?;
        outcome(&self.place, status, &mut self.report)
    }
}

/// What a finished child's exit status and report say. Our copy of the child's end of the
/// channel is closed by now (the Command that held it is gone), so the read ends.
fn outcome(place: &str, status: ExitStatus, report: &mut UnixStream) -> Result<ExitStatus> {
    let mut said = Vec::new();
    let _ = report.read_to_end(&mut said);
    if let Ok(r) = serde_json::from_slice::<Report>(&said) {
        return Err(r.into_error(place));
    }
    match status.signal() {
        Some(sig) => Err(anyhow!("{place}: cnet was stopped by signal {sig}")),
        None => Ok(status),
    }
}

/// The report channel side, in the child: write the failure there, if a parent asked.
pub fn report_failure(channel: &mut std::fs::File, e: &anyhow::Error) -> std::io::Result<()> {
    std::io::Write::write_all(channel, &serde_json::to_vec(&Report::of(e))?)
}
