// SPDX-License-Identifier: MIT
//
// cnet's eBPF datapath (`--backend ebpf`): the talk's wire — each inner IPv4 packet in one
// UDP datagram to port 9000 of the peer node — built and taken apart by two TC programs,
// with no userspace process in the path.
//
//   cnet_encap  egress of tun0 (where the pod routes point): looks the inner destination up
//               in cnet_routes, pushes outer IPv4 + UDP (bpf_skb_adjust_room, marked as a UDP
//               tunnel so a TCP super-packet is still cut in the right place, each segment
//               with its own outer headers), then an Ethernet header, and redirects to the
//               underlay's egress (next hop and MACs from bpf_fib_lookup; bpf_redirect_neigh
//               when the neighbour is not resolved yet).
//   cnet_decap  ingress of the underlay (enp0s8): takes UDP datagrams to this node's port
//               9000, checks them as cnet's userspace tunnel does (known peer address and
//               port, well-formed IPv4 inside, source inside that peer's pod subnet), strips
//               the outer headers and redirects the inner packet to tun0's ingress: the
//               stack sees it arrive from the overlay device, as with the userspace tunnel.
//
// Maps are filled by cnet (src/apply/ebpf.rs); the layouts below are mirrored there.
// Nothing is pinned: the TC filters hold the programs, the programs hold the maps, and
// deleting the filters (or tun0) unloads everything.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif

// Why a packet was dropped (and the traffic counters): the index into cnet_stats. The same
// reasons, with the same names, as the userspace tunnel's (src/tunnel/stats.rs).
enum stat {
    TX_PACKETS,
    TX_BYTES,
    RX_PACKETS,
    RX_BYTES,
    UNKNOWN_PEER,   // rx: datagram from an address:port that is not a configured peer
    TRUNCATED,      // rx: shorter than the IPv4 header / total length
    MALFORMED,      // rx: bad IHL, bad header checksum, length mismatch, fragment
    NOT_IPV4,       // rx: version nibble != 4
    SPOOFED_SOURCE, // rx: inner source not inside the sending peer's subnet
    TUN_WRITE_ERROR,// rx: the kernel refused to strip the outer headers
    TUN_NOT_IPV4,   // tx: not IPv4 (IPv6 router solicitations...)
    NO_ROUTE,       // tx: destination owned by no peer
    SEND_ERROR,     // tx: no route or neighbour to the peer node on the underlay
    BAD_OFFLOAD,    // tx: the kernel refused to push the outer headers (already encapsulated)
    GSO_BATCH,      // rx: a UDP GSO batch of datagrams that no device segmented (see below)
    STAT_MAX,
};

struct config {
    __be32 local_ip;      // this node's underlay address: the outer source, and where rx listens
    __be16 port;          // the tunnel port (9000), network order
    __u16 pad;
    __u32 underlay_ifindex;
    __u32 tun_ifindex;
    __u32 direct;         // 1: deliver to this node's own containers straight (see cnet_local)
};

struct route_key {
    __u32 prefixlen;
    __be32 addr;
};

struct peer {
    __be32 net;   // the peer's pod subnet (network order), masked
    __be32 mask;  // its mask (network order)
    __be16 port;  // the peer's tunnel port, network order
    __u16 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} cnet_config SEC(".maps");

// Inner destination prefix -> the peer node's underlay address (longest prefix wins).
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct route_key);
    __type(value, __be32);
} cnet_routes SEC(".maps");

// Peer node underlay address -> what it may send.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __be32);
    __type(value, struct peer);
} cnet_peers SEC(".maps");

// This node's container address -> the node end of its veth (the bridge port): where
// cnet_decap delivers the container's packets itself when cfg->direct is set.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __be32);
    __type(value, __u32);
} cnet_local SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_MAX);
    __type(key, __u32);
    __type(value, __u64);
} cnet_stats SEC(".maps");

static __always_inline void count(__u32 what, __u64 n)
{
    __u64 *c = bpf_map_lookup_elem(&cnet_stats, &what);
    if (c)
        *c += n; // per-CPU: no other writer
}

