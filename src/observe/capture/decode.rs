//! Pure decoding of one captured frame into a [`PacketSummary`]: addresses, the protocol
//! stack (`eth:ip:udp`), a short detail for the top protocol, and the inner packet of a
//! tunnel. No I/O, no allocation beyond the summary, no panics on any input: every read is
//! bounds-checked and a frame that ends early is reported as a `problem`, not an error.
//!
//! See the module documentation of [`crate::observe::capture`] for the line format.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// How a frame starts, from the interface's hardware type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// An Ethernet header comes first (veth, bridge, vxlan, loopback).
    Ethernet,
    /// A bare IPv4 or IPv6 packet, no link header (a TUN device, `ARPHRD_NONE`).
    RawIp,
}

/// `ARPHRD_*` values (linux/if_arp.h) the capture understands.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_TUNNEL: u16 = 768; // ipip
const ARPHRD_SIT: u16 = 776;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_NONE: u16 = 0xFFFE; // tun, wireguard

impl LinkKind {
    /// The link kind for an interface's hardware type, `None` when not understood.
    pub fn from_arphrd(hatype: u16) -> Option<LinkKind> {
        match hatype {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(LinkKind::Ethernet),
            ARPHRD_NONE | ARPHRD_TUNNEL | ARPHRD_SIT | ARPHRD_RAWIP => Some(LinkKind::RawIp),
            _ => None,
        }
    }

    /// The libpcap link type: 1 (`LINKTYPE_ETHERNET`) or 101 (`LINKTYPE_RAW`).
    pub fn pcap_linktype(self) -> u32 {
        match self {
            LinkKind::Ethernet => super::pcap::LINKTYPE_ETHERNET,
            LinkKind::RawIp => super::pcap::LINKTYPE_RAW,
        }
    }
}

/// VXLAN's IANA port and the Linux kernel's historic default (also flannel's).
pub const VXLAN_PORTS: [u16; 2] = [4789, 8472];

/// How deep tunnels are followed (outer + 3 inner levels); deeper is shown as `data`.
const MAX_DEPTH: usize = 4;

/// Every protocol name the decoder puts in a stack, for `--only` to be checked against:
/// a name not here could never match, and would print nothing without saying why.
pub const PROTOCOLS: &[&str] = &[
    "eth",
    "vlan",
    "arp",
    "ip",
    "ipv6",
    "icmp",
    "icmpv6",
    "tcp",
    "udp",
    "vxlan",
    "igmp",
    "gre",
    "esp",
    "sctp",
    "data",
    "llc",
    "ethertype",
    "raw",
];

/// One piece of a fragmented IP packet: the header fields that say which piece it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The identification all pieces of one packet share.
    pub id: u32,
    /// Where this piece's payload starts in the original packet's payload, in bytes.
    pub offset: usize,
    /// More fragments follow (the MF flag): false on the last piece.
    pub more: bool,
}

impl fmt::Display for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frag id={} off={}{}", self.id, self.offset, if self.more { " MF" } else { "" })
    }
}

/// What one frame carries, ready to print (its `Display` is the line without the time and
/// direction columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketSummary {
    /// Source and destination MAC of an Ethernet frame, shown first with `-e`.
    pub link: Option<(String, String)>,
    /// Source address: IP for IP packets, ARP sender IP, otherwise the source MAC.
    pub src: Option<String>,
    /// Destination address, same rules as `src`.
    pub dst: Option<String>,
    /// Protocol stack, outermost first, tshark's names: `eth`, `vlan`, `arp`, `ip`,
    /// `ipv6`, `icmp`, `icmpv6`, `tcp`, `udp`, `vxlan`, `data`, ...
    pub protocols: Vec<&'static str>,
    /// Short detail of the top protocol: ports, ICMP type, ARP question, VNI.
    pub detail: Option<String>,
    /// Set when the IP packet is one piece of a fragmented one.
    pub fragment: Option<Fragment>,
    /// What was wrong with the frame (truncated, bad header), if anything.
    pub problem: Option<String>,
    /// The packet carried inside a tunnel (UDP tunnel port, VXLAN, IP-in-IP).
    pub inner: Option<Box<PacketSummary>>,
}

impl PacketSummary {
    /// The stack joined by `:`, as tshark's `frame.protocols`.
    pub fn stack(&self) -> String {
        self.protocols.join(":")
    }

