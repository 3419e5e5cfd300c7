//! Netlink framing for nfnetlink: message headers, attribute (NLA) writing and reading, and the
//! constants of `include/uapi/linux/netfilter/nf_tables.h`, `nfnetlink.h` and
//! `nfnetlink_conntrack.h` that the module uses. Integers inside nftables attributes are big
//! endian (`__be32`); the data that expressions compare (`NFTA_DATA_VALUE`) is raw bytes in the
//! packet's or the kernel's own order — see `expr.rs`.

// ---- netlink (linux/netlink.h) ----
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x100 | 0x200; // ROOT | MATCH
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_CAPPED: u16 = 0x100; // in an ack
pub const NLM_F_ACK_TLVS: u16 = 0x200; // in an ack
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

// ---- nfnetlink.h ----
pub const NFNETLINK_V0: u8 = 0;
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub const NFNL_MSG_BATCH_END: u16 = 17;

// ---- nf_tables.h: messages ----
pub const NFT_MSG_NEWTABLE: u8 = 0;
pub const NFT_MSG_GETTABLE: u8 = 1;
pub const NFT_MSG_DELTABLE: u8 = 2;
pub const NFT_MSG_NEWCHAIN: u8 = 3;
pub const NFT_MSG_NEWRULE: u8 = 6;
pub const NFT_MSG_GETRULE: u8 = 7;
pub const NFT_MSG_NEWSET: u8 = 9;
pub const NFT_MSG_NEWSETELEM: u8 = 12;

// tables
pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFTA_TABLE_USE: u16 = 3;
pub const NFTA_TABLE_HANDLE: u16 = 4;
pub const NFTA_TABLE_USERDATA: u16 = 6;
pub const NFTA_TABLE_OWNER: u16 = 7;
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

// chains
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NF_ACCEPT: u32 = 1;

// rules
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_HANDLE: u16 = 3;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;

// sets (anonymous maps)
pub const NFTA_SET_TABLE: u16 = 1;
pub const NFTA_SET_NAME: u16 = 2;
pub const NFTA_SET_FLAGS: u16 = 3;
pub const NFTA_SET_KEY_TYPE: u16 = 4;
pub const NFTA_SET_KEY_LEN: u16 = 5;
pub const NFTA_SET_DATA_TYPE: u16 = 6;
pub const NFTA_SET_DATA_LEN: u16 = 7;
pub const NFTA_SET_DESC: u16 = 9;
pub const NFTA_SET_ID: u16 = 10;
pub const NFTA_SET_USERDATA: u16 = 13;
pub const NFTA_SET_DESC_SIZE: u16 = 1;
pub const NFT_SET_ANONYMOUS: u32 = 0x1;
pub const NFT_SET_CONSTANT: u32 = 0x2;
pub const NFT_SET_MAP: u32 = 0x8;
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_DATA: u16 = 2;

// udata TLVs (libnftnl's nftnl_udata: u8 type, u8 len, value); type 0 is the comment for a
// table (NFTNL_UDATA_TABLE_COMMENT), a chain and a rule alike.
pub const UDATA_COMMENT: u8 = 0;

// ---- nfnetlink_conntrack.h ----
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
pub const IPCTNL_MSG_CT_GET: u8 = 1;
pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_TUPLE_IP: u16 = 1;
pub const CTA_TUPLE_PROTO: u16 = 2;
pub const CTA_IP_V4_SRC: u16 = 1;
pub const CTA_IP_V4_DST: u16 = 2;
pub const CTA_PROTO_NUM: u16 = 1;
pub const CTA_PROTO_SRC_PORT: u16 = 2;
pub const CTA_PROTO_DST_PORT: u16 = 3;

