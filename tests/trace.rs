//! `cnet trace`: the path a packet takes, read from the live kernel, in every stage, both
//! overlays, the lab and host mode; and the drops it finds, checked against real pings.

mod common;
use common::*;

use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("cnet trace --json: {e}\n{text}"))
}

/// The places the trace passes, in order.
fn places(t: &Value) -> Vec<String> {
    t["hops"].as_array().expect("hops").iter().map(|h| h["at"].as_str().unwrap().to_string()).collect()
}

/// The hop at `at`.
fn hop<'t>(t: &'t Value, at: &str) -> &'t Value {
    t["hops"].as_array().unwrap().iter().find(|h| h["at"] == at).unwrap_or_else(|| panic!("no hop at {at}: {t:#}"))
}

fn delivered(t: &Value, at: &str, ttl: u64) {
    assert_eq!((t["verdict"].as_str(), t["at"].as_str(), t["ttl"].as_u64()), (Some("delivered"), Some(at), Some(ttl)), "{t:#}");
}

/// Stage 3: container to remote container, through both nodes' static routes; the TTL the
/// trace finds is the one `cnet test` asserts and ping sees.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_container_to_remote_container() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up multi-node -q
mark con-con
cnet trace node1/con1 172.16.1.2 --json
mark node-con
cnet trace node1 node2/con2 --json
mark text
cnet trace node1/con1 172.16.1.2
mark ping
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    let t = json(&r.section("con-con"));
    assert_eq!(places(&t), ["node1/con1", "node1", "node2", "node2/con1"]);
    delivered(&t, "node2/con1", 62);
    assert_eq!(ping_ttls(&r.section("ping")), vec![62]);
    let src = hop(&t, "node1/con1");
    assert_eq!(src["route"], "172.16.1.2 via 172.16.0.1 dev veth11 src 172.16.0.2");
    assert_eq!(src["out"]["ttl"], 64);
    let n1 = hop(&t, "node1");
    assert_eq!((n1["arrived_on"].as_str(), n1["port"].as_str()), (Some("br0"), Some("veth10")));
    assert_eq!(n1["route"], "172.16.1.2 from 172.16.0.2 via 10.0.0.20 dev enp0s8");
    assert!(n1["matched"].as_str().unwrap().starts_with("172.16.1.0/24 via 10.0.0.20 dev enp0s8 (static"), "{n1:#}");
    assert_eq!((n1["out"]["dev"].as_str(), n1["out"]["ttl"].as_u64()), (Some("enp0s8"), Some(63)));
    let n2 = hop(&t, "node2");
    assert_eq!((n2["arrived_on"].as_str(), n2["ttl_in"].as_u64()), (Some("enp0s8"), Some(63)));
    assert_eq!((n2["out"]["dev"].as_str(), n2["out"]["ttl"].as_u64()), (Some("br0"), Some(62)));
    assert!(n2["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{n2:#}");
    assert_eq!(hop(&t, "node2/con1")["outcome"]["kind"], "delivered");
    // Node to remote container: one router, node 2.
    let t = json(&r.section("node-con"));
    assert_eq!(places(&t), ["node1", "node2", "node2/con2"]);
    delivered(&t, "node2/con2", 63);
    // The text: one block per hop, within 80 columns.
    let text = r.section("text");
    assert!(text.contains(" 3  node2\n") && text.contains("delivered to node2/con1 with ttl 62 (4 hops)"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    assert_nothing_left(&r);
}

/// A node that does not route: the trace says where and why, and ping agrees.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_drop_when_forwarding_is_off() {
    require_root();
    let r = sandbox(
        r#"
cnet up multi-node -q
cnet exec node2 -- sysctl -qw net.ipv4.ip_forward=0
mark json
cnet trace node1/con1 172.16.1.2 --json || echo "exit=$?"
mark text
cnet trace node1/con1 172.16.1.2 || echo "exit=$?"
mark ping
cnet exec node1/con1 -- ping -c1 -W1 172.16.1.2 || echo "exit=$?"
mark end
cnet down
"#,
    );
    r.ok();
    let json_part = r.section("json");
    let (body, code) = json_part.rsplit_once("exit=").expect("a drop exits non-zero");
    assert_eq!(code.trim(), "1");
    let t = json(body);
    assert_eq!(t["verdict"], "dropped");
    assert_eq!(t["at"], "node2");
    assert_eq!(t["reason"], "net.ipv4.ip_forward is 0 (the node does not route)");
    assert_eq!(places(&t), ["node1/con1", "node1", "node2"]);
    assert!(r.section("text").contains("dropped at node2: net.ipv4.ip_forward is 0 (the node does not route)"), "{}", r.stdout);
    assert!(ping_ttls(&r.section("ping")).is_empty(), "ping got through: {}", r.section("ping"));
}

/// Stage 4 with cnet's tunnel: encapsulated at node 1, decapsulated at node 2, TTL 62;
/// and the talk's reason for rp_filter=0, seen when it is put back to strict.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_udp_tunnel() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay -q
mark con-con
cnet trace node1/con1 172.16.1.2 --json
mark node-con
cnet trace node1 172.16.1.3 --json
mark strict
cnet exec node2 -- sysctl -qw net.ipv4.conf.all.rp_filter=1
cnet trace node1/con1 10.0.0.20 --json || true
mark ping
cnet exec node1/con1 -- ping -c1 -W1 10.0.0.20 || true
mark down
cnet down 2>/dev/null
{LEFTOVERS}"#
    ));
    r.ok();
    let t = json(&r.section("con-con"));
    assert_eq!(places(&t), ["node1/con1", "node1", "node2", "node2/con1"]);
    delivered(&t, "node2/con1", 62);
    let n1 = hop(&t, "node1");
    assert_eq!(n1["out"]["dev"], "tun0");
    assert_eq!(n1["next_hop"]["state"], "noarp");
    let e = &n1["encap"];
    assert_eq!(
        (e["kind"].as_str(), e["local"].as_str(), e["remote"].as_str()),
        (Some("udp"), Some("10.0.0.10:9000"), Some("10.0.0.20:9000"))
    );
    assert_eq!(
        (e["subnet"].as_str(), e["outer_size"].as_u64(), e["outer_dev"].as_str()),
        (Some("172.16.1.0/24"), Some(84 + 28), Some("enp0s8"))
    );
    let n2 = hop(&t, "node2");
    assert!(n2["decap"].as_str().unwrap().contains("on 10.0.0.20:9000, from its peer 10.0.0.10:9000"), "{n2:#}");
    assert_eq!((n2["arrived_on"].as_str(), n2["ttl_in"].as_u64()), (Some("tun0"), Some(63)));
    delivered(&json(&r.section("node-con")), "node2/con2", 63);
    // Strict rp_filter on node 2: con1's packet to node 2's own address comes in by enp0s8,
    // but the route back to con1 leaves by tun0.
    let t = json(&r.section("strict"));
    assert_eq!((t["verdict"].as_str(), t["at"].as_str()), (Some("dropped"), Some("node2")), "{t:#}");
    let why = t["reason"].as_str().unwrap();
    assert!(why.contains("rp_filter") && why.contains("leaves by tun0, not enp0s8"), "{why}");
    assert!(ping_ttls(&r.section("ping")).is_empty(), "ping got through: {}", r.section("ping"));
    assert_nothing_left(&r);
}