    /// The innermost packet (this one when there is no tunnel).
    #[cfg(test)]
    pub fn innermost(&self) -> &PacketSummary {
        let mut s = self;
        while let Some(inner) = &s.inner {
            s = inner;
        }
        s
    }

    fn push(&mut self, proto: &'static str) {
        self.protocols.push(proto);
    }

    fn truncated(&mut self, what: &str, have: usize, need: usize) {
        self.problem(format!("truncated {what}: {have} of {need} bytes"));
    }

    /// Records a problem; several are joined with `; `, outermost first.
    fn problem(&mut self, p: String) {
        match &mut self.problem {
            Some(old) => {
                old.push_str("; ");
                old.push_str(&p);
            }
            None => self.problem = Some(p),
        }
    }

    fn set_addrs(&mut self, src: impl ToString, dst: impl ToString) {
        self.src = Some(src.to_string());
        self.dst = Some(dst.to_string());
    }
}

impl fmt::Display for PacketSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

/// A summary shown with the MAC addresses of each Ethernet header (outer and inner) first,
/// as `tcpdump -e`: see [`PacketSummary::with_link_addrs`].
pub struct WithLinkAddrs<'a>(&'a PacketSummary);

impl fmt::Display for WithLinkAddrs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f, true)
    }
}

impl PacketSummary {
    /// The same line with `src-mac → dst-mac  ` before the addresses of every Ethernet frame
    /// (a frame without one, from a TUN device, shows none).
    pub fn with_link_addrs(&self) -> WithLinkAddrs<'_> {
        WithLinkAddrs(self)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, link_addrs: bool) -> fmt::Result {
        if link_addrs && let Some((src, dst)) = &self.link {
            write!(f, "{src} → {dst}  ")?;
        }
        write!(f, "{} → {}  {}", self.src.as_deref().unwrap_or("?"), self.dst.as_deref().unwrap_or("?"), self.stack())?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(frag) = &self.fragment {
            write!(f, " {frag}")?;
        }
        if let Some(p) = &self.problem {
            write!(f, " [{p}]")?;
        }
        if let Some(inner) = &self.inner {
            write!(f, "  |  inner ")?;
            inner.write(f, link_addrs)?;
        }
        Ok(())
    }
}

/// Decodes one frame. Pure; never panics.
pub fn describe(frame: &[u8], link: LinkKind, tunnel_ports: &[u16]) -> PacketSummary {
    let mut s = PacketSummary::default();
    let cx = Cx { tunnel_ports, depth: 0, partial: false };
    match link {
        LinkKind::Ethernet => cx.ethernet(frame, &mut s),
        LinkKind::RawIp => cx.raw_ip(frame, &mut s),
    }
    s
}

/// Bounds-checked big-endian reads.
fn u8_at(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}
fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i.checked_add(4)?)?.try_into().ok()?))
}
fn ipv4_at(b: &[u8], i: usize) -> Option<Ipv4Addr> {
    u32_at(b, i).map(Ipv4Addr::from)
}
fn ipv6_at(b: &[u8], i: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(i..i.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}
fn mac_at(b: &[u8], i: usize) -> Option<String> {
    let m = b.get(i..i.checked_add(6)?)?;
    Some(format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]))
}

/// Decoding context: the tunnel ports, how deep inside tunnels we are, and whether the
/// bytes are only the first piece of a fragmented packet.
#[derive(Clone, Copy)]
struct Cx<'a> {
    tunnel_ports: &'a [u16],
    depth: usize,
    /// Inside the first fragment of a packet: lengths in headers (UDP, an inner IP packet)
    /// run past the bytes at hand by design, which is no truncation to report.
    partial: bool,
}

