//! Nothing outlives its stage: kill -9 at random moments, a record deleted or damaged while
//! a stage is up, pod subnets that cannot work. The fast part of `scripts/torture`.

mod common;
use common::*;

const VM: &str = r#"
hostname vm
ip link add enp0s8 type veth peer name lan0
ip addr add 10.0.0.10/24 dev enp0s8
ip link set enp0s8 up; ip link set lan0 up
"#;

/// `cnet_procs`: cnet's processes, the tunnels (started as /proc/self/exe) included.
const CNET_PROCS: &str = r#"cnet_procs() { for p in /proc/[0-9]*; do [ "$(readlink $p/exe 2>/dev/null)" = "$CNET" ] && echo -n "${p#/proc/} "; done; true; }"#;

/// Leftovers on a VM: its own enp0s8/lan0 pair is expected.
fn vm_leftovers() -> String {
    LEFTOVERS.replace("grep -vxE 'lo'", "grep -vxE 'lo|enp0s8|lan0'")
}

/// `kill -9` of `up overlay --host` at 20 moments across its run (the tunnel's start
/// included), each followed by `down`: no tunnel, link, namespace or mount may be left, and
/// the next `up` must work. (Before the tunnel waited for its pid to be recorded, about one
/// kill in 10-25 left it running.)
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn twenty_kills_of_host_up_overlay_leave_no_orphan() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
# How long up takes here, to spread the kills across it (at least 20 ms).
s=$(date +%s%N); cnet up overlay --host -q; e=$(date +%s%N); cnet down -q
d=$(( (e - s) / 1000000 + 5 )); [ $d -ge 20 ] || d=20
mark kills
for i in $(seq 20); do
  cnet up overlay --host -q 2>/dev/null & p=$!
  sleep $(printf '0.%03d' $(( (i * d / 20) % 1000 )))
  kill -9 $p 2>/dev/null || true; wait $p 2>/dev/null || true
  cnet down -q
  if pgrep -f '[t]unnel --dev' > /dev/null; then echo "orphan tunnel after kill $i at $(( i * d / 20 )) ms" && pkill -9 -f '[t]unnel --dev'; fi
  left=$(ip -br link | awk '{{print $1}}' | grep -vxE 'lo|enp0s8@lan0|lan0@enp0s8' | tr '\n' ' '; ls -A /run/netns | tr '\n' ' '; ls -A /run/cnet | tr '\n' ' ')
  [ -z "$(echo $left)" ] || echo "left after kill $i: $left"
done
mark again
cnet up overlay --host -q && echo "up works"
cnet down -q
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert_eq!(r.section("kills").trim(), "", "{}", r.stderr);
    assert!(r.section("again").contains("up works"));
    assert_nothing_left(&r);
}

/// The same abuse for the lab: the lab's record is a file, its nodes' namespaces the marks.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn kills_of_lab_up_overlay_leave_nothing() {
    require_root();
    let r = sandbox(&format!(
        r#"{CNET_PROCS}
mark kills
for i in $(seq 10); do
  cnet up overlay -q 2>/dev/null & p=$!
  sleep $(printf '0.%03d' $(( i * 8 )))
  kill -9 $p 2>/dev/null || true; wait $p 2>/dev/null || true
  cnet down -q
  left=$(ip -br link | awk '{{print $1}}' | grep -vx lo | tr '\n' ' '; ls -A /run/netns | tr '\n' ' '; ls -A /run/cnet | tr '\n' ' '; cnet_procs)
  [ -z "$(echo $left)" ] || echo "left after kill $i: $left"
done
{}"#,
        LEFTOVERS
    ));
    r.ok();
    assert_eq!(r.section("kills").trim(), "", "{}", r.stderr);
    assert_nothing_left(&r);
}

/// With the record deleted, truncated, garbled or replaced while a stage is up, a plain
/// `down` removes all of it (tunnel, links, namespaces, routes; sysctls put back from their
/// own log), says so in one line, and the next `up` works. Host mode.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn host_down_without_an_intact_record() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
for damage in deleted truncated garbled '{{}}'; do
  for stage in multi-node overlay; do
    cnet up $stage --host -q
    case "$damage" in
      deleted) rm /run/cnet/node.jsonl ;;
      truncated) truncate -s 300 /run/cnet/node.jsonl ;;
      garbled) head -c 300 /dev/urandom > /run/cnet/node.jsonl ;;
      *) echo "$damage" > /run/cnet/node.jsonl ;;
    esac
    mark "status $damage $stage"
    cnet status 2>&1 && echo "status said all is well"
    mark "down $damage $stage"
    cnet down 2>&1
    mark "after $damage $stage"
    ip -br link | awk '{{print $1}}' | grep -vxE 'lo|enp0s8@lan0|lan0@enp0s8' || true
    ls -A /run/netns; ls -A /run/cnet
    pgrep -af '[t]unnel --dev' || true
    ip route | grep 172.16 || true
    sysctl -n net.ipv4.ip_forward | grep -vx 0 || true
    cnet up $stage --host -q || echo "next up failed"
    cnet down -q
  done
