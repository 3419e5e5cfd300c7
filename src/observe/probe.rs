//! Stages 5 and 6's checks: HTTP requests to cnet's demo servers, which answer who they are
//! and whom they see, so a check can assert NAT (the outside host sees the node's address),
//! DNAT (the published port is answered by con1) and the service (every backend answers).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::model::topology::{OUTSIDE, PUBLISHED_PORT, SERVER_PORT, SERVICE_PORT, SERVICE_VIP, Stage, Topology};
use crate::observe::check::{Check, CheckResult, Probe};
use crate::sys::ns;

/// Connections to the service from each source: enough that two backends each answer one
/// with near certainty (a miss is 2 × 2^-20).
pub const SERVICE_CONNECTIONS: u32 = 20;

/// The probes run on node `me` (stages 5-6): from the node and each container.
pub fn node_probes(topo: &Topology, me: u32) -> Vec<Check> {
    let stage = topo.stage();
    if !stage.has_nat() {
        return Vec::new();
    }
    let node = topo.node(me).expect("node exists");
    let first = &topo.nodes[0];
    // A demo server is known by the address it listens on, which its answer names (a host's
    // name is the machine's own in host mode, not the lab's).
    let publisher = server_at(first);
    let outside = SocketAddrV4::new(OUTSIDE.addr, SERVER_PORT).to_string();
    let mut sources: Vec<(String, bool)> = vec![("node".into(), false)];
    sources.extend(node.containers.iter().map(|c| (c.name.clone(), true)));
    let mut v = Vec::new();
    for (from, container) in &sources {
        // The outside world: a ping back with TTL 62 from a container (outside → gateway →
        // node → container), 63 from the node; the outside host sees the node's address.
        let expect_ttl = if *container { 62 } else { 63 };
        v.push(Check {
            from: from.clone(),
            to: OUTSIDE.addr,
            target: "outside".into(),
            expect_ttl,
            probe: Probe::Ping,
            netns: None,
        });
        v.push(Check {
            from: from.clone(),
            to: OUTSIDE.addr,
            target: "outside".into(),
            expect_ttl: 0,
            probe: Probe::Http { port: SERVER_PORT, answered_by: outside.clone(), seen_as: Some(node.ip.addr) },
            netns: None,
        });
        // Node 1's published port, from here.
        v.push(Check {
            from: from.clone(),
            to: first.ip.addr,
            target: "node1".into(),
            expect_ttl: 0,
            probe: Probe::Http { port: PUBLISHED_PORT, answered_by: publisher.clone(), seen_as: None },
            netns: None,
        });
        if stage == Stage::Services {
            let backends = topo.nodes.iter().map(server_at).collect();
            v.push(Check {
                from: from.clone(),
                to: SERVICE_VIP,
                target: "service".into(),
                expect_ttl: 0,
                probe: Probe::Service { port: SERVICE_PORT, connections: SERVICE_CONNECTIONS, backends },
                netns: None,
            });
        }
    }
    if me == 1 {
        // The node itself on localhost: the output chain, route_localnet, 127/8 masquerade.
        v.push(Check {
            from: "node".into(),
            to: Ipv4Addr::LOCALHOST,
            target: "localhost".into(),
            expect_ttl: 0,
            probe: Probe::Http { port: PUBLISHED_PORT, answered_by: publisher, seen_as: None },
            netns: None,
        });
    }
    v
}

/// The probe the outside host makes (the lab's `outside` member): node 1's published port,
/// answered by con1, which sees the outside host's own address (DNAT, no SNAT).
pub fn outside_probes(topo: &Topology) -> Vec<Check> {
    let first = &topo.nodes[0];
    vec![Check {
        from: "outside".into(),
        to: first.ip.addr,
        target: "node1".into(),
        expect_ttl: 0,
        probe: Probe::Http { port: PUBLISHED_PORT, answered_by: server_at(first), seen_as: Some(OUTSIDE.addr) },
        netns: None,
    }]
}

/// Where node `n`'s demo server (in its con1) listens, as its answers name it.
fn server_at(n: &crate::model::topology::Node) -> String {
    SocketAddrV4::new(n.containers[0].addr.addr, SERVER_PORT).to_string()
}

/// The demo server's answer names its listening address in brackets.
fn answered_by(line: &str, at: &str) -> bool {
    line.contains(&format!("({at})"))
}

/// Run HTTP and service probes (pings are check::run's), each from its source: the
/// namespace this process is in ("node", "outside") or a container's under `netns_dir`.
pub fn run(checks: &[Check], netns_dir: &Path, timeout: Duration) -> Vec<CheckResult> {
    checks.iter().map(|c| run_one(c, netns_dir, timeout)).collect()
}

fn run_one(c: &Check, netns_dir: &Path, timeout: Duration) -> CheckResult {
    let started = Instant::now();
    let source = (c.from != "node" && c.from != "outside").then(|| netns_dir.join(&c.from));
    let outcome = match &source {
        Some(path) => ns::in_netns(path, || probe(c, timeout)),
        None => probe(c, timeout),
    };
    let rtt_ms = Some((started.elapsed().as_secs_f64() * 1e6).round() / 1000.0);
    match outcome {
        Ok(answer) => CheckResult { check: c.clone(), pass: true, ttl: None, rtt_ms, error: None, answer: Some(answer) },
        Err(e) => CheckResult { check: c.clone(), pass: false, ttl: None, rtt_ms, error: Some(format!("{e:#}")), answer: None },
    }
}

/// What a probe found, or why it failed.
fn probe(c: &Check, timeout: Duration) -> Result<String> {
    match &c.probe {
        Probe::Ping => bail!("a ping is not an HTTP probe"),
        Probe::Http { port, answered_by, seen_as } => {
            let line = get(SocketAddrV4::new(c.to, *port), timeout)?;
            if !self::answered_by(&line, answered_by) {
                bail!("answered by '{line}', not the server on {answered_by}");
            }
            if let Some(want) = seen_as {
                let seen = line.rsplit("sees you as ").next().and_then(|a| a.split(':').next()).unwrap_or("");
                if seen != want.to_string() {
                    bail!("seen as {seen}, not {want}: '{line}'");
                }
            }
            Ok(line)
        }
        Probe::Service { port, connections, backends } => {
            let mut seen: Vec<String> = Vec::new();
            for _ in 0..*connections {
                let line = get(SocketAddrV4::new(c.to, *port), timeout)?;
                let who = backends
                    .iter()
                    .find(|b| answered_by(&line, b))
                    .ok_or_else(|| anyhow!("answered by '{line}', not a backend"))?;
                if !seen.contains(who) {
                    seen.push(who.clone());
                }
            }
            let missed: Vec<&String> = backends.iter().filter(|b| !seen.contains(b)).collect();
            if !missed.is_empty() {
                bail!(
                    "{connections} connections never reached {}",
                    missed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(format!("{connections} connections reached {}", seen.join(" and ")))
        }
    }
}

/// `GET /` over a fresh connection: the body's first line.
fn get(to: SocketAddrV4, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), timeout).with_context(|| format!("cannot connect to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: cnet\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r).with_context(|| format!("no answer from {to}"))?;
    let body = r.split("\r\n\r\n").nth(1).ok_or_else(|| anyhow!("{to} answered no HTTP: '{r}'"))?;
    Ok(body.lines().next().unwrap_or("").to_string())
}
