//! The ebpf backend's datapath in the kernel: cnet's TC programs (src/ebpf/tunnel.bpf.c,
//! compiled by clang in build.rs and carried inside the binary) loaded, their maps filled,
//! attached as TC filters, read back and removed.
//!
//! The loader is aya: pure Rust (no C library to link or ship), it takes clang's ELF as it
//! is, and attaches through netlink as `tc filter` does. A netlink filter, unlike a TCX
//! link, holds its program after the process that attached it exits, with nothing pinned:
//! the filter holds the program, the program its maps, and removing the filter (or the
//! device) unloads them all. `up` therefore leaves no process and no file behind for the
//! datapath, and `down` has nothing to unpin.

use std::net::SocketAddrV4;
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use aya::programs::tc::{NlOptions, TcAttachOptions, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::apply::netlink::{Netlink, NoSuchLink, kernel_error};
use crate::apply::state::run_dir;
use crate::error::Failure;
use crate::model::ebpf::{
    self, FILTER_HANDLE, FILTER_PRIO, Hook, MAP_CONFIG, MAP_LOCAL, MAP_PEERS, MAP_ROUTES, MAP_STATS, PROG_DECAP, PROG_ENCAP, Peer,
};

/// The object clang built from src/ebpf/tunnel.bpf.c (build.rs), aligned as aya reads it.
#[cfg(not(cnet_no_bpf))]
fn object() -> Result<&'static [u8]> {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunnel.bpf.o"));
    Ok(OBJECT)
}

/// Built where clang was missing: the rest of cnet works, the ebpf backend says why not.
#[cfg(cnet_no_bpf)]
fn object() -> Result<&'static [u8]> {
    Err(Failure::environment(
        "this cnet was built without clang, so it carries no eBPF program: install clang and libbpf-dev (scripts/setup) and rebuild, or use --backend udp",
    ))
}

/// The object's bytes (`cnet bpf-object`).
pub fn object_bytes() -> Result<&'static [u8]> {
    object()
}

/// The object loaded by `LoadEbpf`, until its programs are attached (the next steps of
/// the same plan, in the same process).
static LOADED: Mutex<Option<Ebpf>> = Mutex::new(None);

/// What `status` needs to find this node's maps again: the kernel's ids (lab nodes share
/// one kernel, so a name would not say whose map it is).
#[derive(Serialize, Deserialize)]
struct Record {
    stats_map: u32,
    programs: Vec<u32>,
}

fn record_path() -> std::path::PathBuf {
    run_dir().join("ebpf.json")
}

