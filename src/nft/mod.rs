//! nftables over netlink, without `nft` or `iptables`: cnet's NAT table (masquerade, published
//! ports, hairpin, a ClusterIP-style service), created in one atomic batch on a
//! NETLINK_NETFILTER socket in the *current* network namespace, listed, told apart from a
//! user's tables by its comment, and deleted whole. Also a read of conntrack's live
//! translations.
//!
//! Self-contained: std, `anyhow`, `libc` (constants) and `netlink-sys` (the socket); no
//! `unsafe`. Everything is synchronous: a batch is processed by the kernel inside the `send`
//! call, so the acks are already queued when it returns (call from `spawn_blocking` or a
//! thread that has `setns`-ed into the target namespace; the socket stays bound to the
//! namespace it was opened in).
//!
//! ```text
//! let table = nft::cnet_nat_table(&spec);      // the model, with each rule's nft text
//! let mut nft = nft::Nft::open()?;             // socket in the current netns
//! nft.install(&table)?;                        // one batch: [delete old cnet table] + table + chains + rules
//! nft.list_tables()?;                          // -> TableInfo { name, comment, .. is_cnet() }
//! nft.delete_cnet_table(Family::Ip, "cnet")?;  // one DELTABLE, by handle, only if it is cnet's
//! ```

#![forbid(unsafe_code)]
// A protocol library: some of it (other families, hooks, the map encoding) cnet does not use yet.
#![allow(dead_code)]

pub mod expr;
pub mod wire;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, anyhow, bail};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

pub use expr::{CmpOp, Expr, Ipv4Prefix};
use wire::*;

/// The name of cnet's table and the comment that marks a table as cnet's.
pub const CNET_TABLE: &str = "cnet";
pub const CNET_COMMENT: &str = "cnet";
/// Name template of an anonymous map: the kernel replaces `%d` (`__map0`).
pub(crate) const ANON_MAP_NAME: &str = "__map%d";

/// nftables address family (the nfgenmsg family, NFPROTO_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Ip6 = 10,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// Family number to the name `nft` uses.
pub fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        n => format!("family{n}"),
    }
}

