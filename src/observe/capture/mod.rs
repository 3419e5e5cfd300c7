//! Packet capture on one interface of the calling thread's network namespace: what the
//! talk did with `tshark -T fields -e ip.src -e ip.dst -e frame.protocols`, plus tunnel
//! awareness and an optional pcap file.
//!
//! # Line format
//!
//! One line per packet, in both directions:
//!
//! ```text
//! <seconds> <dir> [<src-mac> → <dst-mac>  ]<src> → <dst>  <stack>[ (<detail>)][ <frag>][ [<problem>]][  |  inner ...]
//! ```
//!
//! - `seconds`: since the capture started, right-aligned, 6 decimals (`   0.000123`).
//! - `dir`: `out` for packets this interface sends (`PACKET_OUTGOING`), `in ` otherwise;
//!   always 3 characters.
//! - `src-mac → dst-mac`: only with `-e` (as `tcpdump -e`), the Ethernet header's addresses,
//!   for every Ethernet frame, outer and inner (VXLAN's). A TUN device's packets have no link
//!   header, so they show none (the capture says so once on stderr).
//! - `src → dst`: IP addresses for IPv4/IPv6; for ARP the sender and target IPs; for other
//!   frames the MAC addresses; `?` when the frame ends before the address.
//! - `stack`: the protocols outermost first, joined by `:`, tshark's names: `eth`, `vlan`,
//!   `arp`, `ip`, `ipv6`, `icmp`, `icmpv6`, `tcp`, `udp`, `vxlan`, `igmp`, `gre`, `data`
//!   (undecoded payload), `ethertype`/`llc` (other Ethernet payloads), `raw` (a TUN packet
//!   that is not IP). Frames from a TUN device have no link header: the stack starts at `ip`.
//! - `detail`: one parenthesised note on the top protocol: `echo request id=77 seq=1 ttl=63`,
//!   `40000 → 80 [S.], 0 bytes` (TCP ports, tcpdump's flag letters, payload size),
//!   `9000 → 9000, 84 bytes` (UDP ports, payload size), `who-has 10.0.0.20 tell 10.0.0.10`,
//!   `10.0.0.20 is-at 02:..`, `51234 → 4789, vni 42`, `port unreachable for udp a:p → b:q`.
//! - `frag`: on each piece of a fragmented IPv4/IPv6 packet, outer or inner:
//!   `frag id=4242 off=1480 MF` (the identification the pieces share, where this piece's
//!   payload starts, `MF` when more follow). The first piece is decoded as usual; the others
//!   carry no transport header: their stack ends with the protocol they continue and the
//!   detail says `continued, N bytes`.
//! - `problem`: in square brackets when the frame is short or malformed
//!   (`[truncated ipv4 header: 10 of 20 bytes]`); the line still shows what was decoded.
//! - `inner`: after `  |  inner `, the packet a tunnel carries, in the same format (without
//!   time and direction), recursively: UDP to or from a port in `tunnel_ports` whose payload
//!   starts like an IPv4/IPv6 header (the talk's socat TUN/UDP tunnel, port 9000; when the
//!   datagram starts with the 4-byte TUN packet-information header, as socat's `TUN:` sends
//!   it, the UDP detail ends in `, tun pi` and the inner packet follows it), VXLAN
//!   (UDP port 4789 or 8472, an inner Ethernet frame), IP-in-IP (protocol 4 / 41).
//!
//! Examples, for stage 4's ping from `con1` on node 1 to 172.16.1.2 captured on node 2:
//!
//! ```text
//!    0.000000 in  10.0.0.10 → 10.0.0.20  eth:ip:udp (9000 → 9000, 84 bytes)  |  inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)     (enp0s8)
//!    0.000000 out 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)                                                                          (tun0)
//!    0.000000 out 172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=62)                                                                      (br0)
//!    0.000000 in  10.0.0.10 → 10.0.0.20  eth:arp (who-has 10.0.0.20 tell 10.0.0.10)
//! ```
//!
//! If the kernel dropped packets (socket buffer full), one last line starting with `#` says
//! how many. When the capture ends, one line on stderr says how many packets it saw
//! (`0 packets seen on enp0s8 in 2.0 s`), so that an empty stdout still has an answer.
//!
//! The format is meant to stay stable: scripts may split on the first `  |  inner ` and on
//! the double spaces around the stack.

pub mod decode;
pub mod pcap;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};