/// One line for a failed load: the machine's fault (exit 2) unless the verifier refused
/// the program (then its last words, which say why).
fn load_failure(what: &str, e: impl Into<anyhow::Error>) -> anyhow::Error {
    let e: anyhow::Error = e.into();
    if let Some(ProgramError::LoadError { io_error, verifier_log }) = e.downcast_ref::<ProgramError>() {
        let log = verifier_log.to_string();
        let last: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
        if !last.is_empty() && io_error.raw_os_error() != Some(libc::EPERM) {
            return anyhow!(
                "the kernel's verifier refused {what} ({io_error}): {} — a bug in src/ebpf/tunnel.bpf.c for this kernel",
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
    }
    // The machine's fault only when the kernel said so (a syscall failed): an object aya
    // cannot parse is this build's.
    let from_kernel = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some());
    if !from_kernel {
        return anyhow!("cannot load cnet's eBPF {what}: {e:#}");
    }
    Failure::environment(format!(
        "cannot load cnet's eBPF {what}: {e:#} (this machine does not let cnet load BPF: it needs root with CAP_BPF and CAP_NET_ADMIN and a kernel with BPF; or use --backend udp)"
    ))
}

/// The interface index of `dev` in this network namespace (not through /sys, which shows
/// the namespace it was mounted in).
fn ifindex(dev: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(dev).map_err(|_| anyhow::Error::new(NoSuchLink(dev.to_string())))
}

/// Load the object, its two programs into the kernel (verified, JIT-compiled) and fill the
/// maps. Held here until [`attach`].
pub fn load(
    local: SocketAddrV4,
    tun: &str,
    underlay: &str,
    peers: &[Peer],
    pods: &[(std::net::Ipv4Addr, String)],
    direct: bool,
) -> Result<()> {
    let mut bpf = Ebpf::load(object()?).map_err(|e| load_failure("object", e))?;
    for name in [PROG_ENCAP, PROG_DECAP] {
        let p: &mut SchedClassifier = bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("cnet's eBPF object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a TC program"))?;
        p.load().map_err(|e| load_failure(&format!("program {name}"), e))?;
    }
    let map = |bpf: &mut Ebpf, name: &str| -> Result<Map> {
        bpf.take_map(name).ok_or_else(|| anyhow!("cnet's eBPF object has no map {name}"))
    };
    let cfg = ebpf::config_value(local, ifindex(underlay)?, ifindex(tun)?, direct);
    let mut config: Array<MapData, [u8; 20]> = Array::try_from(map(&mut bpf, MAP_CONFIG)?)?;
    config.set(0, cfg, 0).context("cannot write cnet_config")?;
    let mut routes: LpmTrie<MapData, [u8; 4], [u8; 4]> = LpmTrie::try_from(map(&mut bpf, MAP_ROUTES)?)?;
    let mut table: HashMap<MapData, [u8; 4], [u8; 12]> = HashMap::try_from(map(&mut bpf, MAP_PEERS)?)?;
    for p in peers {
        let (_, node) = ebpf::route_entry(p);
        let key = Key::new(u32::from(p.pod_net.prefix), p.pod_net.network().octets());
        routes.insert(&key, node, 0).with_context(|| format!("cannot write {} into cnet_routes", p.pod_net))?;
        let (k, v) = ebpf::peer_entry(p);
        table.insert(k, v, 0).with_context(|| format!("cannot write peer {} into cnet_peers", p.addr))?;
    }
    let mut local: HashMap<MapData, [u8; 4], u32> = HashMap::try_from(map(&mut bpf, MAP_LOCAL)?)?;
    for (addr, port) in pods {
        local.insert(addr.octets(), ifindex(port)?, 0).with_context(|| format!("cannot write {addr} into cnet_local"))?;
    }
    let stats_map = match map(&mut bpf, MAP_STATS)? {
        Map::PerCpuArray(data) => data.info().map(|i| i.id()).context("cannot read cnet_stats' id")?,
        _ => bail!("cnet's eBPF object's {MAP_STATS} is not a per-CPU array"),
    };
    let mut programs = Vec::new();
    for name in [PROG_ENCAP, PROG_DECAP] {
        if let Some(p) = bpf.program(name)
            && let Ok(info) = p.info()
        {
            programs.push(info.id());
        }
    }
    let rec = Record { stats_map, programs };
    std::fs::write(record_path(), serde_json::to_vec(&rec)?).context("cannot record the eBPF maps' ids")?;
    // The maps taken out of the object above close with it here; the programs hold them.
    *LOADED.lock().unwrap() = Some(bpf);
    Ok(())
}

fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// Attach a loaded program to `dev` as cnet's TC filter (fixed priority and handle; the
/// kernel refuses if that filter exists). `last`: nothing more to attach, let go of the
/// object (the filters hold what they need).
pub fn attach(dev: &str, hook: Hook, program: &str, last: bool) -> Result<()> {
    let mut held = LOADED.lock().unwrap();
    let bpf = held.as_mut().ok_or_else(|| anyhow!("cnet's eBPF object is not loaded in this process (LoadEbpf runs first)"))?;
    let p: &mut SchedClassifier = bpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("cnet's eBPF object has no program {program}"))?
        .try_into()
        .with_context(|| format!("{program} is not a TC program"))?;
    let opts = NlOptions { priority: FILTER_PRIO, handle: TcHandle::from(FILTER_HANDLE), classid: None };
    let id = p.attach_with_options(dev, attach_type(hook), TcAttachOptions::Netlink(opts)).map_err(|e| {
        let errno = program_errno(&e);
        let e = anyhow::Error::new(e);
        match errno {
            Some(libc::EEXIST) => anyhow!(
                "{dev} already has a TC filter at priority {FILTER_PRIO} handle {FILTER_HANDLE} on {}: a left-over of cnet's (run cnet down) or someone else's",
                hook.name()
            ),
            Some(code) => anyhow::Error::new(std::io::Error::from_raw_os_error(code)).context(format!("{e:#}")),
            None => e,
        }
    })?;
    // The filter stays when this process exits: the link object is let go without
    // detaching (its drop would remove the filter). `down` removes it, or tun0's deletion.
    let link = p.take_link(id)?;
    std::mem::forget(link);
    if last {
        *held = None;
    }
    Ok(())
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(c) = io.raw_os_error()
        {
            return Some(c);
        }
        if let Some(nl) = s.downcast_ref::<aya::sys::NetlinkError>()
            && let Some(c) = nl.raw_os_error()
        {
            return Some(c);
        }
        src = s.source();
    }
    None
}

