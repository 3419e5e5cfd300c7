//! cnet as a CNI plugin, driven as a runtime drives it: no arguments, the CNI_* variables,
//! the network config on stdin; the answer (or the spec's error JSON) on stdout. Each test
//! runs in a sandbox playing the talk's VM, with stage 2's node part up (`--containers 0`).

mod common;
use common::*;

use serde_json::Value;

/// The node's part, and `cni CMD ID [VAR=VALUE...]`: the plugin as a runtime runs it, the
/// config from $IN (default $CONF), the container's namespace /run/netns/ID.
const CNI: &str = r#"
cnet up single-node --host --containers 0 -q ${PODCIDR:+--pod-cidr $PODCIDR}
CONF='{"cniVersion":"1.0.0","name":"cnet","type":"cnet"}'
cni() {
  c=$1; id=$2; shift 2
  printf '%s' "${IN:-$CONF}" | env CNI_COMMAND=$c CNI_CONTAINERID=$id CNI_NETNS=/run/netns/$id CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$@" cnet
}
# with_prev CONF RESULT: the config as libcni sends it for DEL and CHECK.
with_prev() { printf '%s,"prevResult":%s}' "${1%\}}" "$2"; }
"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An error answer: exit code 1, and the spec's error JSON on stdout with `code`.
fn assert_error(section: &str, code: u64) -> Value {
    let mut lines = section.lines();
    let out = lines.next().unwrap_or_default();
    let exit = lines.next().unwrap_or_default();
    assert_eq!(exit, "exit=1", "{section}");
    let v = json(out);
    assert_eq!(v["code"], code, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["cniVersion"].is_string() && v["details"].is_string(), "{v}");
    v
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn add_result_shape_and_connectivity() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
# As a runtime does (podman itself, kubelet's runtime with CNI's loopback plugin).
ip netns add a; ip netns add b; ip -n a link set lo up; ip -n b link set lo up
mark add
cni ADD a
mark add040
IN='{{"cniVersion":"0.4.0","name":"cnet","type":"cnet"}}' cni ADD b
mark addr
ip -n a -o -4 addr show eth0 | awk '{{print $4}}'
ip -n a route
mark ping
ip netns exec a ping -c1 -W2 172.16.0.1
ip netns exec a ping -c1 -W2 172.16.0.3
mark status
cnet status --host
mark test
cnet test --host --json
"#
    ));
    r.ok();
    for (section, version) in [("add", "1.0.0"), ("add040", "0.4.0")] {
        let v = json(&r.section(section));
        assert_eq!(v["cniVersion"], version);
        let ifs = v["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{v}");
        assert_eq!(ifs[0]["name"], "br0");
        assert!(ifs[1]["name"].as_str().unwrap().starts_with("vethac1000"), "{v}");
        assert!(ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none());
        assert_eq!(ifs[2]["name"], "eth0");
        assert!(ifs[2]["sandbox"].as_str().unwrap().starts_with("/run/netns/"));
        for i in ifs {
            let mac = i["mac"].as_str().unwrap_or_else(|| panic!("no mac: {v}"));
            assert_eq!(mac.split(':').filter(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()).count(), 6, "{mac}");
        }
        let ip = &v["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], "172.16.0.1");
        // 0.4.0 results carry each address's IP version; 1.0.0 dropped it.
        assert_eq!(ip.get("version").is_some(), version == "0.4.0", "{v}");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert!(v["dns"].is_object());
    }
    assert_eq!(json(&r.section("add"))["ips"][0]["address"], "172.16.0.2/24");
    assert_eq!(json(&r.section("add040"))["ips"][0]["address"], "172.16.0.3/24");
    let addr = r.section("addr");
    assert!(addr.starts_with("172.16.0.2/24\n") && addr.contains("default via 172.16.0.1 dev eth0"), "{addr}");
    assert_eq!(ping_ttls(&r.section("ping")), vec![64, 64]);
    // status and test know the runtime's containers from their leases.
    let status = r.section("status");
    assert!(status.contains("a ") && status.contains("172.16.0.2/24") && status.contains("vethac100002"), "{status}");
    let checks = Checks::parse(&r.section("test"));
    assert!(checks.failed.is_empty(), "{:?}", checks.failed);
    let test: Value = json(&r.section("test"));
    let from_a = test[0]["results"].as_array().unwrap().iter().filter(|c| c["from"] == "a").count();
    let to_a = test[0]["results"].as_array().unwrap().iter().filter(|c| c["to"] == "172.16.0.2").count();
    assert!(from_a >= 4 && to_a >= 2, "{from_a} checks from a, {to_a} to it: {}", r.section("test"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn del_is_idempotent_and_releases_everything() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
ip netns add a
res=$(cni ADD a)
mark del
IN=$(with_prev "$CONF" "$res") cni DEL a; echo "exit=$?"
IN=$(with_prev "$CONF" "$res") cni DEL a; echo "exit=$?"
cni DEL never-added; echo "exit=$?"
printf '%s' "$CONF" | env CNI_COMMAND=DEL CNI_CONTAINERID=a CNI_IFNAME=eth0 cnet; echo "exit=$?"
wait_for 100 sh -c '! ip -o link show | grep -q vethac10'
mark left
ip -o link show | grep vethac10 || true
ip -n a -o link show | grep eth0 || true
ls /run/cnet/cni/br0 | grep -v -e by-id -e last -e '^reaper' || true
ls /run/cnet/cni/br0/by-id
mark again
cni ADD a | head -c 1; echo
ip -n a -o -4 addr show eth0 | awk '{{print $4}}'
"#
    ));
    r.ok();
    assert_eq!(r.section("del").trim(), "exit=0\nexit=0\nexit=0\nexit=0", "DEL answers nothing, exit 0, every time");
    assert!(r.section("left").trim().is_empty(), "left after DEL:\n{}", r.section("left"));
    // The same container and interface can be added again at once (a released address is
    // handed out again only when the others are taken: round robin).
    assert_eq!(r.section("again").trim(), "{\n172.16.0.3/24");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn check_finds_what_was_changed_by_hand() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
ip netns add a
res=$(cni ADD a)
mark ok
IN=$(with_prev "$CONF" "$res") cni CHECK a; echo "exit=$?"
mark noaddr
ip -n a addr del 172.16.0.2/24 dev eth0
IN=$(with_prev "$CONF" "$res") cni CHECK a && echo "exit=0" || echo "exit=$?"
mark nolink
ip -n a link del eth0
IN=$(with_prev "$CONF" "$res") cni CHECK a && echo "exit=0" || echo "exit=$?"
mark unknown
IN=$(with_prev "$CONF" "$res") cni CHECK nobody CNI_NETNS=/run/netns/a && echo "exit=0" || echo "exit=$?"
mark noprev
cni CHECK a && echo "exit=0" || echo "exit=$?"
"#
    ));
    r.ok();
    assert_eq!(r.section("ok").trim(), "exit=0", "CHECK of an intact attachment answers nothing");
    let e = assert_error(&r.section("noaddr"), 102);
    assert!(e["details"].as_str().unwrap().contains("eth0 has lost its address 172.16.0.2/24"), "{e}");
    assert!(e["details"].as_str().unwrap().contains("default route via 172.16.0.1"), "{e}");
    let e = assert_error(&r.section("nolink"), 102);
    let d = e["details"].as_str().unwrap();
    assert!(d.contains("vethac100002 (the node's end) is missing") && d.contains("eth0 is missing in the container"), "{e}");
    assert_error(&r.section("unknown"), 3);
    assert_error(&r.section("noprev"), 7);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn errors_are_the_specs_json() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