/// Netfilter hooks (NF_INET_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// What makes a chain a base chain: type (`nat`, `filter`), hook and priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// An anonymous, constant map created with the rule that looks it up (`map { k : v, ... }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnonMap {
    /// nft datatypes, only for `nft list` to print it (4 integer, 7 ipv4_addr, 13 inet_service;
    /// a concatenation `a . b` is `(a << 6) | b`).
    pub key_type: u32,
    pub key_len: u32,
    pub data_type: u32,
    pub data_len: u32,
    /// nft's set userdata (key/data byte order), copied from what `nft` sends.
    pub udata: Vec<u8>,
    pub elements: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One rule: its expressions, the anonymous maps they look up, and the `nft` text it equals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub maps: Vec<AnonMap>,
    /// The rule as `nft` reads (and, but for spacing, prints) it.
    pub text: String,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(text: impl Into<String>, exprs: Vec<Expr>) -> Rule {
        Rule { exprs, maps: vec![], text: text.into(), comment: None }
    }
    pub fn with_comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
    /// The text with its comment, as `nft list` prints it.
    pub fn full_text(&self) -> String {
        match &self.comment {
            Some(c) => format!("{} comment \"{}\"", self.text, c),
            None => self.text.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// `comment "cnet"`: what marks the table as cnet's (NFTA_TABLE_USERDATA).
    pub comment: Option<String>,
    /// NFT_TABLE_F_OWNER: the table lives only as long as the socket that made it (for tests).
    pub owner: bool,
    pub chains: Vec<Chain>,
}

fn priority_text(hook: Hook, prio: i32) -> String {
    match (hook, prio) {
        (Hook::Prerouting, -100) => "dstnat".into(),
        (Hook::Postrouting, 100) => "srcnat".into(),
        _ => prio.to_string(),
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars().any(|c| "{}!\";*<>|&$()'\\#".contains(c)) { format!("'{}'", s.replace('\'', "'\\''")) } else { s.to_string() }
}

impl Table {
    /// The whole table as an `nft -f` script (also what `nft list table` prints, modulo spacing).
    pub fn nft_script(&self) -> String {
        let mut s = format!("table {} {} {{\n", self.family.name(), self.name);
        if let Some(c) = &self.comment {
            let _ = writeln!(s, "\tcomment \"{c}\"");
        }
        if self.owner {
            let _ = writeln!(s, "\tflags owner");
        }
        for (i, ch) in self.chains.iter().enumerate() {
            if i > 0 || self.comment.is_some() {
                s.push('\n');
            }
            let _ = writeln!(s, "\tchain {} {{", ch.name);
            if let Some(b) = &ch.base {
                let _ = writeln!(
                    s,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    b.chain_type,
                    b.hook.name(),
                    priority_text(b.hook, b.priority)
                );
            }
            for r in &ch.rules {
                let _ = writeln!(s, "\t\t{}", r.full_text());
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }

    /// One `nft` command a step, for cnet to print (shell-quoted where the shell would bite).
    pub fn nft_commands(&self) -> Vec<String> {
        let f = self.family.name();
        let mut v = vec![];
        let mut opts = vec![];
        if let Some(c) = &self.comment {
            opts.push(format!("comment \"{c}\";"));
        }
        if self.owner {
            opts.push("flags owner;".into());
        }
        let t = if opts.is_empty() {
            format!("add table {f} {}", self.name)
        } else {
            format!("add table {f} {} {{ {} }}", self.name, opts.join(" "))
        };
        v.push(format!("nft {}", shell_quote(&t)));
        for ch in &self.chains {
            let c = match &ch.base {
                Some(b) => format!(
                    "add chain {f} {} {} {{ type {} hook {} priority {}; policy accept; }}",
                    self.name,
                    ch.name,
                    b.chain_type,
                    b.hook.name(),
                    priority_text(b.hook, b.priority)
                ),
                None => format!("add chain {f} {} {}", self.name, ch.name),
            };
            v.push(format!("nft {}", shell_quote(&c)));
            for r in &ch.rules {
                v.push(format!("nft {}", shell_quote(&format!("add rule {f} {} {} {}", self.name, ch.name, r.full_text()))));
            }
        }
        v
    }
}

// ------------------------------------------------------------------------------------------
// The rules cnet needs
// ------------------------------------------------------------------------------------------

/// Egress masquerade: `ip saddr PODS ip daddr != X ip daddr != Y [oifname "IF"] masquerade`.
/// Encoded as one cmp per excluded prefix, no set: same effect as `ip daddr != { X, Y }`.
pub fn masquerade_egress(pods: Ipv4Prefix, not_to: &[Ipv4Prefix], oifname: Option<&str>) -> Rule {
    let mut e = expr::ip_addr_match(false, CmpOp::Eq, pods);
    let mut t = format!("ip saddr {pods}");
    for p in not_to {
        e.extend(expr::ip_addr_match(true, CmpOp::Neq, *p));
        let _ = write!(t, " ip daddr != {p}");
    }
    if let Some(i) = oifname {
        e.extend(expr::oifname(i));
        let _ = write!(t, " oifname \"{i}\"");
    }
    e.push(Expr::Masquerade);
    t.push_str(" masquerade");
    Rule::new(t, e)
}

/// Which destination a published port answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOn {
    /// Any of the node's own addresses: `fib daddr type local` (docker's `-p 8080:8000`).
    Local,
    /// One address: `ip daddr ADDR`.
    Addr(Ipv4Addr),
}

/// Published port: `tcp dport PORT fib daddr type local dnat to ADDR:PORT` (or `ip daddr A ...`).
/// Goes in both `prerouting` (from outside) and `output` (from the node itself).
pub fn publish_port(on: PublishOn, port: u16, to: SocketAddrV4) -> Rule {
    let mut e = vec![];
    let mut t = String::new();
    if let PublishOn::Addr(a) = on {
        e.extend(expr::ip_addr_match(true, CmpOp::Eq, Ipv4Prefix::new(a, 32)));
        let _ = write!(t, "ip daddr {a} ");
    }
    e.extend(expr::tcp_dport(port));
    let _ = write!(t, "tcp dport {port} ");
    if on == PublishOn::Local {
        e.extend(expr::fib_daddr_local());
        t.push_str("fib daddr type local ");
    }
    e.extend(expr::dnat_to(*to.ip(), to.port()));
    let _ = write!(t, "dnat to {to}");
    Rule::new(t, e)
}

/// Hairpin: a pod that reaches a backend on its own bridge through a DNAT must be masqueraded,
/// or the backend answers it directly and the pod drops the reply (wrong source).
/// `ip saddr SUBNET ip daddr BACKEND tcp dport PORT ct status dnat masquerade`
pub fn hairpin_masquerade(subnet: Ipv4Prefix, backend: SocketAddrV4) -> Rule {
    let mut e = expr::ip_addr_match(false, CmpOp::Eq, subnet);
    e.extend(expr::ip_addr_match(true, CmpOp::Eq, Ipv4Prefix::new(*backend.ip(), 32)));
    e.extend(expr::tcp_dport(backend.port()));
    e.extend(expr::ct_status_dnat());
    e.push(Expr::Masquerade);
    Rule::new(format!("ip saddr {subnet} ip daddr {} tcp dport {} ct status dnat masquerade", backend.ip(), backend.port()), e)
}

/// `ip saddr PREFIX masquerade` (e.g. 127.0.0.0/8 for `localhost:PORT` to a published port).
pub fn masquerade_from(src: Ipv4Prefix) -> Rule {
    let mut e = expr::ip_addr_match(false, CmpOp::Eq, src);
    e.push(Expr::Masquerade);
    Rule::new(format!("ip saddr {src} masquerade"), e)
}

/// How a service VIP picks one backend per new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceEncoding {
    /// kube-proxy's iptables scheme: rule k (of N) `numgen random mod (N-k) == 0 dnat to B_k`,
    /// the last rule unconditional. Each rule draws its own number, but a rule is only reached
    /// when all before it failed, so P(B_k) = 1/N exactly. No sets: N rules.
    Cascade,
    /// One rule, one draw: `dnat to numgen random mod N map { 0 : A . pa, 1 : B . pb }`
    /// (an anonymous constant map created in the same batch; kube-proxy's nftables mode).
    Map,
}

/// Service VIP: `ip daddr VIP tcp dport PORT` → one of `backends`.
pub fn service(vip: SocketAddrV4, backends: &[SocketAddrV4], enc: ServiceEncoding) -> Vec<Rule> {
    assert!(!backends.is_empty(), "a service needs a backend");
    let mut matchers = expr::ip_addr_match(true, CmpOp::Eq, Ipv4Prefix::new(*vip.ip(), 32));
    matchers.extend(expr::tcp_dport(vip.port()));
    let prefix = format!("ip daddr {} tcp dport {}", vip.ip(), vip.port());
    let n = backends.len();
    if n == 1 {
        let mut e = matchers.clone();
        e.extend(expr::dnat_to(*backends[0].ip(), backends[0].port()));
        return vec![Rule::new(format!("{prefix} dnat to {}", backends[0]), e)];
    }
    match enc {
        ServiceEncoding::Cascade => backends
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let mut e = matchers.clone();
                let mut t = prefix.clone();
                if k + 1 < n {
                    let m = (n - k) as u32;
                    e.push(Expr::NumgenRandom { dreg: expr::REG_1, modulus: m });
                    e.push(Expr::Cmp { sreg: expr::REG_1, op: CmpOp::Eq, data: 0u32.to_ne_bytes().to_vec() });
                    let _ = write!(t, " numgen random mod {m} 0");
                }
                e.extend(expr::dnat_to(*b.ip(), b.port()));
                let _ = write!(t, " dnat to {b}");
                Rule::new(t, e)
            })
            .collect(),
        ServiceEncoding::Map => {
            let mut e = matchers;
            e.push(Expr::NumgenRandom { dreg: expr::REG_1, modulus: n as u32 });
            e.push(Expr::Lookup { sreg: expr::REG_1, dreg: expr::REG_1, set: expr::SetRef { map: 0 } });
            // The map's value `addr . port` fills register 1 as two 4-byte words: the address
            // in NFT_REG32_00 (= reg 1) and the port, padded to 4 bytes, in NFT_REG32_01 (9).
            e.push(Expr::Nat { kind: expr::NatKind::Dnat, addr_reg: expr::REG_1, proto_reg: Some(expr::REG32_01), flags: None });
            let elements = backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut v = b.ip().octets().to_vec();
                    v.extend_from_slice(&b.port().to_be_bytes());
                    v.extend_from_slice(&[0, 0]);
                    ((i as u32).to_ne_bytes().to_vec(), v)
                })
                .collect();
            let map = AnonMap {
                key_type: 4, // integer
                key_len: 4,
                data_type: (7 << 6) | 13, // ipv4_addr . inet_service
                data_len: 8,
                // NFTNL_UDATA_SET_KEYBYTEORDER = host (1), DATABYTEORDER = big endian (0),
                // DATA_INTERVAL = 0: the bytes `nft` sends for this map.
                udata: vec![0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0],
                elements,
            };
            let items: Vec<String> =
                backends.iter().enumerate().map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port())).collect();
            let t = format!("{prefix} dnat to numgen random mod {n} map {{ {} }}", items.join(", "));
            let mut r = Rule::new(t, e);
            r.maps.push(map);
            vec![r]
        }
    }
}

