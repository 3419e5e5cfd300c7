//! The talk's connectivity checks: one ICMP echo from the node and from each container to
//! each address, with the TTL the reply must arrive with.
//!
//! Expected TTL: replies start at 64 and lose one per router on the way back. Within a
//! node nothing is routed (the bridge is L2), so 64; across nodes the target's node routes
//! the reply if the target is a container, and the source's node if the source is one. On
//! a routed fabric the router is one more, when the nodes are on different subnets and the
//! reply crosses it as it is: not inside the overlay (in stage 4 only node-to-node traffic
//! is not encapsulated; the router sees only the outer packets of the rest).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::model::topology::Topology;
use crate::sys::{icmp::IcmpSocket, ns};

/// Above this many checks per node, run the bounded plan instead of the full matrix.
pub const FULL_MATRIX_LIMIT: usize = 200;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// "node" or a container's name.
    pub from: String,
    pub to: Ipv4Addr,
    /// What owns `to`, e.g. "con2 (node 2)".
    pub target: String,
    pub expect_ttl: u8,
    /// What is sent: an ICMP echo (the talk's checks), or an HTTP request (stages 5-6).
    #[serde(default, skip_serializing_if = "Probe::is_ping")]
    pub probe: Probe,
    /// The source's namespace when it is not `from` under the node's netns directory (a
    /// runtime's container, attached through cnet's CNI plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
}

/// How a check reaches its target.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    /// ICMP echo: the reply must arrive with `expect_ttl`.
    #[default]
    Ping,
    /// `GET /` to `to:port`: answered by the demo server listening on `answered_by`
    /// ("172.16.0.2:8000", which its answer names), which must see the client as `seen_as`
    /// where given (NAT at work).
    Http { port: u16, answered_by: String, seen_as: Option<Ipv4Addr> },
    /// `connections` new connections to a service `to:port` must reach every one of
    /// `backends` (the servers' listening addresses).
    Service { port: u16, connections: u32, backends: Vec<String> },
}

