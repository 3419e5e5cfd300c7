//! nftables expressions: the kernel's virtual-machine instructions that a rule is made of, and
//! their netlink encoding (`NFTA_EXPR_NAME` + `NFTA_EXPR_DATA`). Only what cnet's NAT rules
//! need. `nft --debug=netlink` prints the same instructions for a rule written as text.
//!
//! Registers: 1..=4 are the 16-byte registers NFT_REG_1..4; 8..=23 the 4-byte NFT_REG32_00..15
//! (9 = NFT_REG32_01 overlaps bytes 4..8 of register 1). `nft` uses the same numbers.

use std::net::Ipv4Addr;

use super::wire::Msg;

pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
pub const REG32_01: u32 = 9;

/// Where a payload load reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `meta` keys (NFT_META_*) used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    OifName = 7,
    L4Proto = 16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

/// A reference from a `lookup` to a set created in the same batch (an anonymous map).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRef {
    /// Index into the rule's `maps`; the batch gives it a set id (NFTA_SET_ID).
    pub map: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `[ payload load LENb @ BASE header + OFFSET => reg DREG ]`
    Payload { base: Base, offset: u32, len: u32, dreg: u32 },
    /// `[ cmp OP reg SREG DATA ]`
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `[ bitwise reg DREG = ( reg SREG & MASK ) ^ XOR ]`
    Bitwise { sreg: u32, dreg: u32, mask: Vec<u8>, xor: Vec<u8> },
    /// `[ meta load KEY => reg DREG ]`
    Meta { key: MetaKey, dreg: u32 },
    /// `[ ct load status => reg DREG ]` (NFT_CT_STATUS)
    CtStatus { dreg: u32 },
    /// `[ fib daddr type => reg DREG ]` (NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR)
    FibDaddrType { dreg: u32 },
    /// `[ numgen reg DREG = random mod MODULUS ]`
    NumgenRandom { dreg: u32, modulus: u32 },
    /// `[ immediate reg DREG DATA ]`
    Immediate { dreg: u32, data: Vec<u8> },
    /// `[ lookup reg SREG set __map%d dreg DREG ]`
    Lookup { sreg: u32, dreg: u32, set: SetRef },
    /// `[ nat dnat ip addr_min reg A proto_min reg P flags F ]`
    Nat { kind: NatKind, addr_reg: u32, proto_reg: Option<u32>, flags: Option<u32> },
    /// `[ masq ]`
    Masquerade,
}

// NFTA_* of each expression (nf_tables.h)
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATUS: u32 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFPROTO_IPV4: u32 = 2;

/// NF_NAT_RANGE_PROTO_SPECIFIED, which `nft` sets on `dnat to ADDR:PORT`.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
/// IPS_DST_NAT (`ct status dnat`), in the kernel's (host) byte order.
pub const IPS_DST_NAT: u32 = 1 << 5;
/// RTN_LOCAL (`fib daddr type local`), host byte order.
pub const RTN_LOCAL: u32 = 2;
pub const IPPROTO_TCP: u8 = 6;