try() {{ "$@" && echo "exit=0" || echo "exit=$?"; }}
run() {{ printf '%s' "$1" | env CNI_COMMAND=$2 CNI_CONTAINERID=x CNI_NETNS=/run/netns/x CNI_IFNAME=eth0 cnet; }}
ip netns add x
mark notup
try run '{{"cniVersion":"1.0.0","name":"cnet","type":"cnet"}}' ADD
{CNI}
mark version
echo '{{"cniVersion":"0.4.0"}}' | env CNI_COMMAND=VERSION CNI_NETNS=dummy CNI_IFNAME=dummy CNI_PATH=dummy cnet
mark badjson
try run '{{"cniVersion":' ADD
mark badversion
try run '{{"cniVersion":"9.9.9","name":"cnet","type":"cnet"}}' ADD
mark noname
try run '{{"cniVersion":"1.0.0","type":"cnet"}}' ADD
mark ipam
try run '{{"cniVersion":"1.0.0","name":"cnet","type":"cnet","ipam":{{"type":"host-local"}}}}' ADD
mark badsubnet
try run '{{"cniVersion":"1.0.0","name":"cnet","type":"cnet","subnet":"172.17.0.0/24"}}' ADD
mark noenv
echo "$CONF" | env CNI_COMMAND=ADD CNI_IFNAME=eth0 cnet && echo "exit=0" || echo "exit=$?"
mark badenv
echo "$CONF" | env CNI_COMMAND=ADD CNI_CONTAINERID=-bad CNI_NETNS=/run/netns/nope CNI_IFNAME=a/b cnet && echo "exit=0" || echo "exit=$?"
mark badcommand
echo "$CONF" | env CNI_COMMAND=FROB cnet && echo "exit=0" || echo "exit=$?"
mark status
try run "$CONF" STATUS
mark leftovers
ip -o link show | grep -c vethac10 || true
ls /run/cnet/cni/br0 2>/dev/null | grep -c '^172' || true
"#
    ));
    r.ok();
    let e = assert_error(&r.section("notup"), 11);
    assert!(e["details"].as_str().unwrap().contains("cnet up"), "try again later, saying what to do: {e}");
    let v = json(&r.section("version"));
    assert_eq!(v["cniVersion"], "0.4.0");
    let versions: Vec<&str> = v["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&want), "{want} in {versions:?}");
    }
    assert_error(&r.section("badjson"), 6);
    assert_error(&r.section("badversion"), 1);
    assert_error(&r.section("noname"), 7);
    let e = assert_error(&r.section("ipam"), 2);
    assert!(e["msg"].as_str().unwrap().contains("ipam") && e["msg"].as_str().unwrap().contains("host-local"), "{e}");
    let e = assert_error(&r.section("badsubnet"), 7);
    assert!(e["details"].as_str().unwrap().contains("172.16.0.0/24"), "names the node's own subnet: {e}");
    let e = assert_error(&r.section("noenv"), 4);
    assert!(e["msg"].as_str().unwrap().contains("CNI_CONTAINERID") && e["msg"].as_str().unwrap().contains("CNI_NETNS"), "{e}");
    let e = assert_error(&r.section("badenv"), 4);
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        assert!(e["msg"].as_str().unwrap().contains(var), "{var}: {e}");
    }
    assert_error(&r.section("badcommand"), 4);
    assert_eq!(r.section("status").trim(), "exit=0", "STATUS (1.1): ready");
    assert_eq!(r.section("leftovers").trim(), "0\n0", "a failed ADD leaves no link and no lease");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn fifty_concurrent_adds_get_fifty_addresses() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