/// What cnet's NAT table holds (stages 5/6 of the proto).
#[derive(Clone, Debug)]
pub struct NatSpec {
    /// Pod CIDR to masquerade out of (172.16.0.0/16).
    pub pods: Ipv4Prefix,
    /// Destinations not masqueraded: the pod CIDR and the node network.
    pub no_masquerade_to: Vec<Ipv4Prefix>,
    pub oifname: Option<String>,
    /// (port on the node, container address:port).
    pub published: Vec<(u16, SocketAddrV4)>,
    pub publish_on: PublishOn,
    /// The bridge subnet, for hairpin masquerade of each DNAT target in it (published ports'
    /// and services' backends).
    pub hairpin_subnet: Option<Ipv4Prefix>,
    /// (VIP:port, backends).
    pub services: Vec<(SocketAddrV4, Vec<SocketAddrV4>)>,
    pub service_encoding: ServiceEncoding,
    /// Masquerade 127.0.0.0/8 sources, so `localhost:PORT` can reach a published port
    /// (needs `route_localnet=1` on the interface towards the backend too).
    pub localhost: bool,
    /// Mark the table with NFT_TABLE_F_OWNER (it then dies with the socket; tests only).
    pub owner: bool,
}

/// cnet's table: nat chains prerouting (dstnat), output (-100), postrouting (srcnat).
pub fn cnet_nat_table(spec: &NatSpec) -> Table {
    let mut dnat = vec![];
    for (port, to) in &spec.published {
        dnat.push(publish_port(spec.publish_on, *port, *to));
    }
    for (vip, backends) in &spec.services {
        dnat.extend(service(*vip, backends, spec.service_encoding));
    }
    let mut snat = vec![];
    if let Some(sub) = spec.hairpin_subnet {
        // Every DNAT target on the bridge: published ports' and services' backends, once each.
        let mut targets: Vec<SocketAddrV4> = vec![];
        let all = spec.published.iter().map(|(_, to)| to).chain(spec.services.iter().flat_map(|(_, b)| b));
        for to in all {
            if sub.contains(*to.ip()) && !targets.contains(to) {
                targets.push(*to);
            }
        }
        for to in targets {
            snat.push(hairpin_masquerade(sub, to));
        }
    }
    snat.push(masquerade_egress(spec.pods, &spec.no_masquerade_to, spec.oifname.as_deref()));
    if spec.localhost {
        snat.push(masquerade_from(Ipv4Prefix::new(Ipv4Addr::new(127, 0, 0, 0), 8)));
    }
    let nat = |hook, priority| Some(BaseChain { chain_type: "nat", hook, priority });
    Table {
        family: Family::Ip,
        name: CNET_TABLE.into(),
        comment: Some(CNET_COMMENT.into()),
        owner: spec.owner,
        chains: vec![
            Chain { name: "prerouting".into(), base: nat(Hook::Prerouting, -100), rules: dnat.clone() },
            Chain { name: "output".into(), base: nat(Hook::Output, -100), rules: dnat },
            Chain { name: "postrouting".into(), base: nat(Hook::Postrouting, 100), rules: snat },
        ],
    }
}