impl Expr {
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Meta { .. } => "meta",
            Expr::CtStatus { .. } => "ct",
            Expr::FibDaddrType { .. } => "fib",
            Expr::NumgenRandom { .. } => "numgen",
            Expr::Immediate { .. } => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade => "masq",
        }
    }

    /// Append `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA {..} }`. `set_ids[i]` is the
    /// batch's id of the rule's i-th anonymous map.
    pub(crate) fn encode(&self, m: &mut Msg, set_ids: &[u32]) {
        let elem = m.nest(super::wire::NFTA_LIST_ELEM);
        m.str(super::wire::NFTA_EXPR_NAME, self.name());
        let data = m.nest(super::wire::NFTA_EXPR_DATA);
        match self {
            Expr::Payload { base, offset, len, dreg } => {
                m.u32be(NFTA_PAYLOAD_DREG, *dreg)
                    .u32be(NFTA_PAYLOAD_BASE, *base as u32)
                    .u32be(NFTA_PAYLOAD_OFFSET, *offset)
                    .u32be(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                m.u32be(NFTA_CMP_SREG, *sreg).u32be(NFTA_CMP_OP, *op as u32).data_value(NFTA_CMP_DATA, data);
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                m.u32be(NFTA_BITWISE_SREG, *sreg)
                    .u32be(NFTA_BITWISE_DREG, *dreg)
                    .u32be(NFTA_BITWISE_LEN, mask.len() as u32)
                    .data_value(NFTA_BITWISE_MASK, mask)
                    .data_value(NFTA_BITWISE_XOR, xor);
            }
            Expr::Meta { key, dreg } => {
                m.u32be(NFTA_META_KEY, *key as u32).u32be(NFTA_META_DREG, *dreg);
            }
            Expr::CtStatus { dreg } => {
                m.u32be(NFTA_CT_KEY, NFT_CT_STATUS).u32be(NFTA_CT_DREG, *dreg);
            }
            Expr::FibDaddrType { dreg } => {
                m.u32be(NFTA_FIB_DREG, *dreg)
                    .u32be(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                    .u32be(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            }
            Expr::NumgenRandom { dreg, modulus } => {
                m.u32be(NFTA_NG_DREG, *dreg)
                    .u32be(NFTA_NG_MODULUS, *modulus)
                    .u32be(NFTA_NG_TYPE, NFT_NG_RANDOM)
                    .u32be(NFTA_NG_OFFSET, 0);
            }
            Expr::Immediate { dreg, data } => {
                m.u32be(NFTA_IMMEDIATE_DREG, *dreg).data_value(NFTA_IMMEDIATE_DATA, data);
            }
            Expr::Lookup { sreg, dreg, set } => {
                // The name is a template the kernel renames ("__map0"); the id finds the set
                // created earlier in the same batch.
                m.str(NFTA_LOOKUP_SET, super::ANON_MAP_NAME)
                    .u32be(NFTA_LOOKUP_SET_ID, set_ids[set.map])
                    .u32be(NFTA_LOOKUP_SREG, *sreg)
                    .u32be(NFTA_LOOKUP_DREG, *dreg);
            }
            Expr::Nat { kind, addr_reg, proto_reg, flags } => {
                m.u32be(NFTA_NAT_TYPE, *kind as u32).u32be(NFTA_NAT_FAMILY, NFPROTO_IPV4).u32be(NFTA_NAT_REG_ADDR_MIN, *addr_reg);
                if let Some(p) = proto_reg {
                    m.u32be(NFTA_NAT_REG_PROTO_MIN, *p);
                }
                if let Some(f) = flags {
                    m.u32be(NFTA_NAT_FLAGS, *f);
                }
            }
            Expr::Masquerade => {}
        }
        m.end(data);
        m.end(elem);
    }
}

/// An IPv4 prefix (`172.16.0.0/16`). Kept here so the module needs nothing from cnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Prefix {
    pub fn new(addr: Ipv4Addr, len: u8) -> Ipv4Prefix {
        assert!(len <= 32, "prefix length {len} > 32");
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ipv4Prefix { addr: Ipv4Addr::from(u32::from(addr) & mask), len }
    }
}

impl Ipv4Prefix {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) };
        u32::from(a) & mask == u32::from(self.addr)
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s}: {e}"))?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("{s}: bad prefix length"))?;
        Ok(Ipv4Prefix::new(addr, len))
    }
}

/// `ip saddr|daddr [!=] PREFIX` as `nft` compiles it: a whole-byte prefix loads only its bytes
/// (`/16` → 2 bytes, `/32` → 4) and compares; any other length loads 4 bytes, masks, compares.
pub fn ip_addr_match(dst: bool, op: CmpOp, p: Ipv4Prefix) -> Vec<Expr> {
    let offset = if dst { 16 } else { 12 };
    let octets = p.addr.octets();
    if p.len.is_multiple_of(8) {
        let n = (p.len / 8) as usize;
        if n == 0 {
            return vec![]; // 0.0.0.0/0 matches everything
        }
        vec![
            Expr::Payload { base: Base::Network, offset, len: n as u32, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op, data: octets[..n].to_vec() },
        ]
    } else {
        let mask = (u32::MAX << (32 - p.len)).to_be_bytes();
        vec![
            Expr::Payload { base: Base::Network, offset, len: 4, dreg: REG_1 },
            Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: mask.to_vec(), xor: vec![0; 4] },
            Expr::Cmp { sreg: REG_1, op, data: octets.to_vec() },
        ]
    }
}

