//! Helpers for end-to-end tests: each test runs the real `cnet` binary inside its own
//! sandbox (fresh network, mount and UTS namespaces with their own /run/netns and
//! /run/cnet), so tests run in parallel and never touch the machine's own network.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn cnet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnet"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether privileged tests can run here. Without root they are skipped, except under CI,
/// where a test that cannot run must fail.
pub fn privileged() -> bool {
    let root = unsafe_free_euid() == 0;
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("this test needs root (network namespaces), and CI is set: run the tests as root");
        }
        eprintln!("skipped: needs root");
    }
    root
}

fn unsafe_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1).unwrap_or("1").to_string())))
        .and_then(|u| u.parse().ok())
        .unwrap_or(1)
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "script failed\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }
    /// The text between `@@ name` and the next `@@` marker line the script printed.
    pub fn section(&self, name: &str) -> String {
        let mut out = String::new();
        let mut on = false;
        for l in self.stdout.lines() {
            if let Some(m) = l.strip_prefix("@@ ") {
                on = m.trim() == name;
                continue;
            }
            if on {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Run a shell script (sh -eu) in a fresh sandbox, with `cnet` on PATH, `$CNET` set and a
/// scratch directory `$T` of its own.
/// Use `mark NAME` in the script to start a section read back with [`Run::section`].
pub fn sandbox(script: &str) -> Run {
    // A private scratch directory ($T), so that parallel tests' files cannot collide.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let scratch = std::env::temp_dir().join(format!("cnet-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    // `wait_for TRIES CMD...`: CMD every 50 ms until it succeeds; after TRIES tries the
    // script fails (sh -e) saying what it waited for, instead of hanging the test run.
    let prelude = "mark() { echo \"@@ $1\"; }\n\
        wait_for() { n=$1; shift; i=0; until \"$@\"; do i=$((i+1)); [ $i -lt $n ] || { echo \"timed out waiting for: $*\" >&2; return 1; }; sleep 0.05; done; }\nawk '{print $5}' /proc/self/mountinfo | sort > $T/mounts.before\n";
    let bin_dir = cnet_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out: Output = Command::new(repo().join("scripts/sandbox"))
        .args(["sh", "-euc", &format!("{prelude}{script}")])
        .env("PATH", path)
        .env("CNET", cnet_bin())
        .env("T", &scratch)
        .current_dir(repo())
        .output()
        .expect("run scripts/sandbox");
    let _ = std::fs::remove_dir_all(&scratch);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Shell that prints what a sandbox holds after `down`: every line must be empty for
/// "nothing left behind" (links other than lo, namespaces, mounts under /run/cnet or
/// /run/netns, lab files, cnet processes).
pub const LEFTOVERS: &str = r#"
mark leftovers
ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -vxE 'lo' || true
ls /run/netns
ls -A /run/cnet
awk '{print $5}' /proc/self/mountinfo | sort | diff $T/mounts.before - | grep '^[<>]' | sed 's/^/mount /' || true
for p in /proc/[0-9]*; do if [ "$(readlink $p/exe 2>/dev/null)" = "$CNET" ] && [ "${p#/proc/}" != "$$" ]; then echo "process ${p#/proc/}: $(tr '\0' ' ' < $p/cmdline)"; fi; done
mark end
"#;

pub fn assert_nothing_left(r: &Run) {
    let left = r.section("leftovers");
    assert!(left.trim().is_empty(), "left behind after down:\n{left}\n--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
}

/// Parse `ping -c1` output: the reply's TTL.
pub fn ping_ttls(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.split("ttl=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}