done
# An up killed between writing its record's header and renaming it into place leaves an
# empty node.tmp (as scripts/torture found): down removes it, for the lab's record too.
mark half-written
touch /run/cnet/node.tmp /run/cnet/lab.tmp
cnet down
ls -A /run/cnet
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert_eq!(r.section("half-written").trim(), "nothing is up: nothing to remove", "{}", r.stderr);
    for damage in ["deleted", "truncated", "garbled", "{}"] {
        for stage in ["multi-node", "overlay"] {
            let status = r.section(&format!("status {damage} {stage}"));
            assert!(status.contains("run `cnet down`") && !status.contains("all is well"), "{damage} {stage}: {status}");
            let down = r.section(&format!("down {damage} {stage}"));
            assert!(
                down.contains("removed what carries cnet's marks") && down.contains("1 sysctl(s) put back"),
                "{damage} {stage}: {down}"
            );
            assert_eq!(down.lines().count(), 1, "{down}");
            let after = r.section(&format!("after {damage} {stage}"));
            assert_eq!(after.trim(), "", "{damage} {stage} left:\n{after}\n{}", r.stderr);
        }
    }
    assert_nothing_left(&r);
}

/// The lab's record (and a node's own) lost or damaged: `down` finds the lab by the
/// namespaces under /run/cnet/lab and removes every node, tunnels included.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn lab_down_without_an_intact_record() {
    require_root();
    let r = sandbox(&format!(
        r#"{CNET_PROCS}
for damage in deleted truncated garbled '{{}}' node-records; do
  cnet up overlay -q
  case "$damage" in
    deleted) rm /run/cnet/lab.json ;;
    truncated) truncate -s 30 /run/cnet/lab.json ;;
    garbled) head -c 300 /dev/urandom > /run/cnet/lab.json ;;
    node-records) cnet exec node1 -- rm /run/cnet/node.jsonl; cnet exec node2 -- sh -c 'echo x > /run/cnet/node.jsonl' ;;
    *) echo "$damage" > /run/cnet/lab.json ;;
  esac
  mark "up $damage"
  cnet up overlay -q 2>&1 && echo "a second up succeeded"
  mark "down $damage"
  cnet down 2>&1
  mark "after $damage"
  ls -A /run/cnet
  cnet_procs
  cnet up overlay -q || echo "next up failed"
  cnet down -q
done
{}"#,
        LEFTOVERS
    ));
    r.ok();
    for damage in ["deleted", "truncated", "garbled", "{}", "node-records"] {
        let up = r.section(&format!("up {damage}"));
        assert!(up.contains("run `cnet down`") && !up.contains("succeeded"), "{damage}: {up}");
        let down = r.section(&format!("down {damage}"));
        assert!(down.contains("removed"), "{damage}: {down}");
        let after = r.section(&format!("after {damage}"));
        assert_eq!(after.trim(), "", "{damage} left:\n{after}\n{}", r.stderr);
    }
    assert_nothing_left(&r);
}

/// Pod subnets that cannot work are refused before anything is built: exit 1, one line.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn unworkable_pod_cidrs_build_nothing() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
ip addr add 192.168.5.1/24 dev lan0
for c in 10.0.0.0/24 10.0.0.0/16 10.0.0.128/25 127.0.0.0/24 224.0.0.0/24 0.0.0.0/0 169.254.0.0/24 192.168.5.0/25; do
  for mode in --host ""; do
    [ "$c" = 192.168.5.0/25 ] && [ -z "$mode" ] && continue  # only this VM has it
    mark "$c $mode"
    rc=0; cnet up single-node $mode -q --pod-cidr $c 2> $T/err || rc=$?; echo "exit $rc"; cat $T/err
  done
done
{}"#,
        vm_leftovers()
    ));
    r.ok();
    for c in [
        "10.0.0.0/24",
        "10.0.0.0/16",
        "10.0.0.128/25",
        "127.0.0.0/24",
        "224.0.0.0/24",
        "0.0.0.0/0",
        "169.254.0.0/24",
        "192.168.5.0/25",
    ] {
        for mode in ["--host", ""] {
            if c == "192.168.5.0/25" && mode.is_empty() {
                continue;
            }
            let s = r.section(format!("{c} {mode}").trim_end());
            assert!(s.starts_with("exit 1\n"), "{c} {mode}: {s}");
            assert_eq!(s.lines().count(), 2, "one line: {s}");
            assert!(s.contains("pod subnet"), "{s}");
        }
    }
    assert_nothing_left(&r);
}