// ------------------------------------------------------------------------------------------
// Batches
// ------------------------------------------------------------------------------------------

struct Op {
    msg: Msg,
    what: String,
}

/// The messages of one transaction (between NFNL_MSG_BATCH_BEGIN and _END): the kernel applies
/// all of them or none.
pub struct Batch {
    ops: Vec<Op>,
    next_set_id: u32,
}

fn nft_type(t: u8) -> u16 {
    ((NFNL_SUBSYS_NFTABLES as u16) << 8) | t as u16
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch { ops: vec![], next_set_id: 1 }
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, t: u8, flags: u16, family: Family, what: String) -> &mut Msg {
        // No NLM_F_ACK here: errors are always reported; commit() asks an ack of the last
        // message only (one ack per message overflowed the receive buffer at 408 messages: ENOBUFS,
        // though the batch had been committed).
        let msg = Msg::new(nft_type(t), NLM_F_REQUEST | flags, 0, family as u8, 0);
        self.ops.push(Op { msg, what });
        &mut self.ops.last_mut().unwrap().msg
    }

    /// NEWTABLE. `exclusive`: fail with EEXIST if it exists (else it is a no-op then).
    pub fn add_table(&mut self, t: &Table, exclusive: bool) {
        let flags = NLM_F_CREATE | if exclusive { NLM_F_EXCL } else { 0 };
        let m = self.push(NFT_MSG_NEWTABLE, flags, t.family, format!("add table {} {}", t.family.name(), t.name));
        m.str(NFTA_TABLE_NAME, &t.name).u32be(NFTA_TABLE_FLAGS, if t.owner { NFT_TABLE_F_OWNER } else { 0 });
        if let Some(c) = &t.comment {
            m.bytes(NFTA_TABLE_USERDATA, &udata_comment(c));
        }
    }

    /// DELTABLE by handle (exactly the table that was listed) — it takes its chains, rules and
    /// sets with it.
    pub fn delete_table_handle(&mut self, family: Family, name: &str, handle: u64) {
        let m = self.push(NFT_MSG_DELTABLE, 0, family, format!("delete table {} {name} (handle {handle})", family.name()));
        m.u64be(NFTA_TABLE_HANDLE, handle);
    }

    pub fn add_chain(&mut self, t: &Table, c: &Chain) {
        let m =
            self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, t.family, format!("add chain {} {} {}", t.family.name(), t.name, c.name));
        m.str(NFTA_CHAIN_TABLE, &t.name).str(NFTA_CHAIN_NAME, &c.name);
        if let Some(b) = &c.base {
            m.str(NFTA_CHAIN_TYPE, b.chain_type).u32be(NFTA_CHAIN_POLICY, NF_ACCEPT);
            let h = m.nest(NFTA_CHAIN_HOOK);
            m.u32be(NFTA_HOOK_HOOKNUM, b.hook as u32).u32be(NFTA_HOOK_PRIORITY, b.priority as u32);
            m.end(h);
        }
    }

    /// NEWSET + NEWSETELEM for each of the rule's anonymous maps, then NEWRULE (appended).
    pub fn add_rule(&mut self, t: &Table, chain: &str, r: &Rule) {
        let mut set_ids = vec![];
        for map in &r.maps {
            let id = self.next_set_id;
            self.next_set_id += 1;
            set_ids.push(id);
            let what = format!("add anonymous map for rule in {}: {}", chain, r.text);
            let m = self.push(NFT_MSG_NEWSET, NLM_F_CREATE, t.family, what.clone());
            m.str(NFTA_SET_TABLE, &t.name)
                .str(NFTA_SET_NAME, ANON_MAP_NAME)
                .u32be(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP)
                .u32be(NFTA_SET_KEY_TYPE, map.key_type)
                .u32be(NFTA_SET_KEY_LEN, map.key_len)
                .u32be(NFTA_SET_DATA_TYPE, map.data_type)
                .u32be(NFTA_SET_DATA_LEN, map.data_len)
                .u32be(NFTA_SET_ID, id);
            let d = m.nest(NFTA_SET_DESC);
            m.u32be(NFTA_SET_DESC_SIZE, map.elements.len() as u32);
            m.end(d);
            m.bytes(NFTA_SET_USERDATA, &map.udata);
            let m = self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, t.family, format!("add elements: {what}"));
            m.str(NFTA_SET_ELEM_LIST_TABLE, &t.name)
                .str(NFTA_SET_ELEM_LIST_SET, ANON_MAP_NAME)
                .u32be(NFTA_SET_ELEM_LIST_SET_ID, id);
            let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for (k, v) in &map.elements {
                let e = m.nest(NFTA_LIST_ELEM);
                m.data_value(NFTA_SET_ELEM_KEY, k).data_value(NFTA_SET_ELEM_DATA, v);
                m.end(e);
            }
            m.end(list);
        }
        let what = format!("add rule {} {} {} {}", t.family.name(), t.name, chain, r.full_text());
        let m = self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, t.family, what);
        m.str(NFTA_RULE_TABLE, &t.name).str(NFTA_RULE_CHAIN, chain);
        let list = m.nest(NFTA_RULE_EXPRESSIONS);
        for e in &r.exprs {
            e.encode(m, &set_ids);
        }
        m.end(list);
        if let Some(c) = &r.comment {
            m.bytes(NFTA_RULE_USERDATA, &udata_comment(c));
        }
    }

    /// Table, chains, rules, in order.
    pub fn add_table_contents(&mut self, t: &Table) {
        for c in &t.chains {
            self.add_chain(t, c);
        }
        for c in &t.chains {
            for r in &c.rules {
                self.add_rule(t, &c.name, r);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The socket
// ------------------------------------------------------------------------------------------

/// A table as listed by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub family: u8,
    pub name: String,
    pub handle: u64,
    pub flags: u32,
    /// Port id of the owning socket (NFT_TABLE_F_OWNER tables only).
    pub owner: Option<u32>,
    pub comment: Option<String>,
    pub userdata: Option<Vec<u8>>,
}

impl TableInfo {
    /// Made by cnet: its comment is [`CNET_COMMENT`].
    pub fn is_cnet(&self) -> bool {
        self.comment.as_deref() == Some(CNET_COMMENT)
    }
}

/// A rule as dumped by the kernel (for checks: the raw NFTA_RULE_EXPRESSIONS).
#[derive(Clone, Debug)]
pub struct RuleInfo {
    pub chain: String,
    pub handle: u64,
    pub expr_names: Vec<String>,
    pub expressions: Vec<u8>,
}

/// One conntrack entry: the original and reply tuples. A NAT shows as a reply tuple that is
/// not the original turned round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    pub proto: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
    pub timeout: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;

impl Conntrack {
    pub fn is_dnat(&self) -> bool {
        self.status & IPS_DST_NAT != 0
    }
    pub fn is_snat(&self) -> bool {
        self.status & IPS_SRC_NAT != 0
    }
}

impl std::fmt::Display for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            n => n.to_string(),
        };
        let (o, r) = (self.orig, self.reply);
        write!(
            f,
            "{p:<4} src={} dst={} sport={} dport={} src={} dst={} sport={} dport={}{}{}",
            o.src,
            o.dst,
            o.sport,
            o.dport,
            r.src,
            r.dst,
            r.sport,
            r.dport,
            if self.is_dnat() { " [dnat]" } else { "" },
            if self.is_snat() { " [snat]" } else { "" }
        )
    }
}

