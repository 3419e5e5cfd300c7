//! The ebpf backend (issue #15): the talk's wire built by TC eBPF programs. Each test runs
//! the real binary in a sandbox of its own (tests/common).

mod common;
use common::*;

/// `cnet up overlay --backend ebpf`: the talk's 48 checks with its TTLs, the counters in
/// `cnet status`, and nothing left after `down`.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn lab_passes_the_talks_checks() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay --backend ebpf -q
mark test
cnet test --json
mark ping
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2
cnet exec node1 -- ping -c1 -W2 172.16.1.2
mark status
cnet status --json
mark tc
cnet exec node1 -- tc filter show dev enp0s8 ingress
cnet exec node1 -- tc filter show dev tun0 egress
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let c = Checks::parse(&r.section("test"));
    assert!(c.all_passed(48), "{:?}", c.failed);
    // Container to container across nodes: two routers (node 1, node 2); node to container: one.
    assert_eq!(ping_ttls(&r.section("ping")), vec![62, 63]);
    let st: serde_json::Value = serde_json::from_str(&r.section("status")).unwrap();
    assert!(status_matches(&r.section("status")), "{}", r.section("status"));
    for n in st.as_array().unwrap() {
        let t = &n["tunnel"];
        assert!(t["datapath"].as_str().unwrap().starts_with("ebpf"), "{t}");
        assert!(t["tun_to_udp"]["packets"].as_u64().unwrap() > 0, "{t}");
        assert!(t["udp_to_tun"]["packets"].as_u64().unwrap() > 0, "{t}");
        let drops = t["drops"].as_object().unwrap();
        assert!(drops.values().all(|v| v == 0), "no drops in a clean run: {t}");
    }
    let tc = r.section("tc");
    assert!(tc.contains("cnet_decap") && tc.contains("cnet_encap") && tc.contains("jited"), "{tc}");
    assert_nothing_left(&r);
}

/// Python that reads a pcap of UDP port 9000 frames and prints one line per datagram: the
/// outer ports, the UDP length, and the inner packet (IPv4 header with its ID and checksum
/// zeroed, then the ICMP echo with its id, sequence, checksum and timestamp zeroed: its
/// first bytes and a digest of all), so that two
/// datapaths' captures of the same pings compare equal exactly when they carry the same
/// inner bytes the same way.
const WIRE_PY: &str = r#"cat > $T/wire.py <<'PY'
import hashlib, struct, sys
data = open(sys.argv[1], 'rb').read()
off = 24
while off + 16 <= len(data):
    incl = struct.unpack('<I', data[off+8:off+12])[0]
    f = data[off+16:off+16+incl]; off += 16 + incl
    if len(f) < 14 + 20 or f[12:14] != b'\x08\x00': continue
    ihl = (f[14] & 15) * 4; ip = f[14:]
    if ip[9] != 17: continue
    udp = ip[ihl:]
    sport, dport, ulen = struct.unpack('!HHH', udp[:6])
    inner = bytearray(udp[8:ulen])
    if len(inner) < 28 or inner[9] != 1: continue
    inner[4:6] = b'\0\0'; inner[10:12] = b'\0\0'
    i = (inner[0] & 15) * 4
    inner[i+2:i+8] = b'\0' * 6
    inner[i+8:i+24] = b'\0' * 16  # ping's timestamp
    print(sport, dport, ulen, len(inner), inner[:40].hex(), hashlib.sha256(inner).hexdigest()[:16])
PY
"#;

/// A capture on node 2's enp0s8 shows the same datagrams with `--backend ebpf` as with the
/// userspace tunnel: UDP 9000 to 9000, one inner IPv4 packet filling each, byte for byte
/// the same (but the fields every ping changes).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn the_wire_is_the_userspace_tunnels() {
    require_root();
    let r = sandbox(&format!(
        r#"{WIRE_PY}
for b in udp ebpf; do
  cnet up overlay --backend $b -q
  cnet exec node2 -- tcpdump --immediate-mode -Z root -U -ni enp0s8 -w $T/$b.pcap 'udp port 9000' 2> $T/$b.err &
  wait_for 200 grep -qs listening $T/$b.err
  for size in 56 1000 1444; do cnet exec node1/con1 -- ping -c1 -W2 -s $size -p c0ffee 172.16.1.2 > /dev/null; done
  sleep 0.3; pkill -INT tcpdump; wait
  mark $b
  python3 $T/wire.py $T/$b.pcap
  cnet down -q
done
{LEFTOVERS}"#
    ));
    r.ok();
    let (udp, ebpf) = (r.section("udp"), r.section("ebpf"));
    assert_eq!(udp.lines().count(), 6, "3 requests and 3 replies:\n{udp}");
    assert_eq!(udp, ebpf, "the same datagrams on the wire");
    for l in ebpf.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!((f[0], f[1]), ("9000", "9000"), "{l}");
        // The UDP length is the inner packet's plus the 8-byte UDP header: nothing else inside.
        assert_eq!(f[2].parse::<usize>().unwrap(), f[3].parse::<usize>().unwrap() + 8, "{l}");
    }
    assert!(ebpf.contains(" 1472 "), "a full-size inner packet (tun0's MTU): {ebpf}");
    assert_nothing_left(&r);
}