impl Cx<'_> {
    fn deeper(self) -> Self {
        Cx { depth: self.depth + 1, ..self }
    }

    /// Decodes `payload` as a new, inner packet.
    fn inner(self, payload: &[u8], link: LinkKind) -> Box<PacketSummary> {
        let mut s = PacketSummary::default();
        match link {
            LinkKind::Ethernet => self.deeper().ethernet(payload, &mut s),
            LinkKind::RawIp => self.deeper().raw_ip(payload, &mut s),
        }
        Box::new(s)
    }

    fn ethernet(self, b: &[u8], s: &mut PacketSummary) {
        s.push("eth");
        if b.len() < 14 {
            return s.truncated("ethernet header", b.len(), 14);
        }
        if let (Some(src), Some(dst)) = (mac_at(b, 6), mac_at(b, 0)) {
            s.link = Some((src.clone(), dst.clone()));
            s.set_addrs(src, dst);
        }
        let mut ethertype = u16_at(b, 12).unwrap_or(0);
        let mut off = 14;
        // 802.1Q / 802.1ad tags, at most two.
        for _ in 0..2 {
            if ethertype != 0x8100 && ethertype != 0x88a8 {
                break;
            }
            s.push("vlan");
            match u16_at(b, off + 2) {
                Some(t) => ethertype = t,
                None => return s.truncated("vlan tag", b.len() - off, 4),
            }
            off += 4;
        }
        let payload = &b[off..];
        match ethertype {
            0x0800 => self.ipv4(payload, s),
            0x86dd => self.ipv6(payload, s),
            0x0806 => self.arp(payload, s),
            t if t < 0x0600 => {
                s.push("llc");
                s.detail = Some(format!("802.3 length {t}"));
            }
            t => {
                s.push("ethertype");
                s.detail = Some(format!("ethertype 0x{t:04x}, {} bytes", payload.len()));
            }
        }
    }

    fn raw_ip(self, b: &[u8], s: &mut PacketSummary) {
        match b.first().map(|v| v >> 4) {
            Some(4) => self.ipv4(b, s),
            Some(6) => self.ipv6(b, s),
            Some(v) => {
                s.push("raw");
                s.problem(format!("not an IP packet (version {v})"));
            }
            None => {
                s.push("raw");
                s.problem("empty packet".into());
            }
        }
    }

    fn ipv4(self, b: &[u8], s: &mut PacketSummary) {
        s.push("ip");
        if b.len() < 20 {
            return s.truncated("ipv4 header", b.len(), 20);
        }
        let version = b[0] >> 4;
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if version != 4 || ihl < 20 {
            return s.problem(format!("bad ipv4 header (version {version}, ihl {ihl})"));
        }
        if let (Some(src), Some(dst)) = (ipv4_at(b, 12), ipv4_at(b, 16)) {
            s.set_addrs(src, dst);
        }
        if b.len() < ihl {
            return s.truncated("ipv4 header", b.len(), ihl);
        }
        let total = usize::from(u16_at(b, 2).unwrap_or(0));
        let end = if total < ihl {
            // 0 is legal with TSO/GSO super-packets; anything else is bogus. Use what we have.
            if total != 0 {
                s.problem(format!("bad ipv4 total length {total}"));
            }
            b.len()
        } else if total > b.len() {
            if !self.partial {
                s.truncated("ipv4 packet", b.len(), total);
            }
            b.len()
        } else {
            total
        };
        let ttl = b[8];
        let proto = b[9];
        let frag = u16_at(b, 6).unwrap_or(0);
        let offset = usize::from(frag & 0x1fff) * 8;
        let more = frag & 0x2000 != 0;
        let payload = &b[ihl..end];
        if more || offset != 0 {
            let id = u32::from(u16_at(b, 4).unwrap_or(0));
            s.fragment = Some(Fragment { id, offset, more });
        }
        if offset != 0 {
            return continued(proto, payload, s);
        }
        // The first piece holds the transport header, but not all that it counts.
        Cx { partial: self.partial || more, ..self }.l4(proto, payload, ttl, s);
    }

    fn ipv6(self, b: &[u8], s: &mut PacketSummary) {
        s.push("ipv6");
        if b.len() < 40 {
            return s.truncated("ipv6 header", b.len(), 40);
        }
        if b[0] >> 4 != 6 {
            return s.problem(format!("bad ipv6 header (version {})", b[0] >> 4));
        }
        if let (Some(src), Some(dst)) = (ipv6_at(b, 8), ipv6_at(b, 24)) {
            s.set_addrs(src, dst);
        }
        let plen = usize::from(u16_at(b, 4).unwrap_or(0));
        let end = if plen == 0 {
            b.len() // jumbogram or GSO: use what we have
        } else if 40 + plen > b.len() {
            if !self.partial {
                s.truncated("ipv6 packet", b.len(), 40 + plen);
            }
            b.len()
        } else {
            40 + plen
        };
        let hop_limit = b[7];
        let mut next = b[6];
        let mut off = 40;
        let mut cx = self;
        // Skip extension headers: hop-by-hop, routing, fragment, destination options.
        for _ in 0..8 {
            match next {
                0 | 43 | 60 => {
                    let (Some(nh), Some(len)) = (u8_at(b, off), u8_at(b, off + 1)) else {
                        return s.truncated("ipv6 extension header", end.saturating_sub(off), 8);
                    };
                    next = nh;
                    off += (usize::from(len) + 1) * 8;
                }
                44 => {
                    let (Some(nh), Some(fo), Some(id)) = (u8_at(b, off), u16_at(b, off + 2), u32_at(b, off + 4)) else {
                        return s.truncated("ipv6 fragment header", end.saturating_sub(off), 8);
                    };
                    let (offset, more) = (usize::from(fo & 0xfff8), fo & 1 != 0);
                    // Offset 0 without M is an "atomic" fragment: a whole packet, nothing to mark.
                    if more || offset != 0 {
                        s.fragment = Some(Fragment { id, offset, more });
                    }
                    if offset != 0 {
                        return continued(nh, b.get(off + 8..end).unwrap_or(&[]), s);
                    }
                    cx.partial |= more;
                    next = nh;
                    off += 8;
                }
                _ => break,
            }
        }
        if off > end {
            return s.truncated("ipv6 extension headers", end.saturating_sub(40), off - 40);
        }
        cx.l4(next, &b[off..end], hop_limit, s);
    }

    /// Transport (or tunnelled network) layer after an IPv4/IPv6 header.
    fn l4(self, proto: u8, payload: &[u8], ttl: u8, s: &mut PacketSummary) {
        match proto {
            1 => self.icmp(payload, ttl, s),
            58 => self.icmpv6(payload, ttl, s),
            6 => self.tcp(payload, s),
            17 => self.udp(payload, s),
            4 | 41 => {
                // IP-in-IP (Calico) / IPv6-in-IPv4: the inner packet follows directly.
                if self.depth + 1 < MAX_DEPTH {
                    s.inner = Some(self.inner(payload, LinkKind::RawIp));
                } else {
                    s.push("data");
                }
            }
            2 => s.push("igmp"),
            47 => s.push("gre"),
            50 => s.push("esp"),
            132 => s.push("sctp"),
            p => s.detail = Some(format!("proto {p}, {} bytes", payload.len())),
        }
    }

    fn udp(self, b: &[u8], s: &mut PacketSummary) {
        s.push("udp");
        if b.len() < 8 {
            return s.truncated("udp header", b.len(), 8);
        }
        let (Some(sport), Some(dport), Some(ulen)) = (u16_at(b, 0), u16_at(b, 2), u16_at(b, 4)) else {
            return s.truncated("udp header", b.len(), 8);
        };
        let ulen = usize::from(ulen);
        let end = if ulen < 8 {
            b.len() // 0 with UDP GSO; bogus otherwise, but show what we have
        } else if ulen > b.len() {
            if !self.partial {
                s.truncated("udp datagram", b.len(), ulen);
            }
            b.len()
        } else {
            ulen
        };
        let payload = &b[8..end];
        let ports = format!("{sport} → {dport}");
        let tunnel = self.tunnel_ports.contains(&sport) || self.tunnel_ports.contains(&dport);
        let vxlan = VXLAN_PORTS.contains(&dport) || VXLAN_PORTS.contains(&sport);
        let can_nest = self.depth + 1 < MAX_DEPTH;
        let tunnelled_ip = if tunnel && can_nest { tunnel_payload(payload) } else { None };
        if let Some((ip, framing)) = tunnelled_ip {
            s.detail = Some(format!("{ports}, {} bytes{framing}", payload.len()));
            s.inner = Some(self.inner(ip, LinkKind::RawIp));
        } else if vxlan && can_nest && payload.len() >= 8 && payload[0] & 0x08 != 0 {
            s.push("vxlan");
            let vni = u32_at(payload, 4).unwrap_or(0) >> 8;
            s.detail = Some(format!("{ports}, vni {vni}"));
            s.inner = Some(self.inner(&payload[8..], LinkKind::Ethernet));
        } else {
            s.detail = Some(format!("{ports}, {} bytes", payload.len()));
            if !payload.is_empty() {
                s.push("data");
            }
        }
    }

    fn tcp(self, b: &[u8], s: &mut PacketSummary) {
        s.push("tcp");
        if b.len() < 20 {
            return s.truncated("tcp header", b.len(), 20);
        }
        let sport = u16_at(b, 0).unwrap_or(0);
        let dport = u16_at(b, 2).unwrap_or(0);
        let doff = usize::from(b[12] >> 4) * 4;
        let flags = b[13];
        // tcpdump's letters: S=SYN F=FIN R=RST P=PSH .=ACK U=URG
        let mut f = String::new();
        for (bit, c) in [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P'), (0x20, 'U'), (0x10, '.')] {
            if flags & bit != 0 {
                f.push(c);
            }
        }
        if f.is_empty() {
            f.push_str("none");
        }
        if doff < 20 {
            s.detail = Some(format!("{sport} → {dport} [{f}]"));
            return s.problem(format!("bad tcp data offset {doff}"));
        }
        let payload = b.get(doff..).unwrap_or(&[]);
        s.detail = Some(format!("{sport} → {dport} [{f}], {} bytes", payload.len()));
        if b.len() < doff {
            return s.truncated("tcp header", b.len(), doff);
        }
        if !payload.is_empty() {
            s.push("data");
        }
    }

    fn icmp(self, b: &[u8], ttl: u8, s: &mut PacketSummary) {
        s.push("icmp");
        let (Some(ty), Some(code)) = (u8_at(b, 0), u8_at(b, 1)) else {
            return s.truncated("icmp header", b.len(), 4);
        };
        let echo = |name: &str, s: &mut PacketSummary| match (u16_at(b, 4), u16_at(b, 6)) {
            (Some(id), Some(seq)) => format!("{name} id={id} seq={seq} ttl={ttl}"),
            _ => {
                s.truncated("icmp echo", b.len(), 8);
                format!("{name} ttl={ttl}")
            }
        };
        let detail = match ty {
            0 => echo("echo reply", s),
            8 => echo("echo request", s),
            3 => {
                let what = match code {
                    0 => "net unreachable".to_string(),
                    1 => "host unreachable".to_string(),
                    2 => "protocol unreachable".to_string(),
                    3 => "port unreachable".to_string(),
                    4 => format!("fragmentation needed, mtu {}", u16_at(b, 6).unwrap_or(0)),
                    13 => "administratively prohibited".to_string(),
                    c => format!("destination unreachable code {c}"),
                };
                format!("{what}{}", quoted_ipv4(b.get(8..).unwrap_or(&[])))
            }
            11 => {
                let what = if code == 0 { "ttl exceeded" } else { "reassembly time exceeded" };
                format!("{what}{}", quoted_ipv4(b.get(8..).unwrap_or(&[])))
            }
            5 => "redirect".to_string(),
            t => format!("type {t} code {code}"),
        };
        s.detail = Some(detail);
    }

    fn icmpv6(self, b: &[u8], hop_limit: u8, s: &mut PacketSummary) {
        s.push("icmpv6");
        let (Some(ty), Some(code)) = (u8_at(b, 0), u8_at(b, 1)) else {
            return s.truncated("icmpv6 header", b.len(), 4);
        };
        let target = || ipv6_at(b, 8).map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        let detail = match ty {
            128 | 129 => {
                let name = if ty == 128 { "echo request" } else { "echo reply" };
                match (u16_at(b, 4), u16_at(b, 6)) {
                    (Some(id), Some(seq)) => format!("{name} id={id} seq={seq} hlim={hop_limit}"),
                    _ => {
                        s.truncated("icmpv6 echo", b.len(), 8);
                        name.to_string()
                    }
                }
            }
            133 => "router solicitation".to_string(),
            134 => "router advertisement".to_string(),
            135 => format!("neighbor solicitation, who-has {}", target()),
            136 => format!("neighbor advertisement, {} is here", target()),
            143 => "multicast listener report v2".to_string(),
            1 => format!("destination unreachable code {code}"),
            2 => format!("packet too big, mtu {}", u32_at(b, 4).unwrap_or(0)),
            3 => "hop limit exceeded".to_string(),
            t => format!("type {t} code {code}"),
        };
        s.detail = Some(detail);
    }

    fn arp(self, b: &[u8], s: &mut PacketSummary) {
        s.push("arp");
        let (Some(htype), Some(ptype), Some(op)) = (u16_at(b, 0), u16_at(b, 2), u16_at(b, 6)) else {
            return s.truncated("arp header", b.len(), 8);
        };
        let (hlen, plen) = (b[4], b[5]);
        if htype != 1 || ptype != 0x0800 || hlen != 6 || plen != 4 {
            s.detail = Some(format!("op {op}, hardware {htype}, protocol 0x{ptype:04x}"));
            return;
        }
        let (Some(sha), Some(spa), Some(tpa)) = (mac_at(b, 8), ipv4_at(b, 14), ipv4_at(b, 24)) else {
            return s.truncated("arp packet", b.len(), 28);
        };
        s.set_addrs(spa, tpa);
        s.detail = Some(match op {
            1 if spa == tpa => format!("announce {spa}"),
            1 if spa.is_unspecified() => format!("probe who-has {tpa}"),
            1 => format!("who-has {tpa} tell {spa}"),
            2 => format!("{spa} is-at {sha}"),
            op => format!("op {op}"),
        });
    }
}

