//! `cnet trace` as text: one block per hop, for an 80-column terminal.

use super::{Hop, NextHop, Outcome, Trace};

/// Fold `text` into lines of at most `width` columns, the first after `first` columns,
/// the rest indented by `indent` (breaking at spaces; a longer word stands alone).
fn wrap(text: &str, first: usize, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut col = first;
    let mut line_start = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let w = word.chars().count();
        if !line_start && col + 1 + w > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += w;
        line_start = false;
    }
    out
}

const LABEL: usize = 14;
const WIDTH: usize = 80;

fn line(out: &mut String, label: &str, text: &str) {
    let lead = format!("    {label:<LABEL$}");
    let n = lead.chars().count();
    out.push_str(&lead);
    out.push_str(&wrap(text, n, n, WIDTH));
    out.push('\n');
}

fn next_hop_text(nh: &NextHop) -> String {
    match (&nh.mac, nh.state.as_str()) {
        (_, "noarp") => format!("{}: none to resolve ({} carries bare IP packets, no ARP)", nh.addr, nh.dev),
        (Some(mac), "switched") => format!("{} is {mac}", nh.addr),
        (None, "switched") => format!("{}: MAC not known yet (would ARP)", nh.addr),
        (Some(mac), state) => format!("{} is {mac} (neighbour, {state})", nh.addr),
        (None, "none") => format!("{}: not in the neighbour table: would ARP on {}", nh.addr, nh.dev),
        (None, state) => format!("{}: no usable entry ({state}): would ARP on {}", nh.addr, nh.dev),
    }
}

/// The trace as text, one block per hop, for an 80-column terminal.
pub fn render(t: &Trace) -> String {
    let mut s = format!("trace {} → {} ({}, stage {}, {} bytes)\n\n", t.from, t.to, t.mode, t.stage, t.size);
    for (i, h) in t.hops.iter().enumerate() {
        s.push_str(&format!("{:>2}  {}\n", i + 1, h.at));
        if let Some(d) = &h.decap {
            line(&mut s, "overlay", d);
        }
        match (&h.arrived_on, h.ttl_in) {
            (Some(dev), Some(ttl)) => {
                let port = h.port.as_ref().map(|p| format!(" (port {p})")).unwrap_or_default();
                line(&mut s, "arrives", &format!("on {dev}{port}, ttl {ttl}"));
            }
            (None, Some(ttl)) => line(&mut s, "arrives", &format!("ttl {ttl}")),
            _ => {
                if let Some(src) = h.src {
                    let ttl = h.out.as_ref().map(|o| format!(", ttl {}", o.ttl)).unwrap_or_default();
                    line(&mut s, "sends", &format!("from {src}{ttl}"));
                }
            }
        }
        // A failed check is said once, as the reason for the drop; one the kernel let
        // through all the same is shown as it is.
        let reason = match &h.outcome {
            Outcome::Dropped { reason } => Some(reason.as_str()),
            _ => None,
        };
        for c in h.checks.iter().filter(|c| Some(c.detail.as_str()) != reason) {
            line(&mut s, &c.name, &c.detail);
        }
        if let Some(r) = &h.route {
            line(&mut s, "route", r);
        }
        if let Some(m) = &h.matched {
            line(&mut s, "matched", m);
        }
        if let Some(nh) = &h.next_hop {
            line(&mut s, "next hop", &next_hop_text(nh));
        }
        for n in &h.notes {
            line(&mut s, "note", n);
        }
        match &h.outcome {
            Outcome::Delivered => {
                let ttl = h.ttl_in.or(h.out.as_ref().map(|o| o.ttl)).unwrap_or(0);
                line(&mut s, "delivered", &format!("local address, arrives with ttl {ttl}"));
            }
            Outcome::Switched => {
                if let Some(o) = &h.out {
                    let to = o.port.as_deref().map_or("the port that answers the ARP".to_string(), |p| format!("port {p}"));
                    line(
                        &mut s,
                        "switched",
                        &format!(
                            "by {} to {to}: not routed, ttl stays {}",
                            h.arrived_on.as_deref().unwrap_or("the bridge"),
                            o.ttl
                        ),
                    );
                }
            }
            Outcome::Dropped { reason } => {
                if let Some(o) = &h.out {
                    line(&mut s, "leaves by", &format!("{}, ttl {}", o.dev, o.ttl));
                }
                encap_lines(&mut s, h);
                line(&mut s, "DROPPED", reason);
            }
            Outcome::Sent | Outcome::Forwarded => {
                if let Some(o) = &h.out {
                    let port = o.port.as_ref().map(|p| format!(" (bridge port {p})")).unwrap_or_default();
                    line(&mut s, "leaves by", &format!("{}{port}, ttl {}", o.dev, o.ttl));
                }
                encap_lines(&mut s, h);
            }
        }
    }
    s.push('\n');
    s.push_str(&wrap(&t.summary(), 0, 2, WIDTH));
    s.push('\n');
    s
}