pub use decode::{LinkKind, PROTOCOLS, PacketSummary};

use crate::sys::packet::{self as pkt, PacketSocket};
use crate::sys::signal;

/// What to capture and where to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Interface name in the calling thread's network namespace.
    pub iface: String,
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Also write every packet to this classic pcap file.
    pub pcap: Option<PathBuf>,
    /// UDP ports whose payload is a bare inner IP packet (default `[9000]`).
    pub tunnel_ports: Vec<u16>,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// Keep only packets carrying this protocol at any depth (`icmp`, `udp`, `arp`, ...):
    /// one of [`PROTOCOLS`].
    pub only: Option<String>,
    /// Show the MAC addresses of each Ethernet header (`-e`).
    pub link_addrs: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            iface: String::new(),
            count: None,
            pcap: None,
            tunnel_ports: vec![crate::model::topology::TUNNEL_PORT],
            timeout: None,
            only: None,
            link_addrs: false,
        }
    }
}

/// Which way a packet went through the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn from_pkttype(pkttype: u8) -> Direction {
        if pkttype == pkt::PACKET_OUTGOING { Direction::Out } else { Direction::In }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in ",
            Direction::Out => "out",
        }
    }
}

/// Decodes one frame (pure, never panics). See the module docs for the `Display` format.
pub fn describe(frame: &[u8], link: LinkKind, tunnel_ports: &[u16]) -> PacketSummary {
    decode::describe(frame, link, tunnel_ports)
}

/// One output line (without the newline): time since start, direction, summary (with the
/// MAC addresses first when `link_addrs`).
pub fn format_line(elapsed: Duration, dir: Direction, summary: &PacketSummary, link_addrs: bool) -> String {
    if link_addrs {
        format!("{:>11.6} {} {}", elapsed.as_secs_f64(), dir.as_str(), summary.with_link_addrs())
    } else {
        format!("{:>11.6} {} {}", elapsed.as_secs_f64(), dir.as_str(), summary)
    }
}

/// The closing line: how many packets were seen (and, with `--only`, how many others were
/// left out), so that a capture that printed nothing still says what happened.
pub fn closing_line(iface: &str, seen: u64, left_out: u64, only: Option<&str>, elapsed: Duration) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut line = match only {
        Some(p) => format!("{seen} {p} packet{} seen on {iface} in {:.1} s", plural(seen), elapsed.as_secs_f64()),
        None => format!("{seen} packet{} seen on {iface} in {:.1} s", plural(seen), elapsed.as_secs_f64()),
    };
    if left_out > 0 {
        line.push_str(&format!(" ({left_out} other{} left out)", plural(left_out)));
    }
    line
}

/// How often the loop wakes up to look at the stop flag and the deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Receive buffer: room for a 64 KiB GSO super-packet plus headers.
const BUF_LEN: usize = 256 * 1024;

fn summary_has(s: &PacketSummary, proto: &str) -> bool {
    s.protocols.contains(&proto) || s.inner.as_deref().is_some_and(|i| summary_has(i, proto))
}

/// Captures until `count` packets, `timeout`, or SIGINT/SIGTERM; prints one line per packet
/// to `out` (and the closing count on stderr) and returns how many packets were seen. Ctrl-C
/// ends it cleanly: the pcap file is complete and `Ok` is returned.
///
/// For the duration of the call SIGINT and SIGTERM are caught process-wide (previous
/// handlers restored afterwards). A caller with its own signal handling (e.g. tokio's
/// `ctrl_c`) should use [`run_until`] with its own flag instead.
pub fn run(opts: &CaptureOptions, out: &mut dyn Write) -> Result<u64> {
    let _signals = signal::catch_stop_signals().context("installing the SIGINT handler")?;
    run_until(opts, out, signal::stop_flag())
}