/// Stage 4 with the kernel's VXLAN: UDP to port 4789, VNI 1, the same TTLs.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_vxlan() {
    require_root();
    let r = sandbox(
        r#"
cnet up overlay --backend vxlan -q
mark trace
cnet trace node1/con1 node2/con1 --json
mark down
cnet down
"#,
    );
    r.ok();
    let t = json(&r.section("trace"));
    assert_eq!(places(&t), ["node1/con1", "node1", "node2", "node2/con1"]);
    delivered(&t, "node2/con1", 62);
    let n1 = hop(&t, "node1");
    assert_eq!(n1["route"], "172.16.1.2 from 172.16.0.2 via 172.16.1.100 dev vxlan0");
    let e = &n1["encap"];
    assert_eq!(
        (e["kind"].as_str(), e["remote"].as_str(), e["port"].as_u64(), e["vni"].as_u64()),
        (Some("vxlan"), Some("10.0.0.20:4789"), Some(4789), Some(1))
    );
    assert_eq!(hop(&t, "node2")["arrived_on"], "vxlan0");
}

/// Stages 1 and 2: through a veth, and across the bridge with nothing routed (TTL 64).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stages_1_and_2_same_node() {
    require_root();
    let r = sandbox(
        r#"
cnet up namespace -q
mark s1-node-con
cnet trace node1 172.16.0.1 --json
mark s1-con-node
cnet trace node1/con 10.0.0.10 --json
cnet down -q
cnet up single-node -q
mark s2-con-con
cnet trace 2-single-node/con2 172.16.0.2 --json
mark s2-node-con
cnet trace 2-single-node 172.16.0.3 --json
mark end
cnet down -q
"#,
    );
    r.ok();
    let t = json(&r.section("s1-node-con"));
    assert_eq!(places(&t), ["node1", "node1/con"]);
    delivered(&t, "node1/con", 64);
    assert_eq!(hop(&t, "node1")["matched"].as_str().map(|m| m.starts_with("172.16.0.1 dev veth1")), Some(true), "{t:#}");
    delivered(&json(&r.section("s1-con-node")), "node1", 64);
    let t = json(&r.section("s2-con-con"));
    assert_eq!(places(&t), ["node1/con2", "node1", "node1/con1"]);
    delivered(&t, "node1/con1", 64);
    let br = hop(&t, "node1");
    assert_eq!(
        (br["outcome"]["kind"].as_str(), br["arrived_on"].as_str(), br["port"].as_str()),
        (Some("switched"), Some("br0"), Some("veth20"))
    );
    delivered(&json(&r.section("s2-node-con")), "node1/con2", 64);
}

/// Host mode on the talk's VM: the trace ends where the packet leaves the machine, and
/// says how to follow it on the next one.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn host_mode_on_the_vm() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
cnet up multi-node --host -q
mark leaves
cnet trace --host con1 172.16.1.2 --json
mark local
cnet trace --host con1 172.16.0.3 --json
mark arriving
cnet trace --host node 172.16.0.2 --in enp0s8 --src 172.16.1.2 --ttl 63 --json
mark down
cnet down -q
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let t = json(&r.section("leaves"));
    assert_eq!(places(&t), ["con1", "node"]);
    assert_eq!(t["verdict"], "leaves-machine");
    assert_eq!(t["towards"], "by enp0s8 towards 10.0.0.20 (node 2)");
    assert_eq!(t["continue_with"], "cnet trace --host node 172.16.1.2 --in enp0s8 --src 172.16.0.2 --ttl 63");
    assert_eq!(hop(&t, "node")["next_hop"]["addr"], "10.0.0.20");
    delivered(&json(&r.section("local")), "con2", 64);
    let t = json(&r.section("arriving"));
    assert_eq!(places(&t), ["node", "con1"]);
    delivered(&t, "con1", 62);
    assert_nothing_left(&r);
}
