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

/// Privileged tests call this first. Built by a user who cannot run them (outside CI) they
/// are marked ignored (build.rs), so they show as not run; if one runs without root all the
/// same (built as root, run as a user; or under CI), it fails here, never passes quietly.
pub fn require_root() {
    assert_eq!(unsafe_free_euid(), 0, "this test needs root (it builds network namespaces): run the tests as root");
}

fn unsafe_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1).unwrap_or("1").to_string()))
        })
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
    text.lines().filter_map(|l| l.split("ttl=").nth(1)).filter_map(|r| r.split_whitespace().next()?.parse().ok()).collect()
}

/// Shell that makes the sandbox play the talk's VM for host mode: an `enp0s8` with
/// 10.0.0.10/24 (the other end, `lan0`, stays in the sandbox).
pub const VM: &str = r#"
hostname vm
ip link add enp0s8 type veth peer name lan0
ip addr add 10.0.0.10/24 dev enp0s8
ip link set enp0s8 up; ip link set lan0 up
"#;

/// [`LEFTOVERS`] on a VM: its own enp0s8/lan0 pair is expected.
pub fn vm_leftovers() -> String {
    LEFTOVERS.replace("grep -vxE 'lo'", "grep -vxE 'lo|enp0s8|lan0'")
}

/// Shell: `$T/sink.py` listens on TCP port 7000, says "listening", and on end of stream
/// prints the byte count and SHA-256 of what it received.
pub const SINK_PY: &str = r#"cat > $T/sink.py <<'PY'
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 7000)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
PY
"#;

/// Shell: 300 MB of seeded random bytes over TCP from con1 on node 1 to con1 on node 2
/// (172.16.1.2:7000), SHA-256 on both sides: the sender's count and digest after `mark
/// sent`, the receiver's after `mark received` (they must be equal). Needs [`SINK_PY`] first.
pub const BULK_300MB: &str = r#"cat > $T/source.py <<'PY'
import hashlib, random, socket
random.seed(42); block = random.randbytes(1 << 20); h = hashlib.sha256(); n = 0
c = socket.create_connection(("172.16.1.2", 7000))
for i in range(300):
    chunk = block[i % 7:] + block[:i % 7]
    c.sendall(chunk); h.update(chunk); n += len(chunk)
c.close()
print(n, h.hexdigest())
PY
cnet exec node2/con1 -- python3 $T/sink.py > $T/sink.out & SINK=$!
wait_for 200 grep -qs listening $T/sink.out
mark sent
cnet exec node1/con1 -- python3 $T/source.py
wait $SINK
mark received
tail -1 $T/sink.out
"#;

/// Shell: `interrupt_up ARGS...` runs `cnet up ARGS` in a session of its own, waits until
/// `up_started` (a shell function the test defines) succeeds, then as long as `$SETTLE`
/// seconds, and sends Ctrl-C as a terminal does (SIGINT to the whole group); then prints
/// its stderr and `exit=CODE`.
pub const INTERRUPT_UP: &str = r#"
interrupt_up() {
  setsid cnet up "$@" 2> $T/err & pid=$!
  i=0
  until up_started; do i=$((i+1)); [ $i -lt 2000 ] || { echo "up never started"; break; }; sleep 0.005; done
  sleep "$SETTLE"
  t0=$(date +%s%N)
  kill -INT -$pid
  code=0; wait $pid || code=$?
  t1=$(date +%s%N)
  cat $T/err
  echo "exit=$code"
  echo "stopped in $(( (t1 - t0) / 1000000 )) ms"
}
"#;

/// What `cnet test --json` answered, per node: (node, checks passed, checks run), and the
/// failed checks as "from -> to: why" lines.
pub struct Checks {
    pub nodes: Vec<(u64, usize, usize)>,
    pub failed: Vec<String>,
}

impl Checks {
    pub fn parse(json: &str) -> Checks {
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("cnet test --json: {e}\n{json}"));
        let mut c = Checks { nodes: Vec::new(), failed: Vec::new() };
        for n in v.as_array().expect("a list of nodes") {
            let results = n["results"].as_array().expect("results");
            let passed = results.iter().filter(|r| r["pass"] == true).count();
            c.nodes.push((n["node"].as_u64().unwrap(), passed, results.len()));
            for r in results.iter().filter(|r| r["pass"] != true) {
                c.failed.push(format!("node{}: {} -> {}: {}", n["node"], r["check"]["from"], r["check"]["to"], r["error"]));
            }
        }
        c
    }
    /// Every check passed, and there were `total` of them.
    pub fn all_passed(&self, total: usize) -> bool {
        self.failed.is_empty() && self.nodes.iter().map(|n| n.2).sum::<usize>() == total
    }
}

/// What `cnet status --json` answered: per node, (verified steps, checked steps, missing).
pub fn status_nodes(json: &str) -> Vec<(usize, usize, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("cnet status --json: {e}\n{json}"));
    v.as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| {
            let missing = n["missing"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
            (n["verified"].as_u64().unwrap() as usize, n["checked"].as_u64().unwrap() as usize, missing)
        })
        .collect()
}

/// Every node's status matches its plan.
pub fn status_matches(json: &str) -> bool {
    let nodes = status_nodes(json);
    !nodes.is_empty() && nodes.iter().all(|(v, c, m)| v == c && m.is_empty())
}

/// From `cnet status --json`, per node: the tunnel's data path ("" without a tunnel) and
/// the MTU of its link `dev`.
pub fn status_links(json: &str, dev: &str) -> Vec<(String, Option<u64>)> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("cnet status --json: {e}\n{json}"));
    v.as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| {
            let path = n["tunnel"]["datapath"].as_str().unwrap_or("").to_string();
            let mtu = n["links"].as_array().unwrap().iter().find(|l| l["name"] == dev).and_then(|l| l["mtu"].as_u64());
            (path, mtu)
        })
        .collect()
}
