//! A thousand containers on one node pass `cnet test` (its own test binary: the kernel's ARP
//! table is one for the whole machine, so this must not share it with other tests at once).

mod common;
use common::*;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn a_thousand_containers_pass_cnet_test() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up single-node --containers 1000 --pod-cidr 172.16.0.0/20 -q
# 3 s per echo, not 1: the kernel tears down the previous tests' namespaces in the
# background (RTNL and RCU waits), which once delayed 4 of 2002 replies past 1 s in CI.
cnet test --timeout-ms 3000 > $T/test.out || true
mark test
tail -1 $T/test.out
cnet exec node1 -- ip netns list | wc -l
mark failed
grep FAIL $T/test.out | head -20 || true
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let t = r.section("test");
    assert!(t.starts_with("2002/2002 checks passed") && t.contains("\n1000\n"), "{t}\nfailed:\n{}", r.section("failed"));
    assert_nothing_left(&r);
}