impl Probe {
    pub fn is_ping(&self) -> bool {
        *self == Probe::Ping
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    #[serde(flatten)]
    pub check: Check,
    pub pass: bool,
    pub ttl: Option<u8>,
    pub rtt_ms: Option<f64>,
    pub error: Option<String>,
    /// An HTTP probe's answer (the demo server's line), or a service's backends seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeChecks {
    pub node: u32,
    pub hostname: String,
    /// "full" (the talk's matrix) or "bounded" (large labs).
    pub plan: String,
    pub results: Vec<CheckResult>,
}

struct Target {
    ip: Ipv4Addr,
    label: String,
    node: u32,
    /// 0 a node, 1 a bridge, 2 a container: the talk's order.
    kind: u8,
}

fn targets(topo: &Topology, me: u32, bounded: bool) -> Vec<Target> {
    let mut own = Vec::new();
    let mut other = Vec::new();
    for n in &topo.nodes {
        let local = n.index == me;
        let list = if local { &mut own } else { &mut other };
        // Named as `cnet exec` names them: node2, node2/br0, node2/con1.
        let node = n.short_name();
        list.push(Target { ip: n.ip.addr, label: node.clone(), node: n.index, kind: 0 });
        if let Some(b) = n.bridge {
            list.push(Target { ip: b.addr, label: format!("{node}/br0"), node: n.index, kind: 1 });
        }
        let cons: Vec<_> = if bounded && !local { n.containers.iter().take(1).collect() } else { n.containers.iter().collect() };
        for c in cons {
            list.push(Target { ip: c.addr.addr, label: format!("{node}/{}", c.name), node: n.index, kind: 2 });
        }
    }
    // The talk's order: own node, other nodes, own bridge, other bridges, own containers, others'.
    let mut t = Vec::new();
    for k in 0..3u8 {
        t.extend(own.iter().filter(|x| x.kind == k).map(|x| Target { label: x.label.clone(), ..*x }));
        t.extend(other.iter().filter(|x| x.kind == k).map(|x| Target { label: x.label.clone(), ..*x }));
    }
    t
}

/// The checks run on node `me`: from the node and from each of its containers.
pub fn node_checks(topo: &Topology, me: u32) -> (Vec<Check>, &'static str) {
    let node = topo.node(me).expect("node exists");
    let sources = 1 + node.containers.len();
    let full = targets(topo, me, false);
    let bounded = sources * full.len() > FULL_MATRIX_LIMIT;
    let mut checks = Vec::new();
    let mut sources_list: Vec<(String, bool)> = vec![("node".into(), false)];
    sources_list.extend(node.containers.iter().map(|c| (c.name.clone(), true)));
    for (from, from_container) in sources_list {
        let ts = if bounded { bounded_targets(topo, me, &from) } else { targets(topo, me, false) };
        for t in ts {
            let routers = if t.node == me {
                0
            } else {
                // In stage 4 only node to node crosses the router as it is: a reply to a
                // container, or to the node's tun0 address (its source towards pods), rides
                // the overlay.
                let overlay = topo.stage().has_overlay();
                let fabric =
                    !topo.subnets.is_empty() && !topo.on_link(t.node, me) && !(overlay && (from_container || t.kind != 0));
                from_container as u8 + (t.kind == 2) as u8 + fabric as u8
            };
            checks.push(Check {
                from: from.clone(),
                to: t.ip,
                target: t.label,
                expect_ttl: 64 - routers,
                probe: Probe::Ping,
                netns: None,
            });
        }
    }
    (checks, if bounded { "bounded" } else { "full" })
}

/// A container a runtime attached to a node through cnet's CNI plugin: its name, address
/// and namespace.
pub struct RuntimeContainer {
    pub name: String,
    pub addr: crate::model::topology::Ipv4Net,
    pub netns: std::path::PathBuf,
}

/// [`node_checks`] with the containers a runtime attached to node `me` counted among its
/// own: checked to and from, by the same TTL rules (a name taken by one of cnet's own
/// containers gets a `cni:` prefix).
pub fn node_checks_with(topo: &Topology, me: u32, runtime: &[RuntimeContainer]) -> (Vec<Check>, &'static str) {
    if runtime.is_empty() {
        return node_checks(topo, me);
    }
    let mut t = topo.clone();
    let node = t.nodes.iter_mut().find(|n| n.index == me).expect("node exists");
    let mut named = Vec::new();
    for rc in runtime {
        let taken = |n: &str| n == "node" || node.containers.iter().any(|c| c.name == n);
        let name = if taken(&rc.name) { format!("cni:{}", rc.name) } else { rc.name.clone() };
        node.containers.push(crate::model::topology::Container {
            name: name.clone(),
            host_veth: String::new(),
            veth: String::new(),
            addr: rc.addr,
        });
        named.push((name, rc.netns.clone()));
    }
    let (mut checks, plan) = node_checks(&t, me);
    for c in &mut checks {
        c.netns = named.iter().find(|(n, _)| *n == c.from).map(|(_, p)| p.clone());
    }
    (checks, plan)
}

/// Large labs: each source reaches its bridge, its node and one container on every other
/// node (those nodes' own checks cover the way back).
fn bounded_targets(topo: &Topology, me: u32, _from: &str) -> Vec<Target> {
    targets(topo, me, true).into_iter().filter(|t| t.node != me || t.kind != 2).collect()
}

/// Sources checked together before the ARP entries they caused are dropped again.
pub const SOURCES_PER_ROUND: usize = 200;

/// Run the checks, at most [`SOURCES_PER_ROUND`] sources at a time; after each round,
/// `forget(sources)` drops the ARP entries the round created. Why: the kernel's ARP table
/// is one for the whole machine (gc_thresh3, often 1024 entries, in the root namespace),
/// and a thousand containers each resolving their gateway, answered by a node resolving
/// each of them, would overflow it.
pub fn run_in_rounds(
    checks: &[Check],
    netns_dir: &Path,
    timeout: Duration,
    forget: &mut dyn FnMut(&[String]),
) -> Vec<CheckResult> {
    let by_source = group_by_source(checks);
    if by_source.len() <= SOURCES_PER_ROUND {
        return run(checks, netns_dir, timeout);
    }
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    for round in by_source.chunks(SOURCES_PER_ROUND) {
        let idx: Vec<usize> = round.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let names: Vec<String> = round.iter().map(|(s, _)| s.clone()).collect();
        let part: Vec<Check> = idx.iter().map(|i| checks[*i].clone()).collect();
        for (k, r) in run(&part, netns_dir, timeout).into_iter().enumerate() {
            results[idx[k]] = Some(r);
        }
        forget(&names);
    }
    results.into_iter().map(|r| r.expect("every check ran in a round")).collect()
}

/// Run the checks; an echo left unanswered is sent once more (the first packets of a large
/// lab race many ARP resolutions at once), so a check fails only if both go unanswered.
pub fn run(checks: &[Check], netns_dir: &Path, timeout: Duration) -> Vec<CheckResult> {
    let mut results = run_once(checks, netns_dir, timeout, 0);
    let unanswered: Vec<usize> = (0..checks.len()).filter(|i| results[*i].ttl.is_none()).collect();
    if !unanswered.is_empty() {
        let again: Vec<Check> = unanswered.iter().map(|i| checks[*i].clone()).collect();
        for (k, r) in run_once(&again, netns_dir, timeout, 1).into_iter().enumerate() {
            if r.ttl.is_some() {
                results[unanswered[k]] = r;
            }
        }
    }
    results
}

/// The checks' indexes per source, sources in first-seen order.
fn group_by_source(checks: &[Check]) -> Vec<(String, Vec<usize>)> {
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        let k = *position.entry(&c.from).or_insert_with(|| {
            groups.push((c.from.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[k].1.push(i);
    }
    groups
}

/// Run checks grouped by source; each source sends all its echoes at once and gathers the
/// replies, so a passing node finishes in milliseconds.
fn run_once(checks: &[Check], netns_dir: &Path, timeout: Duration, round: u16) -> Vec<CheckResult> {
    let by_source = group_by_source(checks);
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    // A distinct echo id per source keeps one source's replies from being taken for another's.
    let base_id = (std::process::id() as u16).wrapping_mul(31).wrapping_add(round.wrapping_mul(40503));
    std::thread::scope(|s| {
        let handles: Vec<_> = by_source
            .iter()
            .enumerate()
            .map(|(k, (from, idx))| {
                let id = base_id.wrapping_add(k as u16);
                let checks = &checks;
                s.spawn(move || {
                    let ping = || ping_all(id, idx.iter().map(|i| checks[*i].to).collect(), timeout);
                    let netns = checks[idx[0]].netns.clone().unwrap_or_else(|| netns_dir.join(from));
                    let r = if from == "node" { ping() } else { ns::in_netns(&netns, ping) };
                    (idx.clone(), r)
                })
            })
            .collect();
        for h in handles {
            let (idx, r) = h.join().expect("check thread");
            for (j, i) in idx.iter().enumerate() {
                let c = checks[*i].clone();
                results[*i] = Some(match &r {
                    Ok(replies) => match replies[j] {
                        Some((ttl, rtt)) => CheckResult {
                            pass: ttl == c.expect_ttl,
                            error: (ttl != c.expect_ttl).then(|| format!("TTL {ttl}, expected {}", c.expect_ttl)),
                            check: c,
                            ttl: Some(ttl),
                            // Microseconds are all an ICMP round trip can tell.
                            rtt_ms: Some((rtt.as_secs_f64() * 1e6).round() / 1000.0),
                            answer: None,
                        },
                        None => CheckResult {
                            check: c,
                            pass: false,
                            ttl: None,
                            rtt_ms: None,
                            error: Some(format!("no reply within {} ms", timeout.as_millis())),
                            answer: None,
                        },
                    },
                    Err(e) => CheckResult {
                        check: c,
                        pass: false,
                        ttl: None,
                        rtt_ms: None,
                        error: Some(format!("{e:#}")),
                        answer: None,
                    },
                });
            }
        }
    });
    results.into_iter().map(|r| r.expect("every check has a result")).collect()
}

/// Send one echo to each target (seq = position), return (TTL, RTT) per target.
fn ping_all(id: u16, to: Vec<Ipv4Addr>, timeout: Duration) -> Result<Vec<Option<(u8, Duration)>>> {
    let sock = IcmpSocket::open()?;
    let mut sent = Vec::with_capacity(to.len());
    let mut out = vec![None; to.len()];
    let mut waiting = HashMap::new();
    for (seq, ip) in to.iter().enumerate() {
        sent.push(Instant::now());
        match sock.send_echo(*ip, id, seq as u16) {
            Ok(()) => {
                waiting.insert(seq as u16, *ip);
            }
            Err(e) => tracing::debug!("echo to {ip}: {e}"),
        }
    }
    let deadline = Instant::now() + timeout;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(r) = sock.recv_reply(left)? else { break };
        if r.id == id && waiting.get(&r.seq) == Some(&r.from) {
            waiting.remove(&r.seq);
            out[r.seq as usize] = Some((r.ttl, sent[r.seq as usize].elapsed()));
        }
    }
    Ok(out)
}

/// Rows printed before `cnet test` shows only the failures (and `--all` shows them all).
pub const ROWS_SHOWN: usize = 60;

/// One node's checks as a table: every row, or (`all` false) only the failed ones.
pub fn print_table(n: &NodeChecks, multi: bool, all: bool) {
    let passed = n.results.iter().filter(|r| r.pass).count();
    let title = match (multi, n.node) {
        (_, 0) => n.hostname.clone(),
        (true, i) => format!("node{i} ({})", n.hostname),
        (false, _) => n.hostname.clone(),
    };
    println!("{title}: {passed}/{} checks passed ({} plan)", n.results.len(), n.plan);
    if passed < n.results.len() && n.results.len() > 800 {
        // Checks run in rounds that drop their ARP entries, but the kernel's table is shared
        // by every namespace on the machine (gc_thresh3 of the root namespace, often 1024).
        println!(
            "  note: the kernel's ARP table is machine-wide (net.ipv4.neigh.default.gc_thresh3, \
            often 1024 entries): if other labs or containers fill it, unanswered checks may be that"
        );
    }
    let rows: Vec<&CheckResult> = n.results.iter().filter(|r| all || !r.pass).collect();
    if rows.is_empty() {
        return;
    }
    println!("  {:<8} {:<28} {:>4} {:>5} {:>9}  result", "from", "to", "ttl", "want", "rtt");
    for r in rows {
        let ttl = r.ttl.map_or("-".into(), |t| t.to_string());
        let rtt = r.rtt_ms.map_or("-".into(), |t| format!("{t:.3} ms"));
        let verdict = if r.pass {
            // An HTTP row shows what answered: that is the lesson (who, and whom it saw).
            match &r.answer {
                Some(a) => format!("{}: {a}", crate::out::verdict("ok", true)),
                None => crate::out::verdict("ok", true),
            }
        } else {
            format!("{}: {}", crate::out::verdict("FAIL", false), r.error.as_deref().unwrap_or(""))
        };
        let to = match &r.check.probe {
            Probe::Ping => format!("{} {}", r.check.to, r.check.target),
            Probe::Http { port, .. } => format!("{}:{port} {}", r.check.to, r.check.target),
            Probe::Service { port, connections, .. } => format!("{}:{port} x{connections}", r.check.to),
        };
        let want = if r.check.probe.is_ping() { r.check.expect_ttl.to_string() } else { "-".into() };
        println!("  {:<8} {:<28} {:>4} {:>5} {:>9}  {verdict}", r.check.from, to, ttl, want, rtt);
    }
}

/// Count of checks the talk lists for a stage (per node), for messages and tests.
#[cfg(test)]
pub fn talk_count(stage: crate::model::topology::Stage) -> usize {
    use crate::model::topology::Stage;
    match stage {
        Stage::Namespace => 4,
        Stage::SingleNode => 12,
        Stage::MultiNode | Stage::Overlay | Stage::Outside | Stage::Services => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::{Options, Stage};

    fn checks(stage: Stage, node: u32) -> Vec<Check> {
        node_checks(&Topology::new(Options::new(stage)).unwrap(), node).0
    }

    #[test]
    fn talk_counts() {
        for st in Stage::ALL {
            assert_eq!(checks(st, 1).len(), talk_count(st), "{st}");
        }
        assert_eq!(checks(Stage::Overlay, 2).len(), 24);
    }

    #[test]
    fn stage1_and_2_all_ttl_64() {
        assert!(checks(Stage::Namespace, 1).iter().all(|c| c.expect_ttl == 64));
        let c = checks(Stage::SingleNode, 1);
        assert!(c.iter().all(|c| c.expect_ttl == 64));
        assert!(c.iter().any(|c| c.from == "con1" && c.to == Ipv4Addr::new(172, 16, 0, 3)));
    }

    #[test]
    fn multi_node_ttls() {
        let c = checks(Stage::MultiNode, 1);
        let ttl = |from: &str, to: [u8; 4]| c.iter().find(|c| c.from == from && c.to == Ipv4Addr::from(to)).unwrap().expect_ttl;
        assert_eq!(ttl("con1", [172, 16, 1, 2]), 62);
        assert_eq!(ttl("node", [172, 16, 1, 2]), 63);
        assert_eq!(ttl("con1", [10, 0, 0, 20]), 63);
        assert_eq!(ttl("node", [10, 0, 0, 20]), 64);
        assert_eq!(ttl("node", [172, 16, 1, 1]), 64);
        assert_eq!(ttl("con1", [172, 16, 0, 3]), 64);
        assert_eq!(ttl("con2", [172, 16, 1, 1]), 63);
    }

    #[test]
    fn large_labs_get_a_bounded_plan() {
        let mut o = Options::new(Stage::SingleNode);
        o.containers = 200;
        o.pod_cidr = Some("172.16.0.0/20".parse().unwrap());
        let (c, plan) = node_checks(&Topology::new(o).unwrap(), 1);
        assert_eq!(plan, "bounded");
        // Each of 201 sources: its node and its bridge.
        assert_eq!(c.len(), 201 * 2);
        let mut o = Options::new(Stage::Overlay);
        o.nodes = 8;
        o.containers = 20;
        let (c, plan) = node_checks(&Topology::new(o).unwrap(), 1);
        assert_eq!(plan, "bounded");
        assert!(c.iter().filter(|c| c.from == "con5").count() == 2 + 7 * 3);
    }
}