/// `tcp dport PORT`: `meta l4proto tcp` then the 2 bytes at transport offset 2.
pub fn tcp_dport(port: u16) -> Vec<Expr> {
    vec![
        Expr::Meta { key: MetaKey::L4Proto, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![IPPROTO_TCP] },
        Expr::Payload { base: Base::Transport, offset: 2, len: 2, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: port.to_be_bytes().to_vec() },
    ]
}

/// `oifname "NAME"`: the name is compared as a full IFNAMSIZ (16-byte) buffer.
pub fn oifname(name: &str) -> Vec<Expr> {
    assert!(name.len() < 16, "interface name too long: {name}");
    let mut data = name.as_bytes().to_vec();
    data.resize(16, 0);
    vec![Expr::Meta { key: MetaKey::OifName, dreg: REG_1 }, Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data }]
}

/// `fib daddr type local`
pub fn fib_daddr_local() -> Vec<Expr> {
    vec![Expr::FibDaddrType { dreg: REG_1 }, Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: RTN_LOCAL.to_ne_bytes().to_vec() }]
}

/// `ct status dnat`
pub fn ct_status_dnat() -> Vec<Expr> {
    vec![
        Expr::CtStatus { dreg: REG_1 },
        Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: IPS_DST_NAT.to_ne_bytes().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: vec![0; 4] },
    ]
}

/// `dnat to ADDR:PORT`
pub fn dnat_to(addr: Ipv4Addr, port: u16) -> Vec<Expr> {
    vec![
        Expr::Immediate { dreg: REG_1, data: addr.octets().to_vec() },
        Expr::Immediate { dreg: REG_2, data: port.to_be_bytes().to_vec() },
        Expr::Nat { kind: NatKind::Dnat, addr_reg: REG_1, proto_reg: Some(REG_2), flags: Some(NF_NAT_RANGE_PROTO_SPECIFIED) },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parse_and_normalise() {
        let p: Ipv4Prefix = "172.16.5.9/16".parse().unwrap();
        assert_eq!(p.to_string(), "172.16.0.0/16");
        assert!("1.2.3.4/33".parse::<Ipv4Prefix>().is_err());
        assert_eq!("10.0.0.1".parse::<Ipv4Prefix>().unwrap().len, 32);
        assert!(p.contains(Ipv4Addr::new(172, 16, 255, 1)) && !p.contains(Ipv4Addr::new(172, 17, 0, 1)));
    }

    #[test]
    fn byte_aligned_prefix_loads_only_its_bytes() {
        let e = ip_addr_match(true, CmpOp::Neq, "10.0.0.0/24".parse().unwrap());
        assert_eq!(e[0], Expr::Payload { base: Base::Network, offset: 16, len: 3, dreg: 1 });
        assert_eq!(e[1], Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: vec![10, 0, 0] });
    }

    #[test]
    fn odd_prefix_uses_a_mask() {
        let e = ip_addr_match(false, CmpOp::Eq, "10.96.0.0/12".parse().unwrap());
        assert_eq!(e.len(), 3);
        assert_eq!(e[1], Expr::Bitwise { sreg: 1, dreg: 1, mask: vec![255, 240, 0, 0], xor: vec![0; 4] });
        assert_eq!(e[2], Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![10, 96, 0, 0] });
    }

    #[test]
    fn port_is_big_endian() {
        let e = tcp_dport(8080);
        assert_eq!(e[3], Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![0x1f, 0x90] });
    }

    #[test]
    fn encoding_of_masq_is_an_empty_data_nest() {
        let mut m = Msg::new(0, 0, 0, 0, 0);
        Expr::Masquerade.encode(&mut m, &[]);
        let b = m.finish();
        // LIST_ELEM(4) + NAME "masq\0" (4+5 -> 12) + DATA (4, empty)
        assert_eq!(b.len() - 20, 4 + 12 + 4);
    }
}