/// The name the stack uses for an IP protocol number, when the decoder has one.
fn protocol_name(proto: u8) -> Option<&'static str> {
    Some(match proto {
        1 => "icmp",
        2 => "igmp",
        4 => "ip",
        6 => "tcp",
        17 => "udp",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        58 => "icmpv6",
        132 => "sctp",
        _ => return None,
    })
}

/// A fragment after the first: its bytes continue the payload of protocol `proto`, with no
/// header of their own. The protocol is named (so `--only icmp` keeps every piece of a
/// large ping), but not decoded.
fn continued(proto: u8, payload: &[u8], s: &mut PacketSummary) {
    match protocol_name(proto) {
        Some(name) => {
            s.push(name);
            s.detail = Some(format!("continued, {} bytes", payload.len()));
        }
        None => s.detail = Some(format!("proto {proto} continued, {} bytes", payload.len())),
    }
}

/// Whether `b` starts like an IPv4 or IPv6 header.
fn looks_like_ip(b: &[u8]) -> bool {
    match b.first().map(|v| v >> 4) {
        Some(4) => b[0] & 0x0f >= 5 && b.len() >= 20,
        Some(6) => b.len() >= 40,
        _ => false,
    }
}

/// The IP packet a UDP tunnel datagram carries: either bare, or after the 4-byte TUN
/// packet-information header (`struct tun_pi`: flags, ethertype) that a TUN device opened
/// without `IFF_NO_PI` adds — socat's `TUN:` address does, so the talk's tunnel sent it.
/// Returns the packet and how it was framed (for the summary: "", ", tun pi", ", gso frame").
fn tunnel_payload(b: &[u8]) -> Option<(&[u8], &'static str)> {
    if looks_like_ip(b) {
        return Some((b, ""));
    }
    // cnet's gso wire (--backend udp-gso): magic, virtio_net_hdr, then the packet.
    if b.starts_with(&crate::model::wire::GSO_MAGIC) {
        let ip = b.get(crate::model::wire::GSO_FRAME_HDR..)?;
        return looks_like_ip(ip).then_some((ip, ", gso frame"));
    }
    let ip = b.get(4..)?;
    let version = match u16_at(b, 2)? {
        0x0800 => 4,
        0x86dd => 6,
        _ => return None,
    };
    (looks_like_ip(ip) && ip[0] >> 4 == version).then_some((ip, ", tun pi"))
}

/// ` for udp 10.0.0.10:9000 → 10.0.0.20:9000`: the packet an ICMP error is about.
fn quoted_ipv4(b: &[u8]) -> String {
    let (Some(v), Some(proto), Some(src), Some(dst)) = (u8_at(b, 0), u8_at(b, 9), ipv4_at(b, 12), ipv4_at(b, 16)) else {
        return String::new();
    };
    if v >> 4 != 4 {
        return String::new();
    }
    let ihl = usize::from(v & 0x0f) * 4;
    let ports = (u16_at(b, ihl), u16_at(b, ihl + 2));
    match (proto, ports) {
        (6 | 17, (Some(sp), Some(dp))) => {
            let name = if proto == 6 { "tcp" } else { "udp" };
            format!(" for {name} {src}:{sp} → {dst}:{dp}")
        }
        (1, _) => format!(" for icmp {src} → {dst}"),
        (p, _) => format!(" for proto {p} {src} → {dst}"),
    }
}

#[cfg(test)]
mod tests;