/// The table exists but is not cnet's: it is left alone.
#[derive(Debug)]
pub struct NotCnets(pub String);

impl std::fmt::Display for NotCnets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} exists and is not cnet's (no comment \"{CNET_COMMENT}\"): left as it is", self.0)
    }
}

impl std::error::Error for NotCnets {}

/// What [`Nft::install`] did.
#[derive(Clone, Debug)]
pub struct Installed {
    pub replaced: bool,
    pub messages: usize,
    pub bytes: usize,
}

/// A NETLINK_NETFILTER socket in the namespace it was opened in.
pub struct Nft {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

const NLM_F_DUMP_INTR: u16 = 0x10;

impl Nft {
    pub fn open() -> Result<Nft> {
        let mut sock = Socket::new(NETLINK_NETFILTER).context("opening a NETLINK_NETFILTER socket")?;
        sock.bind_auto().context("binding the netfilter socket")?;
        // Errors carry only the failing message's header (not the whole batch) and, where the
        // kernel gives one, its reason as text.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        Ok(Nft { sock, seq: seed, buf: Vec::with_capacity(1 << 16) })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one transaction. The kernel handles the batch inside `send`, so every answer is
    /// queued when it returns: read them without blocking. An error is reported for each
    /// failing message (and the whole batch is then undone); the last message carries
    /// NLM_F_ACK, so success is "no error, and the last message acked".
    pub fn commit(&mut self, batch: Batch) -> Result<usize> {
        let total = batch.ops.len();
        if total == 0 {
            return Ok(0);
        }
        let mut out = Vec::new();
        let begin = self.next_seq();
        out.extend(Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES as u16).finish());
        let mut what: HashMap<u32, String> = HashMap::new();
        let mut last = 0;
        for (i, op) in batch.ops.into_iter().enumerate() {
            last = self.next_seq();
            let mut m = op.msg;
            m.buf[8..12].copy_from_slice(&last.to_ne_bytes());
            if i + 1 == total {
                let f = u16::from_ne_bytes([m.buf[6], m.buf[7]]) | NLM_F_ACK;
                m.buf[6..8].copy_from_slice(&f.to_ne_bytes());
            }
            out.extend(m.finish());
            what.insert(last, op.what);
        }
        let end = self.next_seq();
        out.extend(Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES as u16).finish());
        self.fit_send_buffer(out.len())?;
        let n = self.sock.send(&out, 0).context("sending the nftables batch")?;
        if n != out.len() {
            bail!("short send of the nftables batch ({n} of {} bytes)", out.len());
        }
        let mut acked = false;
        let mut first_err: Option<anyhow::Error> = None;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading the nftables acks"),
            }
            for m in messages(&self.buf) {
                let m = m.map_err(|e| anyhow!(e))?;
                if m.msg_type != NLMSG_ERROR {
                    continue;
                }
                let (errno, ext) = parse_ack(&m);
                if m.seq == last && errno == 0 {
                    acked = true;
                }
                if errno != 0 && first_err.is_none() {
                    let what = if m.seq == begin || m.seq == end {
                        "the batch".to_string()
                    } else {
                        what.get(&m.seq).cloned().unwrap_or_else(|| format!("message {}", m.seq))
                    };
                    let ext = ext.map(|s| format!(" ({s})")).unwrap_or_default();
                    let io = std::io::Error::from_raw_os_error(errno);
                    first_err = Some(anyhow::Error::new(io).context(format!("nftables: {what}{ext}")));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if !acked {
            bail!("nftables: the kernel did not acknowledge the batch");
        }
        Ok(total)
    }

    /// A batch must go in one datagram, and netlink refuses one larger than the socket's
    /// send buffer (EMSGSIZE; 212992 bytes by default, ~700 rules). Grow it: SO_SNDBUFFORCE
    /// (CAP_NET_ADMIN) passes net.core.wmem_max, plain SO_SNDBUF is capped by it.
    fn fit_send_buffer(&self, len: usize) -> Result<()> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let have = getsockopt(&self.sock, sockopt::SndBuf).unwrap_or(0);
        if len + 64 <= have {
            return Ok(());
        }
        let want = len + 4096;
        if setsockopt(&self.sock, sockopt::SndBufForce, &want).is_err() {
            setsockopt(&self.sock, sockopt::SndBuf, &want).context("growing the netlink send buffer")?;
        }
        Ok(())
    }