fn encap_lines(s: &mut String, h: &Hop) {
    let Some(e) = &h.encap else { return };
    let what = match e.kind.as_str() {
        "udp" => format!(
            "UDP {} → {} by the tunnel (pid {}), peer for {}; outer ttl {}, {} bytes",
            e.local,
            e.remote,
            e.pid.unwrap_or(0),
            e.subnet.clone().unwrap_or_default(),
            e.outer_ttl,
            e.outer_size
        ),
        "ebpf" => format!(
            "UDP {} → {} by cnet's eBPF program on tun0's egress, peer for {}; outer ttl {}, {} bytes",
            e.local,
            e.remote,
            e.subnet.clone().unwrap_or_default(),
            e.outer_ttl,
            e.outer_size
        ),
        _ => {
            let flood = match e.flooded.len() {
                0 => String::new(),
                1 => " (by its default forwarding entry)".to_string(),
                // Every remote gets a copy; only the node whose vxlan0 has the MAC takes it.
                _ => " (flooded to each: no entry names the MAC)".to_string(),
            };
            format!(
                "VXLAN VNI {}, UDP {} → {}{flood}; outer ttl {}, {} bytes",
                e.vni.map_or("?".into(), |v| v.to_string()),
                e.local,
                e.remote,
                e.outer_ttl,
                e.outer_size
            )
        }
    };
    line(s, "encapsulated", &what);
    if let Some(r) = &e.outer_route {
        let nh = e.outer_next_hop.as_ref().map(|n| format!("; next hop {}", next_hop_text(n))).unwrap_or_default();
        line(s, "outer route", &format!("{r}{nh}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::{Out, Verdict};

    fn hop_out(dev: &str) -> Hop {
        let mut h = Hop::new();
        h.out = Some(Out { dev: dev.into(), kind: Some("veth".into()), port: None, mtu: Some(1500), ttl: 64, size: 84 });
        h.next_hop = Some(NextHop { addr: "172.16.0.1".parse().unwrap(), dev: dev.into(), mac: None, state: "none".into() });
        h
    }

    #[test]
    fn text_fits_80_columns() {
        let long =
            "the tunnel's datagram of 1600 bytes does not fit enp0s8's MTU 1500 (the tunnel sets DF): it counts a send_error";
        let w = wrap(long, 18, 18, 80);
        assert!(w.lines().enumerate().all(|(i, l)| l.chars().count() + if i == 0 { 18 } else { 0 } <= 80), "{w}");
        assert!(w.lines().skip(1).all(|l| l.starts_with(&" ".repeat(18))), "{w}");
        assert_eq!(wrap("a b", 0, 2, 80), "a b");
        let mut t = Trace {
            from: "node1/con1".into(),
            to: "172.16.1.2".parse().unwrap(),
            mode: "lab".into(),
            stage: "multi-node".into(),
            size: 84,
            hops: vec![hop_out("veth11")],
            verdict: Verdict::Dropped { at: "node2".into(), reason: "net.ipv4.ip_forward is 0 (the node does not route)".into() },
        };
        t.hops[0].at = "node1/con1".into();
        t.hops[0].route =
            Some("172.16.1.2 via 172.16.0.1 dev veth11 src 172.16.0.2 and a long tail to force the wrap of this line".into());
        let text = render(&t);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert_eq!(t.drop_reason().unwrap(), "dropped at node2: net.ipv4.ip_forward is 0 (the node does not route)");
        assert_eq!(t.delivered_ttl(), None);
    }
}
