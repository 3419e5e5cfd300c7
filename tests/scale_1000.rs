//! A thousand containers on one node pass `cnet test` (its own test binary: the kernel's ARP
//! table is one for the whole machine, so this must not share it with other tests at once).

mod common;
use common::*;

#[test]
fn a_thousand_containers_pass_cnet_test() {
    if !privileged() {
        return;
    }
    let r = sandbox(&format!(r#"
cnet up single-node --containers 1000 --pod-cidr 172.16.0.0/20 -q
mark test
cnet test | tail -1
cnet exec node1 -- ip netns list | wc -l
cnet down -q
{LEFTOVERS}"#));
    r.ok();
    let t = r.section("test");
    assert!(t.starts_with("2002/2002 checks passed") && t.contains("\n1000\n"), "{t}");
    assert_nothing_left(&r);
}