static __always_inline struct config *config(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&cnet_config, &zero);
}

// The one's-complement sum of `len` bytes (a multiple of 4, at most 60) at `buf`, folded.
static __always_inline __u16 fold(__s64 sum)
{
    __u32 s = (__u32)sum;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

// How many packets of the wire a (possibly GSO) skb stands for.
static __always_inline __u64 segments(struct __sk_buff *skb, __u32 payload)
{
    if (skb->gso_segs > 1)
        return skb->gso_segs;
    if (skb->gso_size && payload > skb->gso_size)
        return (payload + skb->gso_size - 1) / skb->gso_size;
    return 1;
}

#define OUTER_LEN (sizeof(struct iphdr) + sizeof(struct udphdr))

SEC("classifier")
int cnet_encap(struct __sk_buff *skb)
{
    struct config *cfg = config();
    if (!cfg)
        return TC_ACT_SHOT;
    // tun0 is an L3 device: the skb starts with the IP header, no Ethernet header.
    if (skb->protocol != bpf_htons(ETH_P_IP)) {
        count(TUN_NOT_IPV4, 1);
        return TC_ACT_SHOT;
    }
    struct iphdr inner;
    if (bpf_skb_load_bytes(skb, 0, &inner, sizeof(inner)) < 0 || inner.version != 4) {
        count(TUN_NOT_IPV4, 1);
        return TC_ACT_SHOT;
    }
    struct route_key key = { .prefixlen = 32, .addr = inner.daddr };
    __be32 *peer = bpf_map_lookup_elem(&cnet_routes, &key);
    if (!peer) {
        count(NO_ROUTE, 1);
        return TC_ACT_SHOT;
    }
    __be32 peer_ip = *peer;
    __u32 len = skb->len;
    __u64 segs = segments(skb, len);

    // The next hop towards the peer node, resolved before anything changes.
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.ipv4_src = cfg->local_ip;
    fib.ipv4_dst = peer_ip;
    fib.ifindex = cfg->underlay_ifindex;
    long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(SEND_ERROR, segs);
        return TC_ACT_SHOT;
    }

    // Room for outer IPv4 + UDP in front of the inner packet, marked as a UDP tunnel: a GSO
    // super-packet keeps its segment size (tun0's MTU already left room for the 28 bytes)
    // and is later cut into segments that each get their own outer headers.
    __u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO;
    if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC, flags) < 0) {
        // Already encapsulated (a container's own tunnel): a single packet can still go
        // with plain headers; a super-packet cannot be cut correctly.
        if (skb->gso_size || bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC, 0) < 0) {
            count(BAD_OFFLOAD, segs);
            return TC_ACT_SHOT;
        }
    }
    struct {
        struct iphdr ip;
        struct udphdr udp;
    } outer = {};
    __u32 total = len + OUTER_LEN;
    outer.ip.version = 4;
    outer.ip.ihl = 5;
    outer.ip.tot_len = bpf_htons(total);
    // Don't fragment, as the kernel's UDP socket sends a datagram that fits its route.
    outer.ip.frag_off = bpf_htons(0x4000);
    outer.ip.ttl = 64;
    outer.ip.protocol = IPPROTO_UDP;
    outer.ip.saddr = cfg->local_ip;
    outer.ip.daddr = peer_ip;
    outer.ip.check = ~fold(bpf_csum_diff(0, 0, (__be32 *)&outer.ip, sizeof(outer.ip), 0));
    outer.udp.source = cfg->port;
    outer.udp.dest = cfg->port;
    outer.udp.len = bpf_htons(len + sizeof(struct udphdr));
    // No UDP checksum (0 is allowed over IPv4, and the kernel's VXLAN sends none either):
    // the inner packet carries its own.
    outer.udp.check = 0;
    if (bpf_skb_store_bytes(skb, 0, &outer, sizeof(outer), 0) < 0) {
        count(BAD_OFFLOAD, segs);
        return TC_ACT_SHOT;
    }
    // An Ethernet header for the underlay (tun0 had none): bpf_skb_change_head is made for
    // an L3 skb that is redirected into an L2 device.
    if (bpf_skb_change_head(skb, ETH_HLEN, 0) < 0) {
        count(BAD_OFFLOAD, segs);
        return TC_ACT_SHOT;
    }
    struct ethhdr eth = {};
    eth.h_proto = bpf_htons(ETH_P_IP);
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        // Not resolved yet (first packet): the kernel's neighbour code fills the MACs in,
        // queueing the packet while it asks by ARP. Without a next hop given, the kernel
        // looks the route up itself and gives the packet that route: it must not keep
        // tun0's, or the queued packet would be sent by tun0's (header-less) output once
        // the answer comes, and lost.
        if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0) {
            count(BAD_OFFLOAD, segs);
            return TC_ACT_SHOT;
        }
        count(TX_PACKETS, segs);
        count(TX_BYTES, len);
        return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
    }
    __builtin_memcpy(eth.h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth.h_source, fib.smac, ETH_ALEN);
    if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0) {
        count(BAD_OFFLOAD, segs);
        return TC_ACT_SHOT;
    }
    // Counted as sent only once nothing here can drop it any more.
    count(TX_PACKETS, segs);
    count(TX_BYTES, len);
    return bpf_redirect(fib.ifindex, 0);
}