/// Like [`run`], but stops when `stop` becomes true (checked at least every 100 ms);
/// touches no signal handlers.
pub fn run_until(opts: &CaptureOptions, out: &mut dyn Write, stop: &AtomicBool) -> Result<u64> {
    let iface = &opts.iface;
    let ifindex = pkt::if_nametoindex(iface).with_context(|| format!("no interface {iface:?} in this network namespace"))?;
    let sock = PacketSocket::open(ifindex).with_context(|| format!("opening a packet socket on {iface} (needs CAP_NET_RAW)"))?;
    let hatype = sock.hardware_type();
    let link = LinkKind::from_arphrd(hatype).ok_or_else(|| anyhow!("{iface}: unsupported link type (ARPHRD {hatype})"))?;
    let mut pcap = match &opts.pcap {
        Some(path) => {
            Some(pcap::PcapWriter::create(path, link.pcap_linktype()).with_context(|| format!("creating {}", path.display()))?)
        }
        None => None,
    };

    if opts.link_addrs && link == LinkKind::RawIp {
        tell!("{iface} has no link-layer header (it carries bare IP packets): no MAC addresses to show");
    }
    // Said once the socket sees packets, so that whoever starts traffic next (a person, a
    // test) can wait for this line instead of guessing.
    tell!(
        "capturing on {iface}: one line per packet{}",
        if opts.count.is_none() && opts.timeout.is_none() { "; Ctrl-C to stop" } else { "" }
    );
    let start = Instant::now();
    let deadline = opts.timeout.map(|t| start + t);
    let mut buf = vec![0u8; BUF_LEN];
    let mut seen: u64 = 0;
    let mut left_out: u64 = 0;
    let mut result = Ok(());

    while opts.count.is_none_or(|c| seen < c) && !stop.load(Ordering::SeqCst) {
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(POLL_INTERVAL),
                _ => break,
            },
            None => POLL_INTERVAL,
        };
        let r = match sock.recv(&mut buf, wait) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                result = Err(anyhow::Error::new(e).context(format!("reading from {iface}")));
                break;
            }
        };
        let now = SystemTime::now();
        let frame = &buf[..r.captured];
        let summary = describe(frame, link, &opts.tunnel_ports);
        // `--only icmp`: keep packets with that protocol at any depth (the inner packet too),
        // so the talk's ping stands out from IPv6 and IGMP chatter.
        if let Some(want) = &opts.only
            && !summary_has(&summary, want)
        {
            left_out += 1;
            continue;
        }
        seen += 1;
        if let Some(w) = pcap.as_mut()
            && let Err(e) = w.write_packet(now, frame, r.original)
        {
            result = Err(anyhow::Error::new(e).context("writing the pcap file"));
            break;
        }
        let line = format_line(start.elapsed(), Direction::from_pkttype(r.pkttype), &summary, opts.link_addrs);
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // `cnet capture ... | head`: the reader is gone, stop quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => {
                result = Err(anyhow::Error::new(e).context("writing the capture output"));
                break;
            }
        }
    }

    if let Some(w) = pcap.as_mut() {
        let flushed = w.flush().context("flushing the pcap file");
        result = result.and(flushed);
    }
    if let Ok(drops) = sock.drops()
        && drops > 0
    {
        let _ = writeln!(out, "# {drops} packets dropped by the kernel (socket buffer full)");
    }
    if result.is_ok() {
        tell!("{}", closing_line(iface, seen, left_out, opts.only.as_deref(), start.elapsed()));
    }
    result.map(|()| seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_line_counts_what_was_seen_and_left_out() {
        let t = Duration::from_millis(2000);
        assert_eq!(closing_line("enp0s8", 0, 0, None, t), "0 packets seen on enp0s8 in 2.0 s");
        assert_eq!(closing_line("enp0s8", 1, 0, None, t), "1 packet seen on enp0s8 in 2.0 s");
        assert_eq!(closing_line("br0", 3, 1, Some("icmp"), t), "3 icmp packets seen on br0 in 2.0 s (1 other left out)");
        assert_eq!(closing_line("br0", 0, 12, Some("tcp"), t), "0 tcp packets seen on br0 in 2.0 s (12 others left out)");
    }

    #[test]
    fn lines_show_macs_only_when_asked() {
        let mut frame = vec![2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, 0x88, 0xcc];
        frame.extend_from_slice(&[0; 4]);
        let s = describe(&frame, LinkKind::Ethernet, &[]);
        let plain = format_line(Duration::from_micros(1500), Direction::In, &s, false);
        let with = format_line(Duration::from_micros(1500), Direction::In, &s, true);
        assert_eq!(plain, "   0.001500 in  02:00:00:00:00:0a → 02:00:00:00:00:0b  eth:ethertype (ethertype 0x88cc, 4 bytes)");
        assert_eq!(with, format!("   0.001500 in  02:00:00:00:00:0a → 02:00:00:00:00:0b  {}", &plain[16..]));
    }
}