/// One netlink message under construction: `nlmsghdr` + `nfgenmsg` + attributes.
/// Nests are opened with [`Msg::nest`] and closed with [`Msg::end`].
pub struct Msg {
    pub buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    /// `family` is the nfgenmsg family (NFPROTO_*), `res_id` its resource id (host order here,
    /// sent big endian: the subsystem id for batch messages, 0 otherwise).
    pub fn new(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        buf.extend_from_slice(&[family, NFNETLINK_V0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    pub fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        put_attr(&mut self.buf, kind, value);
        self
    }
    pub fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(kind, &v)
    }
    pub fn u32be(&mut self, kind: u16, v: u32) -> &mut Self {
        self.bytes(kind, &v.to_be_bytes())
    }
    pub fn u64be(&mut self, kind: u16, v: u64) -> &mut Self {
        self.bytes(kind, &v.to_be_bytes())
    }
    /// Open a nested attribute; returns its offset for [`Msg::end`].
    pub fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }
    pub fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    /// `NFTA_xxx_DATA { NFTA_DATA_VALUE = value }`, the form of every constant an expression uses.
    pub fn data_value(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let n = self.nest(kind);
        self.bytes(NFTA_DATA_VALUE, value);
        self.end(n);
        self
    }
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// libnftnl's udata with one comment TLV, as `nft ... comment "x"` sends it (NUL included).
pub fn udata_comment(comment: &str) -> Vec<u8> {
    let mut v = vec![UDATA_COMMENT, (comment.len() + 1) as u8];
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// The comment TLV of a udata blob, if any.
pub fn udata_find_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (t, l) = (rest[0], rest[1] as usize);
        if rest.len() < 2 + l {
            return None;
        }
        if t == UDATA_COMMENT {
            let v = &rest[2..2 + l];
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[2 + l..];
    }
    None
}

/// One received netlink message.
pub struct NlMsg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte nlmsghdr.
    pub payload: &'a [u8],
}

/// Split a datagram into its netlink messages.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<NlMsg<'_>, String>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(format!("truncated netlink message (len {len})")));
        }
        let m = NlMsg {
            msg_type: u16::from_ne_bytes(rest[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(rest[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(rest[8..12].try_into().unwrap()),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok(m))
    })
}

/// Iterate over the attributes in `buf`: (type without NLA_F_* bits, value).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let v = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, v))
    })
}

pub fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub fn attr_str(buf: &[u8], kind: u16) -> Option<String> {
    attr(buf, kind).map(|v| String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned())
}

pub fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

pub fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_padding() {
        let mut m = Msg::new(0x0a00, NLM_F_REQUEST, 7, 2, 0);
        m.str(NFTA_TABLE_NAME, "cnet");
        let b = m.finish();
        // 16 nlmsghdr + 4 nfgenmsg + (4 + 5 -> 12) attribute
        assert_eq!(b.len(), 32);
        assert_eq!(&b[16..20], &[2, 0, 0, 0]);
        assert_eq!(&b[20..32], &[9, 0, 1, 0, b'c', b'n', b'e', b't', 0, 0, 0, 0]);
        let msgs: Vec<_> = messages(&b).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(attr_str(&msgs[0].payload[4..], NFTA_TABLE_NAME).as_deref(), Some("cnet"));
    }

    #[test]
    fn comment_udata_round_trip() {
        let u = udata_comment("cnet");
        assert_eq!(u, vec![0, 5, b'c', b'n', b'e', b't', 0]);
        assert_eq!(udata_find_comment(&u).as_deref(), Some("cnet"));
        assert_eq!(udata_find_comment(&[1, 2, 9, 9, 0, 3, b'a', b'b', 0]).as_deref(), Some("ab"));
        assert_eq!(udata_find_comment(&[0, 9, 1]), None);
    }

    #[test]
    fn nest_lengths() {
        let mut m = Msg::new(0, 0, 0, 0, 0);
        let n = m.nest(4);
        m.u32be(1, 0).u32be(2, (-100i32) as u32);
        m.end(n);
        let b = m.finish();
        let (k, v) = attrs(&b[20..]).next().unwrap();
        assert_eq!(k, 4);
        assert_eq!(v.len(), 16);
        assert_eq!(be32(attr(v, 2).unwrap()).unwrap() as i32, -100);
        assert_eq!(u16::from_ne_bytes([b[22], b[23]]) & NLA_F_NESTED, NLA_F_NESTED);
    }
}