// Deliver a decapsulated packet for one of this node's containers straight to its bridge
// port, doing what the node's routing would (TTL - 1, the container's MAC from the
// neighbour table): what Cilium does for its pods. Why not through tun0 and the stack: a
// super-packet that crossed the underlay whole still carries the kernel's "encapsulated"
// mark, which no BPF helper clears, and the bridge (no tunnel offloads) would then cut it
// into segments and checksum each in software — half the throughput. Anything else (the
// node's own addresses, an unresolved neighbour, a TTL that runs out) takes tun0's way.
// Only where cnet set cfg->direct: stages with NAT need the receiving node's conntrack.
static __always_inline long deliver(struct __sk_buff *skb, struct config *cfg, struct iphdr *inner)
{
    __u32 *port = bpf_map_lookup_elem(&cnet_local, &inner->daddr);
    if (!port || inner->ttl <= 1)
        return -1;
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.tos = inner->tos;
    fib.l4_protocol = inner->protocol;
    fib.tot_len = 0;
    fib.ipv4_src = inner->saddr;
    fib.ipv4_dst = inner->daddr;
    fib.ifindex = cfg->tun_ifindex;
    if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
        return -1;
    // TTL - 1 and the header checksum with it (the TTL shares a 16-bit word with the
    // protocol).
    __u16 old = bpf_htons((__u16)inner->ttl << 8 | inner->protocol);
    __u16 new = bpf_htons((__u16)(inner->ttl - 1) << 8 | inner->protocol);
    __u8 ttl = inner->ttl - 1;
    if (bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), &ttl, 1, 0) < 0 ||
        bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2) < 0)
        return TC_ACT_SHOT;
    struct ethhdr eth = {};
    __builtin_memcpy(eth.h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth.h_source, fib.smac, ETH_ALEN);
    eth.h_proto = bpf_htons(ETH_P_IP);
    if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect(*port, 0);
}

