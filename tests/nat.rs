//! Beyond the talk: stage 5 (the outside world: masquerade, a published port) and stage 6
//! (a ClusterIP-style service), in the lab and on two sandbox VMs behind a gateway.

mod common;
use common::*;

fn total(c: &Checks) -> usize {
    c.nodes.iter().map(|n| n.2).sum()
}

/// `curl`'s one line from cnet's demo server, or the error.
const CURL: &str = "curl -sS --max-time 3";

/// Stage 5 in the lab, as the issue judges it: con1 pings the outside host with TTL 62; the
/// outside host sees con1 as node 1 (masquerade); node 1's published port answers from con1
/// for the outside host, node 2, node 1 on localhost, con2 (hairpin) and con1 itself; every
/// check of `cnet test` passes; `down` leaves nothing (no table, server or namespace).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage5_outside_world_in_the_lab() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up outside -q
mark test
cnet test --json
mark ping
cnet exec node1/con1 -- ping -c1 -W2 203.0.113.10
mark seen
cnet exec node1/con1 -- {CURL} 203.0.113.10:8000
mark published
for from in outside node2 node2/con1 node1/con2 node1/con1; do echo "$from: $(cnet exec $from -- {CURL} 10.0.0.10:8080)"; done
echo "localhost: $(cnet exec node1 -- {CURL} localhost:8080)"
mark trace
cnet trace node1/con1 outside --json
mark no-masquerade
cnet exec node1 -- nft delete chain ip cnet postrouting 2>&1 || cnet exec node1 -- nft flush chain ip cnet postrouting
cnet exec node1/con1 -- ping -c1 -W1 203.0.113.10 > /dev/null 2>&1 && echo "ping passed" || echo "ping failed"
mark table
cnet exec node2 -- nft list table ip cnet
mark status
cnet status --json
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let t = Checks::parse(&r.section("test"));
    assert!(t.all_passed(68), "{} checks, failed: {:?}", total(&t), t.failed);
    assert_eq!(ping_ttls(&r.section("ping")), vec![62], "outside -> gateway -> node 1 -> con1");
    let seen = r.section("seen");
    assert!(seen.starts_with("outside on outside") && seen.contains("sees you as 10.0.0.10:"), "{seen}");
    let published = r.section("published");
    for from in ["outside", "node2", "node2/con1", "node1/con2", "node1/con1", "localhost"] {
        let line = published.lines().find(|l| l.starts_with(&format!("{from}: "))).unwrap_or("");
        assert!(line.contains("con1 on 5-outside-world-1 (172.16.0.2:8000) sees you as"), "{from}: {published}");
    }
    // DNAT only from outside: con1 sees the outside host itself.
    assert!(published.contains("outside: con1 on 5-outside-world-1 (172.16.0.2:8000) sees you as 203.0.113.10:"), "{published}");
    // trace walks through the lab's gateway to the outside host, and says where the
    // masquerade rule rewrites the source.
    let trace: serde_json::Value = serde_json::from_str(&r.section("trace")).expect("trace --json");
    let at: Vec<&str> = trace["hops"].as_array().unwrap().iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert_eq!(at, ["node1/con1", "node1", "gateway", "outside"], "{trace}");
    assert_eq!((trace["verdict"].as_str(), trace["ttl"].as_u64()), (Some("delivered"), Some(62)), "{trace}");
    assert!(trace["hops"][1]["notes"].to_string().contains("rewrites the source 172.16.0.2 to 10.0.0.10"), "{trace}");
    assert!(r.section("no-masquerade").contains("ping failed"), "without masquerade the gateway cannot answer a pod");
    let table = r.section("table");
    assert!(table.contains("comment \"cnet\"") || table.contains("cnet"), "{table}");
    assert!(table.contains("oifname \"enp0s8\" masquerade"), "{table}");
    assert!(r.section("status").contains("\"translations\""), "status shows conntrack's translations");
    assert_nothing_left(&r);
}