for i in $(seq 50); do ip netns add c$i; done
for i in $(seq 50); do (cni ADD c$i > $T/add$i; echo $? > $T/rc$i) & done
wait
mark codes
cat $T/rc* | sort | uniq -c | awk '{{print $1, $2}}'
mark addresses
for i in $(seq 50); do ip -n c$i -o -4 addr show eth0 | awk '{{print $4}}'; done | sort | uniq | wc -l
grep -ho '"address":"[^"]*"' $T/add* | sort | uniq | wc -l
mark ports
ip -o link show master br0 | wc -l
ls /run/cnet/cni/br0 | grep -c '^172'
mark ping
ip netns exec c17 ping -c1 -W2 "$(ip -n c33 -o -4 addr show eth0 | awk '{{print $4}}' | cut -d/ -f1)"
for i in $(seq 50); do (cni DEL c$i; echo $? > $T/drc$i) & done
wait
wait_for 200 sh -c '! ip -o link show | grep -q vethac10'
mark released
cat $T/drc* | sort | uniq -c | awk '{{print $1, $2}}'
ls /run/cnet/cni/br0 | grep -c '^172' || true
ls /run/cnet/cni/br0/by-id | wc -l
ip -o link show master br0 | wc -l
"#
    ));
    r.ok();
    assert_eq!(r.section("codes").trim(), "50 0", "every ADD succeeds");
    assert_eq!(r.section("addresses").trim(), "50\n50", "50 distinct addresses, in the kernel and in the results");
    assert_eq!(r.section("ports").trim(), "50\n50");
    assert_eq!(ping_ttls(&r.section("ping")), vec![64]);
    assert_eq!(r.section("released").trim(), "50 0\n0\n0\n0", "every DEL succeeds and releases its lease and veth");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stale_leases_are_collected_when_the_pool_runs_out() {
    require_root();
    // A /29: .1 is the bridge, .2-.6 for containers.
    let r = sandbox(&format!(
        r#"{VM}PODCIDR=172.16.0.0/29
{CNI}
for i in 1 2 3 4 5 6; do ip netns add c$i; done
for i in 1 2 3 4 5; do cni ADD c$i > /dev/null; done
mark full
cni ADD c6 && echo "exit=0" || echo "exit=$?"
mark status
ip netns del c3
cnet status --host | grep -A1 'c3' || true
mark collected
cni ADD c6 | grep -o '"address":"[^"]*"'
mark gc
IN='{{"cniVersion":"1.1.0","name":"cnet","type":"cnet","cni.dev/valid-attachments":[{{"containerID":"c1","ifname":"eth0"}},{{"containerID":"c6","ifname":"eth0"}}]}}' cni GC gc; echo "exit=$?"
ls /run/cnet/cni/br0/by-id | sort
"#
    ));
    r.ok();
    let e = assert_error(&r.section("full"), 100);
    assert!(e["msg"].as_str().unwrap().contains("172.16.0.0/29"), "{e}");
    assert!(r.section("status").contains("gone"), "status shows the stale lease: {}", r.section("status"));
    assert_eq!(r.section("collected").trim(), "\"address\":\"172.16.0.4/29\"", "c3's address, collected from its stale lease");
    assert_eq!(r.section("gc").trim(), "exit=0\nc1:eth0\nc6:eth0", "GC keeps only the attachments the runtime lists");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn a_failed_add_is_undone() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
ip netns add a
for at in 2 4 6; do
  mark fail$at
  cni ADD a CNET_FAIL_AT_STEP=$at && echo "exit=0" || echo "exit=$?"
done
mark left
ip -o link show | grep vethac10 || true
ip -n a -o link show | grep eth0 || true
ls /run/cnet/cni/br0 | grep '^172' || true
mark works
cni ADD a | grep -o '"address":"[^"]*"'
"#
    ));
    r.ok();
    for at in [2, 4, 6] {
        let e = assert_error(&r.section(&format!("fail{at}")), 101);
        assert!(e["msg"].as_str().unwrap().contains(&format!("step {at} of 6")), "{e}");
        assert!(e["details"].as_str().unwrap().contains("undone"), "{e}");
    }
    assert!(r.section("left").trim().is_empty(), "{}", r.section("left"));
    assert!(r.section("works").contains("172.16.0."), "{}", r.section("works"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn down_removes_cnets_part_and_leaves_the_runtimes_containers() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}{CNI}
ip netns add a
cni ADD a > $T/res
ip netns exec a sleep 1000 & sleeper=$!
mark down
cnet down 2>&1
mark after
ls /run/netns
kill -0 $sleeper && echo "still running"
ip -n a -o link show | grep -c eth0 || true
mark del
IN=$(with_prev "$CONF" "$(cat $T/res)") cni DEL a; echo "exit=$?"
kill $sleeper; ip netns del a
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert!(r.section("down").contains("1 container(s) a runtime attached"), "{}", r.section("down"));
    assert_eq!(
        r.section("after").trim(),
        "a\nstill running\n0",
        "the runtime's namespace and process stay; cnet's interface goes"
    );
    assert_eq!(r.section("del").trim(), "exit=0", "the runtime's DEL after down finds nothing to do");
    assert_nothing_left(&r);
}