/// Two sandbox VMs joined by a veth, VM i running `cnet up overlay ARGSi --host --node i`:
/// node 1 on ebpf, node 2 on the userspace tunnel (and the other way round). Each checks
/// the other's containers, pings, and sends a TCP stream to the other's con1.
fn mixed_vms(args1: &str, args2: &str) -> Run {
    let vm = r#"
vm() {  # vm INDEX OTHER ARGS
  ip netns exec vm$1 unshare --mount --uts --propagation private sh -euc '
    trap "touch $T/ready.'$1' $T/tested.'$1'" EXIT
    mount -t tmpfs vm /run/netns; mount -t tmpfs vm /run/cnet; hostname vm'$1'
    cnet up overlay '"$3"' --host --node '$1' -q > $T/up.'$1' 2>&1 || echo failed >> $T/up.'$1'
    ip netns exec con1 python3 $T/sink.py > $T/sink.'$1' 2>&1 &
    touch $T/ready.'$1'
    i=0; while [ ! -e $T/ready.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 1; sleep 0.05; done
    cnet test --host --json > $T/test.'$1' 2>$T/test.'$1'.err || true
    ip netns exec con1 ping -c1 -W2 172.16.$(( '$2' - 1 )).2 > $T/ping.'$1' 2>&1 || true
    ip netns exec con1 python3 -c "
import hashlib, random, socket
random.seed('$1'); data = random.randbytes(20 << 20)
c = socket.create_connection((\"172.16.$(( '$2' - 1 )).2\", 7000), timeout=30); c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest())" > $T/sent.'$1' 2>&1 || true
    touch $T/tested.'$1'
    i=0; while [ ! -e $T/tested.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 1; sleep 0.05; done
    sleep 1
    cnet status --host --json > $T/status.'$1' 2>&1 || true
    cnet down > $T/down.'$1' 2>&1
    { ip -o link show | awk -F": " "{print \$2}" | cut -d@ -f1 | grep -vxE "lo|enp0s8" || true; ls /run/netns; ls -A /run/cnet;
      tc qdisc show dev enp0s8 | grep -v "qdisc noqueue" || true; tc filter show dev enp0s8 ingress; } > $T/left.'$1'
  '
}
ip netns add vm1; ip netns add vm2
ip link add enp0s8 netns vm1 type veth peer name enp0s8 netns vm2
ip -n vm1 addr add 10.0.0.10/24 dev enp0s8; ip -n vm2 addr add 10.0.0.20/24 dev enp0s8
ip -n vm1 link set enp0s8 up; ip -n vm2 link set enp0s8 up
ip -n vm1 link set lo up; ip -n vm2 link set lo up
# The cable behaves as a real machine's NIC does on the wire: checksums filled in and
# super-packets cut before they leave. A veth otherwise hands the kernel's offload state
# (a partial checksum, a 64 KB TCP or UDP GSO packet) to the other side as it is, which only
# a kernel receiver can take (see README, "ebpf backend": a userspace tunnel cannot).
for v in vm1 vm2; do ip netns exec $v ethtool -K enp0s8 tx off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off tx-udp-segmentation off > /dev/null 2>&1; done
vm 1 2 "$ARGS1" & vm 2 1 "$ARGS2" & wait
for i in 1 2; do mark up.$i; cat $T/up.$i; mark test.$i; cat $T/test.$i; mark ping.$i; cat $T/ping.$i; mark sent.$i; cat $T/sent.$i; mark sink.$i; cat $T/sink.$i; mark status.$i; cat $T/status.$i; mark down.$i; cat $T/down.$i; mark left.$i; cat $T/left.$i; done
mark end
"#;
    sandbox(&format!("export ARGS1='{args1}' ARGS2='{args2}'\n{SINK_PY}{vm}"))
}

fn assert_mixed(r: &Run) {
    r.ok();
    for (i, other) in [("1", "2"), ("2", "1")] {
        let t = r.section(&format!("test.{i}"));
        assert!(Checks::parse(&t).all_passed(24), "vm{i}:\n{t}\nup:\n{}", r.section(&format!("up.{i}")));
        assert_eq!(ping_ttls(&r.section(&format!("ping.{i}"))), vec![62], "vm{i}");
        // What vm i sent arrived whole at the other VM's con1.
        let sent = r.section(&format!("sent.{i}"));
        let got = r.section(&format!("sink.{other}"));
        assert!(sent.starts_with("20971520 "), "vm{i} sent: {sent}");
        assert_eq!(got.lines().last(), sent.lines().last(), "vm{i} -> vm{other}: {got}");
        assert!(r.section(&format!("down.{i}")).contains("removed"));
        assert!(r.section(&format!("left.{i}")).trim().is_empty(), "vm{i} left: {}", r.section(&format!("left.{i}")));
    }
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn ebpf_node_and_userspace_node_talk_both_ways() {
    require_root();
    assert_mixed(&mixed_vms("--backend ebpf", ""));
    assert_mixed(&mixed_vms("", "--backend ebpf"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn two_ebpf_vms() {
    require_root();
    assert_mixed(&mixed_vms("--backend ebpf", "--backend ebpf"));
}

/// Hostile datagrams to node 2's port 9000 while a ping runs across: from an address that
/// is no peer, from a peer's address but another port, with an inner source outside the
/// peer's subnet, truncated, not IPv4, with a bad header checksum. Each is dropped and
/// counted under its reason; the ping loses nothing.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn hostile_datagrams_are_dropped_and_counted() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay --backend ebpf -q
cnet exec node1 -- ip addr add 10.0.0.99/24 dev enp0s8
cat > $T/send.py <<'PY'
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
def ipv4(src, dst, payload=b'x' * 8, bad_csum=False):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    c = csum(h) ^ (1 if bad_csum else 0)
    return h[:10] + struct.pack('!H', c) + h[12:] + payload
def send(frm, data, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(frm)
    for _ in range(n): s.sendto(data, ('10.0.0.20', 9000))
    s.close()
good = ipv4('172.16.0.2', '172.16.1.2')
send(('10.0.0.99', 9000), good, 3)                                  # unknown_peer: no peer's address
send(('10.0.0.10', 9001), good, 4)                                  # unknown_peer: a peer's address, another port
send(('10.0.0.10', 9000), ipv4('172.16.7.7', '172.16.1.2'), 5)       # spoofed_source
send(('10.0.0.10', 9000), good[:12], 6)                             # truncated
send(('10.0.0.10', 9000), b'\x60' + good[1:], 7)                    # not_ipv4
send(('10.0.0.10', 9000), ipv4('172.16.0.2', '172.16.1.2', bad_csum=True), 8)  # malformed
PY
cnet exec node1/con1 -- ping -c 40 -i 0.05 -W 2 172.16.1.2 > $T/ping.out &
sleep 0.5
cnet exec node1 -- python3 $T/send.py
wait
mark ping
tail -2 $T/ping.out
mark status
cnet exec node2 -- cnet status --host --json
mark text
cnet exec node2 -- cnet status --host | grep -A3 'tunnel:'
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(r.section("ping").contains("40 packets transmitted, 40 received"), "{}", r.section("ping"));
    let st: serde_json::Value = serde_json::from_str(&r.section("status")).unwrap();
    let d = &st[0]["tunnel"]["drops"];
    for (reason, n) in [("unknown_peer", 7), ("spoofed_source", 5), ("truncated", 6), ("not_ipv4", 7), ("malformed", 8)] {
        assert_eq!(d[reason].as_u64(), Some(n), "{reason}: {d}");
    }
    let text = r.section("text");
    assert!(text.contains("unknown_peer 7") && text.contains("spoofed_source 5"), "{text}");
    assert_nothing_left(&r);
}

/// 300 MB from con1 on node 1 to con1 on node 2 through the eBPF datapath, SHA-256 on both
/// sides.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn bulk_300_mb_intact() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay --backend ebpf -q
{SINK_PY}{BULK_300MB}mark status
cnet exec node2 -- cnet status --host --json
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let sent = r.section("sent");
    assert!(sent.starts_with("314572800 "), "{sent}");
    assert_eq!(r.section("received"), sent);
    let st: serde_json::Value = serde_json::from_str(&r.section("status")).unwrap();
    let t = &st[0]["tunnel"];
    assert!(t["udp_to_tun"]["bytes"].as_u64().unwrap() > 314_572_800, "{t}");
    assert!(t["drops"].as_object().unwrap().values().all(|v| v == 0), "{t}");
    assert_nothing_left(&r);
}

/// On a host (the sandbox as the talk's VM), up/down cycles leave no filter, no clsact
/// qdisc on enp0s8, and no program or map of cnet's in the kernel (by the ids `up` recorded:
/// other tests' programs share the kernel).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn down_leaves_no_program_filter_qdisc_or_map() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
for i in 1 2 3; do
  cnet up overlay --backend ebpf --host -q
  ids=$(python3 -c 'import json; r = json.load(open("/run/cnet/ebpf.json")); print(" ".join(map(str, r["programs"])), r["stats_map"])')
  set -- $ids
  mark up.$i
  tc filter show dev enp0s8 ingress | grep -c cnet_decap
  bpftool prog show id $1 | grep -c cnet_encap
  bpftool map show id $3 | grep -c cnet_stats
  cnet down -q
  # The kernel frees a program once its last holder goes (after an RCU grace period).
  gone() {{ ! bpftool prog show id $1 > /dev/null 2>&1 && ! bpftool prog show id $2 > /dev/null 2>&1 && ! bpftool map show id $3 > /dev/null 2>&1; }}
  wait_for 100 gone $1 $2 $3
  mark down.$i
  tc qdisc show dev enp0s8 | grep clsact || true
  tc filter show dev enp0s8 ingress
  ls /run/cnet
done
{}"#,
        vm_leftovers()
    ));
    r.ok();
    for i in 1..=3 {
        assert_eq!(r.section(&format!("up.{i}")).split_whitespace().collect::<Vec<_>>(), ["1", "1", "1"], "cycle {i}");
        assert!(r.section(&format!("down.{i}")).trim().is_empty(), "cycle {i}: {}", r.section(&format!("down.{i}")));
    }
    assert_nothing_left(&r);
}

/// A clsact qdisc that was on the underlay before `up` (someone else's) stays after `down`;
/// only cnet's filter goes.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn a_users_clsact_qdisc_is_left_alone() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
tc qdisc add dev enp0s8 clsact
cnet up overlay --backend ebpf --host -q
cnet down -q
mark after
tc qdisc show dev enp0s8 | grep -c clsact
tc filter show dev enp0s8 ingress
tc qdisc del dev enp0s8 clsact
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert_eq!(r.section("after").trim(), "1");
    assert_nothing_left(&r);
}

/// A failure at any of the eBPF steps rolls back what was built, the loaded object and the
/// attached filters included; EPERM there (a machine that does not let cnet load BPF) is
/// the machine's fault: one line, exit 2.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn failed_ebpf_steps_roll_back() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
n=$(cnet explain overlay --backend ebpf --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["plans"][0]["steps"]))')
steps=$(cnet explain overlay --backend ebpf --format json | python3 -c '
import json, sys
for i, s in enumerate(json.load(sys.stdin)["plans"][0]["steps"]):
    if s["op"] in ("add-clsact", "load-ebpf", "attach-bpf"): print(i + 1)')
for at in $steps; do
  c=0; CNET_FAIL_AT_STEP=$at cnet up overlay --backend ebpf --host -q 2>/dev/null || c=$?
  echo "step $at exit $c"
  tc qdisc show dev enp0s8 | grep clsact || true
  tc filter show dev enp0s8 ingress
  ls /run/cnet
done
mark eperm
c=0; CNET_FAIL_AT_STEP=$(echo $steps | cut -d' ' -f3):1 cnet up overlay --backend ebpf --host -q 2> $T/err || c=$?
cat $T/err; echo "exit=$c"
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let out = r.stdout.clone();
    let lines: Vec<&str> = out.lines().take_while(|l| !l.starts_with("@@ eperm")).collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("step ")).count(), 5, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("step ") && l.ends_with("exit 1")), "nothing left between failures:\n{out}");
    let eperm = r.section("eperm");
    assert_eq!(eperm.lines().count(), 2, "one line, then the exit code: {eperm}");
    assert!(eperm.trim_end().ends_with("exit=2"), "{eperm}");
    assert_nothing_left(&r);
}