const CLSACT: netlink_packet_route::tc::TcHandle = netlink_packet_route::tc::TcHandle { major: 0xffff, minor: 0xfff1 };

/// `tc qdisc add dev DEV clsact`. Ok(false) if one is there already (someone else's, or
/// cnet's on a device it made earlier): used as it is, and left for its owner at `down`.
pub async fn add_clsact(nl: &Netlink, dev: &str) -> Result<bool> {
    // The index first, for the usual "no such link" line.
    nl.link_index(None, dev).await?;
    // aya's request: rtnetlink's qdisc request cannot name the kind clsact.
    match aya::programs::tc::qdisc_add_clsact(dev) {
        Ok(()) => Ok(true),
        Err(aya::programs::tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(aya::programs::tc::TcError::NetlinkError(e)) if let Some(code) = e.raw_os_error() => {
            Err(anyhow::Error::new(std::io::Error::from_raw_os_error(code))
                .context(format!("cannot add a clsact qdisc to {dev}")))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot add a clsact qdisc to {dev}"))),
    }
}

/// `tc qdisc del dev DEV clsact` (its filters go with it). Gone already counts as done.
pub async fn del_clsact(nl: &Netlink, dev: &str) -> Result<()> {
    let index = match nl.link_index(None, dev).await {
        Ok(i) => i,
        Err(e) if e.is::<NoSuchLink>() => return Ok(()),
        Err(e) => return Err(e),
    };
    let h = nl.node_handle();
    let mut req = h.qdisc().del(index as i32);
    {
        let m = req.message_mut();
        m.header.parent = CLSACT;
        m.header.handle = netlink_packet_route::tc::TcHandle { major: 0xffff, minor: 0 };
        m.attributes.push(netlink_packet_route::tc::TcAttribute::Kind("clsact".into()));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(crate::apply::netlink::errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
        Err(e) => Err(kernel_error(e).context(format!("cannot delete {dev}'s clsact qdisc"))),
    }
}

/// Whether `dev` has a clsact qdisc.
pub async fn has_clsact(nl: &Netlink, dev: &str) -> Result<bool> {
    let index = match nl.link_index(None, dev).await {
        Ok(i) => i,
        Err(e) if e.is::<NoSuchLink>() => return Ok(false),
        Err(e) => return Err(e),
    };
    let h = nl.node_handle();
    let msgs: Vec<_> = h.qdisc().get().index(index as i32).execute().try_collect().await.map_err(kernel_error)?;
    Ok(msgs.iter().any(|m| {
        m.header.index == index as i32
            && m.attributes.iter().any(|a| matches!(a, netlink_packet_route::tc::TcAttribute::Kind(k) if k == "clsact"))
    }))
}

/// Whether cnet's filter running `program` (by the name the kernel reports, at cnet's
/// priority and handle) is on `dev`'s `hook`.
pub async fn has_filter(nl: &Netlink, dev: &str, hook: Hook, program: &str) -> Result<bool> {
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    let index = match nl.link_index(None, dev).await {
        Ok(i) => i,
        Err(e) if e.is::<NoSuchLink>() => return Ok(false),
        Err(e) => return Err(e),
    };
    let h = nl.node_handle();
    let req = h.traffic_filter(index as i32).get();
    let req = match hook {
        Hook::Ingress => req.ingress(),
        Hook::Egress => req.egress(),
    };
    let msgs: Vec<_> = match req.execute().try_collect().await {
        Ok(m) => m,
        // No clsact qdisc: no hook to list.
        Err(e) if matches!(crate::apply::netlink::errno(&e), Some(libc::EINVAL | libc::ENOENT)) => return Ok(false),
        Err(e) => return Err(kernel_error(e)),
    };
    Ok(msgs.iter().any(|m| {
        let handle = u32::from(m.header.handle.minor) | (u32::from(m.header.handle.major) << 16);
        let named = m.attributes.iter().any(|a| match a {
            TcAttribute::Options(opts) => opts.iter().any(|o| {
                matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == program || n.starts_with(&format!("{program}:")))
            }),
            _ => false,
        });
        handle == FILTER_HANDLE && named
    }))
}

/// Remove cnet's filter from `dev` (by the program's name, as `tc filter show` lists it).
/// Gone already (no device, no qdisc, no such filter) counts as done.
pub fn detach(dev: &str, hook: Hook, program: &str) -> Result<()> {
    if ifindex(dev).is_err() {
        return Ok(());
    }
    match aya::programs::tc::qdisc_detach_program(dev, attach_type(hook), program) {
        Ok(()) => Ok(()),
        Err(aya::programs::tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(aya::programs::tc::TcError::NetlinkError(e)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot remove {program} from {dev}'s {}", hook.name()))),
    }
}

/// Forget the record of the maps' ids (`down`).
pub fn remove_record() -> Result<()> {
    match std::fs::remove_file(record_path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("cannot remove the eBPF record"),
        _ => Ok(()),
    }
}

/// The counters, summed over CPUs, by name (model::ebpf::STATS): None when nothing of
/// cnet's is loaded here.
pub fn counters() -> Option<Vec<(&'static str, u64)>> {
    let rec: Record = serde_json::from_slice(&std::fs::read(record_path()).ok()?).ok()?;
    let data = MapData::from_id(rec.stats_map).ok()?;
    // An id names another map once cnet's is gone and the id was given again.
    if data.info().ok()?.name_as_str() != Some(MAP_STATS) {
        return None;
    }
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data)).ok()?;
    let mut out = Vec::new();
    for (i, name) in ebpf::STATS.iter().enumerate() {
        let v = stats.get(&(i as u32), 0).ok()?;
        out.push((*name, v.iter().sum()));
    }
    Some(out)
}

/// Whether this machine can load BPF at all, asked before anything is built: loading the
/// object is the real test (needs root, CAP_BPF, a kernel with BPF and the helpers used).
pub fn check_loadable() -> Result<()> {
    let mut bpf = Ebpf::load(object()?).map_err(|e| load_failure("object", e))?;
    for name in [PROG_ENCAP, PROG_DECAP] {
        let p: &mut SchedClassifier =
            bpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into().context("not a TC program")?;
        p.load().map_err(|e| load_failure(&format!("program {name}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_refusal_is_the_machines_fault_a_bad_object_is_not() {
        // EPERM from the bpf() syscall (no CAP_BPF): exit 2, one line saying what to do.
        let eperm = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM)).context("BPF_PROG_LOAD");
        let e = load_failure("program cnet_encap", eperm);
        assert_eq!(crate::error::exit_code(&e), 2);
        let line = format!("{e:#}");
        assert!(line.contains("cannot load cnet's eBPF program cnet_encap") && line.contains("--backend udp"), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
        // An object aya cannot parse: this build's fault, not the machine's.
        let e = load_failure("object", anyhow!("invalid program section `tc`"));
        assert_eq!(crate::error::exit_code(&e), 1);
    }

    #[test]
    fn the_object_is_a_bpf_elf() {
        if let Ok(obj) = object() {
            // ELF, 64-bit, machine EM_BPF (247).
            assert_eq!(&obj[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 247);
        }
    }
}