/// Stage 6 in the lab: 20 requests to the service 10.96.0.10:80 from a container and from
/// each node reach both backends; status names who got which connection.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage6_services_in_the_lab() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up services -q
mark test
cnet test --json
for from in node1/con2 node1 node2; do
  mark "svc $from"
  for i in $(seq 20); do cnet exec $from -- {CURL} 10.96.0.10; done | sort | uniq -c
done
mark status
cnet status
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let t = Checks::parse(&r.section("test"));
    assert!(t.all_passed(74), "{} checks, failed: {:?}", total(&t), t.failed);
    for from in ["node1/con2", "node1", "node2"] {
        let s = r.section(&format!("svc {from}"));
        assert!(s.contains("con1 on 6-services-1") && s.contains("con1 on 6-services-2"), "{from}: {s}");
    }
    assert!(r.section("status").contains("-> 10.96.0.10:80, answered by 172.16."), "{}", r.section("status"));
    assert_nothing_left(&r);
}

/// A failed NAT step rolls back the rules already added; a user's own table survives `up`
/// and `down`; a table named like cnet's but not cnet's stops `up`, untouched; cycles.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn nat_rollback_foreign_tables_and_cycles() {
    require_root();
    let r = sandbox(&format!(
        r#"
mark fail
# node 1's steps 30-41 are the NAT steps: fail at the published port (35) and at the last.
for at in 31 35 41; do
  c=0; CNET_FAIL_AT_STEP=$at cnet up outside -q 2>/dev/null || c=$?
  echo "at $at: exit $c, $(ls /run/netns | wc -l) namespaces, $(pgrep -xc cnet || true) cnet processes"
done
mark mine
nft add table ip mine; nft add chain ip mine post '{{ type nat hook postrouting priority 100; }}'
nft add rule ip mine post ip saddr 192.0.2.0/24 masquerade
cnet up services -q; cnet down -q
nft list table ip mine
mark cycles
for i in 1 2 3; do cnet up services -q && cnet test > /dev/null && cnet down -q && echo "cycle $i ok"; done
nft delete table ip mine
{LEFTOVERS}"#
    ));
    r.ok();
    let fail = r.section("fail");
    for at in ["31", "35", "41"] {
        assert!(fail.contains(&format!("at {at}: exit 1, 0 namespaces, 0 cnet processes")), "{fail}");
    }
    assert!(r.section("mine").contains("ip saddr 192.0.2.0/24 masquerade"), "{}", r.section("mine"));
    assert_eq!(r.section("cycles").lines().filter(|l| l.ends_with(" ok")).count(), 3, "{}", r.section("cycles"));
    assert_nothing_left(&r);
}