/// The script `cnet explain overlay --backend ebpf --format sh` prints builds the same on
/// two sandbox VMs (bpftool and tc, the object from `cnet bpf-object`, pins on a BPF
/// filesystem of the VM's own), `cnet test --host` passes, and its `sh-down` leaves nothing:
/// no filter, no qdisc, no pin.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn explain_sh_builds_the_ebpf_backend_on_two_vms() {
    require_root();
    let r = sandbox(
        r#"
vm() {  # vm INDEX OTHER
  ip netns exec vm$1 unshare --mount --uts --propagation private sh -euc '
    trap "touch $T/ready.'$1' $T/tested.'$1'" EXIT
    mount -t tmpfs vm /run/netns; mount -t tmpfs vm /run/cnet; mount -t bpf bpf /sys/fs/bpf; hostname vm'$1'
    mkdir $T/vm'$1'; cd $T/vm'$1'
    cnet explain overlay --backend ebpf --format sh > build.sh
    sh build.sh '$1' > $T/up.'$1' 2>&1 || echo "build failed" >> $T/up.'$1'
    touch $T/ready.'$1'
    i=0; while [ ! -e $T/ready.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 1; sleep 0.05; done
    cnet test --host overlay --backend ebpf --node '$1' --json > $T/test.'$1' 2>&1 || true
    touch $T/tested.'$1'
    i=0; while [ ! -e $T/tested.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 1; sleep 0.05; done
    cnet explain overlay --backend ebpf --format sh-down | sh -s '$1' > $T/down.'$1' 2>&1 && echo "removed by the script" >> $T/down.'$1'
    { ip -o link show | awk -F": " "{print \$2}" | cut -d@ -f1 | grep -vxE "lo|enp0s8" || true; ls /run/netns;
      tc qdisc show dev enp0s8 | grep -v "qdisc noqueue" || true; tc filter show dev enp0s8 ingress; ls /sys/fs/bpf | grep -v "\.debug$" || true; } > $T/left.'$1'
  '
}
ip netns add vm1; ip netns add vm2
ip link add enp0s8 netns vm1 type veth peer name enp0s8 netns vm2
ip -n vm1 addr add 10.0.0.10/24 dev enp0s8; ip -n vm2 addr add 10.0.0.20/24 dev enp0s8
ip -n vm1 link set enp0s8 up; ip -n vm2 link set enp0s8 up
ip -n vm1 link set lo up; ip -n vm2 link set lo up
vm 1 2 & vm 2 1 & wait
for i in 1 2; do mark up.$i; cat $T/up.$i; mark test.$i; cat $T/test.$i; mark down.$i; cat $T/down.$i; mark left.$i; cat $T/left.$i; done
mark end
"#,
    );
    r.ok();
    for i in ["1", "2"] {
        let up = r.section(&format!("up.{i}"));
        assert!(!up.contains("build failed"), "vm{i}: {up}");
        let t = r.section(&format!("test.{i}"));
        assert!(Checks::parse(&t).all_passed(24), "vm{i}:\n{t}\nup:\n{up}");
        assert!(r.section(&format!("down.{i}")).contains("removed by the script"), "{}", r.section(&format!("down.{i}")));
        assert!(r.section(&format!("left.{i}")).trim().is_empty(), "vm{i} left: {}", r.section(&format!("left.{i}")));
    }
}

/// The stages built on stage 4 (5 and 6: their NAT through tun0 and the node's conntrack),
/// a routed fabric (the next hop is the router: bpf_fib_lookup finds it) and three nodes:
/// every check passes, nothing is left.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stages_on_top_routed_fabric_and_three_nodes() {
    require_root();
    let r = sandbox(&format!(
        r#"
for args in "services" "overlay --fabric routed" "overlay --nodes 3"; do
  cnet up $args --backend ebpf -q
  mark "$args"
  cnet test --json
  cnet down -q
done
{LEFTOVERS}"#
    ));
    r.ok();
    for (args, total) in [("services", 74), ("overlay --fabric routed", 48), ("overlay --nodes 3", 108)] {
        let c = Checks::parse(&r.section(args));
        assert!(c.all_passed(total), "{args}: {:?}", c.failed);
    }
    assert_nothing_left(&r);
}