SEC("classifier")
int cnet_decap(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    struct config *cfg = config();
    if (!cfg)
        return TC_ACT_OK;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return TC_ACT_OK;
    if (ip.protocol != IPPROTO_UDP || ip.daddr != cfg->local_ip || ip.ihl < 5)
        return TC_ACT_OK;
    __u32 ohl = ip.ihl * 4;
    __u16 frag = bpf_ntohs(ip.frag_off);
    if (frag & 0x1fff)
        return TC_ACT_OK; // a later fragment: no UDP header to tell whose it is
    struct udphdr udp;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + ohl, &udp, sizeof(udp)) < 0)
        return TC_ACT_OK;
    if (udp.dest != cfg->port)
        return TC_ACT_OK; // not the tunnel's: the stack's business
    // From here on the datagram is the tunnel's: it goes into tun0 or is dropped, counted.
    struct peer *p = bpf_map_lookup_elem(&cnet_peers, &ip.saddr);
    if (!p || p->port != udp.source) {
        count(UNKNOWN_PEER, 1);
        return TC_ACT_SHOT;
    }
    if (frag & 0x2000) {
        // A first fragment: a peer never sends one (tun0's MTU leaves room for the headers).
        count(MALFORMED, 1);
        return TC_ACT_SHOT;
    }
    // The datagram ends where the outer IP header says (an Ethernet frame may be padded).
    __u32 outer_total = bpf_ntohs(ip.tot_len);
    __u32 off = ETH_HLEN + ohl + sizeof(struct udphdr);
    if (outer_total < ohl + sizeof(struct udphdr) || skb->len < ETH_HLEN + outer_total) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    __u32 payload = outer_total - ohl - sizeof(struct udphdr);
    // The same checks as tunnel/packet.rs validate_ipv4, in the same order.
    __u8 b0;
    if (payload < 1 || bpf_skb_load_bytes(skb, off, &b0, 1) < 0) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    if (b0 >> 4 != 4) {
        count(NOT_IPV4, 1);
        return TC_ACT_SHOT;
    }
    if (payload < sizeof(struct iphdr)) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    __u32 ihl = (b0 & 0x0f) * 4;
    if (ihl < sizeof(struct iphdr)) {
        count(MALFORMED, 1);
        return TC_ACT_SHOT;
    }
    if (payload < ihl) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    __u8 hdr[60] = {};
    if (bpf_skb_load_bytes(skb, off, hdr, ihl & 0x3c) < 0) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    struct iphdr *inner = (struct iphdr *)hdr;
    __u32 total = bpf_ntohs(inner->tot_len);
    if (total < ihl) {
        count(MALFORMED, 1);
        return TC_ACT_SHOT;
    }
    if (total > payload) {
        count(TRUNCATED, 1);
        return TC_ACT_SHOT;
    }
    if (total < payload) {
        // A UDP GSO batch (several datagrams of gso_size bytes behind one header) that
        // crossed a same-host underlay whole: cnet's userspace tunnel sends them, and only
        // a socket could take them apart. Counted apart from real garbage.
        if (skb->gso_size && total == skb->gso_size) {
            count(GSO_BATCH, segments(skb, payload));
            return TC_ACT_SHOT;
        }
        // Trailing bytes after the IP packet: not what a tunnel peer sends.
        count(MALFORMED, 1);
        return TC_ACT_SHOT;
    }
    if (fold(bpf_csum_diff(0, 0, (__be32 *)hdr, ihl & 0x3c, 0)) != 0xffff) {
        count(MALFORMED, 1);
        return TC_ACT_SHOT;
    }
    // Anti-spoofing: the peer's pod subnet, or the peer node's own address (a container
    // pinging the peer node's IP gets its reply through the tunnel).
    if ((inner->saddr & p->mask) != p->net && inner->saddr != ip.saddr) {
        count(SPOOFED_SOURCE, 1);
        return TC_ACT_SHOT;
    }
    __u64 segs = segments(skb, payload);
    // Strip outer IPv4 + UDP behind the Ethernet header; the inner packet then arrives on
    // tun0 as if the userspace tunnel had written it there. FIXED_GSO: a super-packet keeps
    // the segment size it was made with (without it the kernel would grow it by the 28
    // bytes removed, and refuse an inner UDP super-packet outright), as encap keeps it.
    if (bpf_skb_adjust_room(skb, -(__s32)(ohl + sizeof(struct udphdr)), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO) < 0) {
        count(TUN_WRITE_ERROR, segs);
        return TC_ACT_SHOT;
    }
    count(RX_PACKETS, segs);
    count(RX_BYTES, payload);
    if (cfg->direct) {
        long r = deliver(skb, cfg, inner);
        if (r >= 0)
            return r;
    }
    return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