    /// A dump request; returns each answer's payload (after the nlmsghdr).
    fn dump(&mut self, msg_type: u16, family: u8, attrs: impl Fn(&mut Msg)) -> Result<Vec<Vec<u8>>> {
        'retry: for _ in 0..5 {
            let seq = self.next_seq();
            let mut m = Msg::new(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0);
            attrs(&mut m);
            self.sock.send(&m.finish(), 0).context("sending a netfilter dump request")?;
            let mut out = vec![];
            let mut interrupted = false;
            loop {
                let (buf, _) = self.sock.recv_from_full().context("reading a netfilter dump")?;
                for m in messages(&buf) {
                    let m = m.map_err(|e| anyhow!(e))?;
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.msg_type {
                        NLMSG_DONE => {
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(out);
                        }
                        NLMSG_ERROR => {
                            let (errno, ext) = parse_ack(&m);
                            if errno == 0 {
                                return Ok(out);
                            }
                            let e = anyhow::Error::new(std::io::Error::from_raw_os_error(errno));
                            return Err(
                                e.context(format!("netfilter dump{}", ext.map(|s| format!(" ({s})")).unwrap_or_default()))
                            );
                        }
                        _ => out.push(m.payload.to_vec()),
                    }
                }
            }
        }
        bail!("the ruleset kept changing during the dump")
    }

    /// Every nftables table of this namespace, all families.
    pub fn list_tables(&mut self) -> Result<Vec<TableInfo>> {
        let msgs = self.dump(nft_type(NFT_MSG_GETTABLE), 0, |_| {})?;
        let mut v = vec![];
        for p in msgs {
            if p.len() < 4 {
                continue;
            }
            let a = &p[4..];
            let userdata = attr(a, NFTA_TABLE_USERDATA).map(|u| u.to_vec());
            v.push(TableInfo {
                family: p[0],
                name: attr_str(a, NFTA_TABLE_NAME).unwrap_or_default(),
                handle: attr(a, NFTA_TABLE_HANDLE).and_then(be64).unwrap_or(0),
                flags: attr(a, NFTA_TABLE_FLAGS).and_then(be32).unwrap_or(0),
                owner: attr(a, NFTA_TABLE_OWNER).and_then(be32),
                comment: userdata.as_deref().and_then(udata_find_comment),
                userdata,
            });
        }
        Ok(v)
    }

    pub fn find_table(&mut self, family: Family, name: &str) -> Result<Option<TableInfo>> {
        Ok(self.list_tables()?.into_iter().find(|t| t.family == family as u8 && t.name == name))
    }

    /// Create `table` in one transaction. A cnet table of that name is replaced in the same
    /// transaction (deleted by the handle just listed); anyone else's is an error ([`NotCnets`]).
    pub fn install(&mut self, table: &Table) -> Result<Installed> {
        let mut b = Batch::new();
        let old = self.find_table(table.family, &table.name)?;
        if let Some(old) = &old {
            if !old.is_cnet() {
                return Err(NotCnets(format!("{} {}", table.family.name(), table.name)).into());
            }
            b.delete_table_handle(table.family, &table.name, old.handle);
        }
        // Exclusive: if someone created it since the listing, fail rather than merge.
        b.add_table(table, true);
        b.add_table_contents(table);
        let bytes = b.ops.iter().map(|o| o.msg.buf.len()).sum::<usize>() + 40;
        let messages = self.commit(b)?;
        Ok(Installed { replaced: old.is_some(), messages, bytes })
    }

    /// Delete the table if it is cnet's: Ok(true) deleted, Ok(false) there was none,
    /// Err([`NotCnets`]) it is someone else's (untouched).
    pub fn delete_cnet_table(&mut self, family: Family, name: &str) -> Result<bool> {
        let Some(t) = self.find_table(family, name)? else { return Ok(false) };
        if !t.is_cnet() {
            return Err(NotCnets(format!("{} {name}", family.name())).into());
        }
        let mut b = Batch::new();
        b.delete_table_handle(family, name, t.handle);
        self.commit(b)?;
        Ok(true)
    }

    /// The rules of one table, in chain order as the kernel keeps them.
    pub fn list_rules(&mut self, family: Family, table: &str) -> Result<Vec<RuleInfo>> {
        let msgs = self.dump(nft_type(NFT_MSG_GETRULE), family as u8, |m| {
            m.str(NFTA_RULE_TABLE, table);
        })?;
        let mut v = vec![];
        for p in msgs {
            if p.len() < 4 || p[0] != family as u8 {
                continue;
            }
            let a = &p[4..];
            if attr_str(a, NFTA_RULE_TABLE).as_deref() != Some(table) {
                continue;
            }
            let exprs = attr(a, NFTA_RULE_EXPRESSIONS).unwrap_or(&[]).to_vec();
            let expr_names = attrs(&exprs).filter_map(|(_, e)| attr_str(e, NFTA_EXPR_NAME)).collect();
            v.push(RuleInfo {
                chain: attr_str(a, NFTA_RULE_CHAIN).unwrap_or_default(),
                handle: attr(a, NFTA_RULE_HANDLE).and_then(be64).unwrap_or(0),
                expr_names,
                expressions: exprs,
            });
        }
        Ok(v)
    }

    /// Conntrack's IPv4 entries (ctnetlink IPCTNL_MSG_CT_GET dump).
    pub fn conntrack(&mut self) -> Result<Vec<Conntrack>> {
        let t = ((NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_GET as u16;
        let msgs = self.dump(t, libc::AF_INET as u8, |_| {})?;
        Ok(msgs.iter().filter_map(|p| parse_conntrack(p.get(4..)?)).collect())
    }
}

fn parse_tuple(b: &[u8]) -> Option<(u8, Tuple)> {
    let ip = attr(b, CTA_TUPLE_IP)?;
    let proto = attr(b, CTA_TUPLE_PROTO)?;
    let v4 = |k| attr(ip, k).and_then(|v| Some(Ipv4Addr::from(<[u8; 4]>::try_from(v.get(..4)?).ok()?)));
    Some((
        *attr(proto, CTA_PROTO_NUM)?.first()?,
        Tuple {
            src: v4(CTA_IP_V4_SRC)?,
            dst: v4(CTA_IP_V4_DST)?,
            sport: attr(proto, CTA_PROTO_SRC_PORT).and_then(be16).unwrap_or(0),
            dport: attr(proto, CTA_PROTO_DST_PORT).and_then(be16).unwrap_or(0),
        },
    ))
}

fn parse_conntrack(a: &[u8]) -> Option<Conntrack> {
    let (proto, orig) = parse_tuple(attr(a, CTA_TUPLE_ORIG)?)?;
    let (_, reply) = parse_tuple(attr(a, CTA_TUPLE_REPLY)?)?;
    Some(Conntrack {
        proto,
        orig,
        reply,
        status: attr(a, CTA_STATUS).and_then(be32).unwrap_or(0),
        timeout: attr(a, CTA_TIMEOUT).and_then(be32),
    })
}

/// (errno, extended-ack text) of an NLMSG_ERROR message; errno 0 is a plain ack.
fn parse_ack(m: &NlMsg) -> (i32, Option<String>) {
    let p = m.payload;
    let Some(e) = p.get(..4) else { return (libc::EPROTO, None) };
    let errno = -i32::from_ne_bytes(e.try_into().unwrap());
    let mut ext = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request: its header only if capped, else the whole message.
        let orig_len = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            p.get(4..8).map(|l| u32::from_ne_bytes(l.try_into().unwrap()) as usize).unwrap_or(NLMSG_HDRLEN)
        };
        if let Some(tlvs) = p.get(4 + ((orig_len + 3) & !3)..) {
            let msg = attr_str(tlvs, NLMSGERR_ATTR_MSG);
            let offs = attr(tlvs, NLMSGERR_ATTR_OFFS).and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
            ext = match (msg, offs) {
                (Some(s), Some(o)) => Some(format!("{s}, at byte {o}")),
                (Some(s), None) => Some(s),
                (None, Some(o)) => Some(format!("bad attribute at byte {o} of the message")),
                (None, None) => None,
            };
        }
    }
    (errno, ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(enc: ServiceEncoding) -> NatSpec {
        let sa = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        NatSpec {
            pods: "172.16.0.0/16".parse().unwrap(),
            no_masquerade_to: vec!["172.16.0.0/16".parse().unwrap(), "10.0.0.0/24".parse().unwrap()],
            oifname: None,
            published: vec![(8080, sa("172.16.0.2:8000"))],
            publish_on: PublishOn::Local,
            hairpin_subnet: Some("172.16.0.0/24".parse().unwrap()),
            services: vec![(sa("10.96.0.10:80"), vec![sa("172.16.0.2:8000"), sa("172.16.0.3:8000")])],
            service_encoding: enc,
            localhost: false,
            owner: false,
        }
    }

    #[test]
    fn rule_texts() {
        let t = cnet_nat_table(&spec(ServiceEncoding::Cascade));
        let texts: Vec<_> = t.chains.iter().flat_map(|c| c.rules.iter().map(|r| r.text.clone())).collect();
        assert_eq!(
            texts,
            [
                "tcp dport 8080 fib daddr type local dnat to 172.16.0.2:8000",
                "ip daddr 10.96.0.10 tcp dport 80 numgen random mod 2 0 dnat to 172.16.0.2:8000",
                "ip daddr 10.96.0.10 tcp dport 80 dnat to 172.16.0.3:8000",
                "tcp dport 8080 fib daddr type local dnat to 172.16.0.2:8000",
                "ip daddr 10.96.0.10 tcp dport 80 numgen random mod 2 0 dnat to 172.16.0.2:8000",
                "ip daddr 10.96.0.10 tcp dport 80 dnat to 172.16.0.3:8000",
                "ip saddr 172.16.0.0/24 ip daddr 172.16.0.2 tcp dport 8000 ct status dnat masquerade",
                "ip saddr 172.16.0.0/24 ip daddr 172.16.0.3 tcp dport 8000 ct status dnat masquerade",
                "ip saddr 172.16.0.0/16 ip daddr != 172.16.0.0/16 ip daddr != 10.0.0.0/24 masquerade",
            ]
        );
        let cmds = t.nft_commands();
        assert_eq!(cmds[0], "nft 'add table ip cnet { comment \"cnet\"; }'");
        assert_eq!(cmds[1], "nft 'add chain ip cnet prerouting { type nat hook prerouting priority dstnat; policy accept; }'");
        assert!(cmds.contains(&"nft 'add rule ip cnet postrouting ip saddr 172.16.0.0/16 ip daddr != 172.16.0.0/16 ip daddr != 10.0.0.0/24 masquerade'".to_string()));
    }

    #[test]
    fn cascade_probabilities_are_uniform() {
        // rule k draws mod (N-k) and wins on 0: P(k) = prod_{j<k} (1 - 1/(N-j)) * 1/(N-k) = 1/N
        for n in 2..8usize {
            let mut reach = 1.0f64;
            for k in 0..n {
                let p = if k + 1 < n { reach / (n - k) as f64 } else { reach };
                assert!((p - 1.0 / n as f64).abs() < 1e-12, "n={n} k={k} p={p}");
                reach -= p;
            }
        }
        let sa = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let rules = service(sa("10.96.0.10:80"), &[sa("1.1.1.1:1"), sa("2.2.2.2:2"), sa("3.3.3.3:3")], ServiceEncoding::Cascade);
        assert_eq!(rules.len(), 3);
        assert!(rules[0].text.contains("mod 3 0"));
        assert!(rules[1].text.contains("mod 2 0"));
        assert!(!rules[2].text.contains("numgen"));
    }

    #[test]
    fn map_service_is_one_rule_with_a_map() {
        let t = cnet_nat_table(&spec(ServiceEncoding::Map));
        let r = &t.chains[1].rules[1];
        assert_eq!(t.chains[2].rules.len(), 3); // two hairpins + egress
        assert_eq!(
            r.text,
            "ip daddr 10.96.0.10 tcp dport 80 dnat to numgen random mod 2 map { 0 : 172.16.0.2 . 8000, 1 : 172.16.0.3 . 8000 }"
        );
        assert_eq!(r.maps[0].elements[1], (1u32.to_ne_bytes().to_vec(), vec![172, 16, 0, 3, 0x1f, 0x40, 0, 0]));
    }

    /// The NEWSETELEM message is byte-for-byte what nft 1.0.6 sends for the same map
    /// (captured with `strace -e sendmsg -xx nft -f`, table `t`).
    #[test]
    fn map_elements_match_nft() {
        let sa = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let rules = service(sa("10.96.0.10:80"), &[sa("172.16.0.2:8000"), sa("172.16.0.3:8000")], ServiceEncoding::Map);
        let t = Table { family: Family::Ip, name: "t".into(), comment: None, owner: false, chains: vec![] };
        let mut b = Batch::new();
        b.add_rule(&t, "output", &rules[0]);
        let elem = &b.ops[1].msg.buf[20..];
        let nft: &[u8] = b"\x06\x00\x01\x00\x74\x00\x00\x00\x0c\x00\x02\x00\x5f\x5f\x6d\x61\x70\x25\x64\x00\x08\x00\x04\x00\x00\x00\x00\x01\x44\x00\x03\x80\x20\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x00\x00\x00\x00\x10\x00\x02\x80\x0c\x00\x01\x00\xac\x10\x00\x02\x1f\x40\x00\x00\x20\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x01\x00\x00\x00\x10\x00\x02\x80\x0c\x00\x01\x00\xac\x10\x00\x03\x1f\x40\x00\x00";
        // nft sends the list-element nests with NLA_F_NESTED too; the only difference allowed is none.
        assert_eq!(elem, nft);
    }

    #[test]
    fn script_has_every_rule_once_per_chain() {
        let t = cnet_nat_table(&spec(ServiceEncoding::Cascade));
        let s = t.nft_script();
        assert!(s.starts_with("table ip cnet {\n\tcomment \"cnet\"\n"));
        assert!(s.contains("type nat hook output priority -100; policy accept;"));
        assert_eq!(s.matches("fib daddr type local").count(), 2);
    }
}