/// Host mode: two sandbox VMs on one LAN with a gateway (10.0.0.1) and an outside host
/// behind it. Each runs `cnet up services --host --node N` with its default route via the
/// gateway: masquerade on that route's interface; `cnet test --host` passes on both; a
/// user's table survives; a foreign `table ip cnet` stops `up` and is left as it was.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stages_5_and_6_on_two_host_vms() {
    require_root();
    let r = sandbox(
        r#"
ip link add lan type bridge; ip link set lan up
for n in vm1 vm2 gw outside; do ip netns add $n; ip -n $n link set lo up; done
i=0; for n in vm1 vm2 gw; do
  i=$((i+1)); ip link add p$i type veth peer name enp0s8 netns $n; ip link set p$i master lan up; ip -n $n link set enp0s8 up
done
ip -n vm1 addr add 10.0.0.10/24 dev enp0s8; ip -n vm2 addr add 10.0.0.20/24 dev enp0s8; ip -n gw addr add 10.0.0.1/24 dev enp0s8
ip -n vm1 route add default via 10.0.0.1; ip -n vm2 route add default via 10.0.0.1
ip link add eth1 netns gw type veth peer name eth0 netns outside
ip -n gw addr add 203.0.113.1/24 dev eth1; ip -n gw link set eth1 up; ip netns exec gw sysctl -qw net.ipv4.ip_forward=1
ip -n outside addr add 203.0.113.10/24 dev eth0; ip -n outside link set eth0 up; ip -n outside route add default via 203.0.113.1
ip netns exec outside unshare --uts sh -c 'hostname outside; exec cnet serve --name outside --listen 203.0.113.10:8000' &
server=$!
vm() {  # vm INDEX: one VM's session, in its own mount and UTS namespaces
  ip netns exec vm$1 unshare --mount --uts --propagation private sh -euc '
    mount -t tmpfs vm /run/netns; mount -t tmpfs vm /run/cnet; hostname vm'$1'
    wait_for() { n=$1; shift; i=0; until "$@"; do i=$((i+1)); [ $i -lt $n ] || return 1; sleep 0.05; done; }
    '"$2"'
  '
}
mark foreign
vm 1 'nft add table ip cnet; c=0; cnet up outside --host --node 1 -q 2>&1 || c=$?; echo "exit $c"; nft list tables; ls /run/netns | wc -l; nft delete table ip cnet'
mark up
vm 1 'nft add table ip mine
  cnet up services --host --node 1 -q; touch $T/up.1; wait_for 400 test -e $T/up.2
  cnet test --host --json > $T/test.1; touch $T/tested.1; wait_for 600 test -e $T/checked
  nft list table ip cnet > $T/table.1
  cnet down -q; nft list tables > $T/tables.1; ip -br link > $T/links.1; ls /run/netns >> $T/links.1' > $T/vm.1 2>&1 &
p1=$!
vm 2 'cnet up services --host --node 2 -q; touch $T/up.2; wait_for 400 test -e $T/up.1
  cnet test --host --json > $T/test.2; touch $T/tested.2; wait_for 600 test -e $T/checked
  cnet down -q; nft list tables > $T/tables.2; ip -br link > $T/links.2; ls /run/netns >> $T/links.2' > $T/vm.2 2>&1 &
p2=$!
wait_for 1200 test -e $T/tested.1 -a -e $T/tested.2 || true
mark from-outside
ip netns exec outside curl -sS --max-time 3 10.0.0.10:8080 || true
touch $T/checked
wait $p1 $p2 || true
kill $server
for i in 1 2; do mark vm.$i; cat $T/vm.$i; mark test.$i; cat $T/test.$i; mark tables.$i; cat $T/tables.$i; mark links.$i; cat $T/links.$i; done
mark table.1; cat $T/table.1
mark end
"#,
    );
    r.ok();
    let foreign = r.section("foreign");
    assert!(foreign.contains("is not cnet's") && foreign.contains("exit 1"), "{foreign}");
    assert!(foreign.contains("table ip cnet") && foreign.trim_end().ends_with('0'), "left as it was, nothing built: {foreign}");
    for i in ["1", "2"] {
        let t = Checks::parse(&r.section(&format!("test.{i}")));
        assert!(
            t.failed.is_empty() && total(&t) >= 30,
            "vm{i}: {} checks, failed: {:?}\n{}",
            total(&t),
            t.failed,
            r.section(&format!("vm.{i}"))
        );
        let links = r.section(&format!("links.{i}"));
        assert!(links.lines().all(|l| l.starts_with("lo ") || l.starts_with("enp0s8")), "vm{i} left: {links}");
    }
    assert_eq!(r.section("tables.1").trim(), "table ip mine", "the user's table survives, cnet's is gone");
    assert!(r.section("tables.2").trim().is_empty(), "{}", r.section("tables.2"));
    assert!(r.section("table.1").contains("oifname \"enp0s8\" masquerade"), "{}", r.section("table.1"));
    assert!(
        r.section("from-outside").starts_with("con1 on vm1 (172.16.0.2:8000) sees you as 203.0.113.10:"),
        "{}",
        r.section("from-outside")
    );
}
