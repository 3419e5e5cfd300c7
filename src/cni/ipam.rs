//! cnet's IPAM: the node's pod subnet handed out one address per attachment, as leases on
//! disk under a lock.
//!
//! A pool is a directory per bridge, `/run/cnet/cni/<bridge>/` (a tmpfs: gone at reboot,
//! as every namespace a lease could point at is): one file per leased address, named by it
//! and holding who has it (container ID, interface, its namespace and that namespace's
//! identity, the node's veth end); `by-id/<container ID>:<interface>` points at it, so DEL
//! finds its lease without reading the others; `last` says where the next search starts
//! (round robin, so a released address is not handed out again at once). Every change is
//! made under an exclusive lock on the directory. A lease whose namespace is gone (or is
//! another namespace now) is stale, and collected when the pool runs out, by GC, and shown
//! as such by `cnet status`.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use super::config::Network;
use super::spec::{CniError, code};
use crate::model::topology::Ipv4Net;
use crate::sys::ns;

/// Where the plugin keeps its state: under cnet's run directory, so `cnet down` sees it.
pub fn cni_dir() -> PathBuf {
    crate::apply::state::run_dir().join("cni")
}

/// Who holds an address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    /// The address with the pod subnet's prefix, written as `172.16.0.2/24`.
    #[serde(with = "cidr")]
    pub ip: Ipv4Net,
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS at ADD.
    pub netns: String,
    /// That namespace's identity (device, inode): a later namespace at the same path is
    /// another one.
    pub netns_id: Option<(u64, u64)>,
    /// The node's end of the veth pair.
    pub host_veth: String,
    /// The container's default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The network's name in the runtime's config.
    pub network: String,
    /// The runtime's name for the container (CNI_ARGS K8S_POD_NAME), if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An [`Ipv4Net`] as the text `ip` prints.
mod cidr {
    use super::Ipv4Net;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Ipv4Net, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Lease {
    /// Whether the namespace the lease names is gone (or replaced): nothing can use the
    /// address any more.
    pub fn is_stale(&self) -> bool {
        ns::ns_id(Path::new(&self.netns)).is_none_or(|now| self.netns_id.is_some_and(|then| then != now))
    }

    /// How `status` and `test` name the container: the runtime's name, else its ID's first
    /// 12 characters (as podman and docker print it); `:ifname` when it is not eth0.
    pub fn label(&self) -> String {
        let who = self.name.clone().unwrap_or_else(|| self.container_id.chars().take(12).collect());
        if self.ifname == "eth0" { who } else { format!("{who}:{}", self.ifname) }
    }
}

/// The node's end of a container's veth pair, named after the address it serves
/// (172.16.0.2 → vethac100002): unique while the lease is held, and readable.
pub fn host_veth_name(ip: Ipv4Addr) -> String {
    format!("veth{:08x}", u32::from(ip))
}

/// What ADD asks for.
pub struct Request<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: &'a str,
    pub network: &'a str,
    pub name: Option<&'a str>,
    /// A given address (CNI_ARGS IP=, podman's --ip).
    pub want: Option<Ipv4Addr>,
}

/// The lease file of one bridge's pool.
pub struct Pool {
    dir: PathBuf,
}

fn io_error(what: String, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO, what, e.to_string())
}

impl Pool {
    pub fn dir_for(bridge: &str) -> PathBuf {
        cni_dir().join(bridge)
    }

    /// The pool of `bridge`; with `create`, made if missing (ADD), else None (DEL, GC and
    /// the observers never create state).
    pub fn open(bridge: &str, create: bool) -> Result<Option<Pool>> {
        let dir = Self::dir_for(bridge);
        if create {
            let by_id = dir.join("by-id");
            if !by_id.is_dir() {
                fs::create_dir_all(&by_id).with_context(|| format!("cannot create {}", dir.display()))?;
            }
        } else if !dir.is_dir() {
            return Ok(None);
        }
        Ok(Some(Pool { dir }))
    }

    /// Every pool on this node.
    pub fn all() -> Vec<Pool> {
        let Ok(d) = fs::read_dir(cni_dir()) else { return Vec::new() };
        let mut v: Vec<Pool> =
            d.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| Pool { dir: e.path() }).collect();
        v.sort_by(|a, b| a.dir.cmp(&b.dir));
        v
    }

    pub fn bridge(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    fn lock(&self) -> Result<Flock<File>> {
        crate::sys::process::lock_file(&self.dir, || {})
    }

    fn id_link(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join("by-id").join(format!("{container_id}:{ifname}"))
    }

    fn lease_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn read_lease(&self, ip: Ipv4Addr) -> Option<Lease> {
        fs::read(self.lease_path(ip)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The addresses leased, from the file names alone.
    fn leased(&self) -> HashSet<Ipv4Addr> {
        fs::read_dir(&self.dir)
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every lease, in address order (unreadable ones, from a killed writer, left out).
    pub fn leases(&self) -> Vec<Lease> {
        let mut ips: Vec<Ipv4Addr> = self.leased().into_iter().collect();
        ips.sort();
        ips.into_iter().filter_map(|ip| self.read_lease(ip)).collect()
    }

    /// The lease of one attachment, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<Lease> {
        let ip: Ipv4Addr = fs::read_link(self.id_link(container_id, ifname)).ok()?.to_str()?.parse().ok()?;
        self.read_lease(ip).filter(|l| l.container_id == container_id && l.ifname == ifname)
    }

    /// Remove one lease's files (under the lock).
    fn drop_lease(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> Result<()> {
        let link = self.id_link(container_id, ifname);
        if fs::read_link(&link).ok().and_then(|t| t.to_str()?.parse::<Ipv4Addr>().ok()) == Some(ip) {
            crate::apply::state::remove_if_exists(&link)?;
        }
        crate::apply::state::remove_if_exists(&self.lease_path(ip))
    }

    /// Lease an address for `req` in `net`'s subnet: the one asked for, else the next free
    /// one after the last handed out. When none is free, stale leases are collected first.
    pub fn allocate(&self, net: &Network, req: &Request) -> Result<Lease, CniError> {
        let _lock = self.lock().map_err(|e| io_error("cannot lock the address pool".into(), format!("{e:#}")))?;
        // A lease this attachment already has: a runtime that lost track (ADD without DEL).
        if let Some(old) = self.find(req.container_id, req.ifname) {
            if !old.is_stale() && old.netns == req.netns {
                return Err(CniError::new(
                    code::STEP_FAILED,
                    format!("{} of container {} is attached already", req.ifname, req.container_id),
                    format!("it has {} (ADD twice without DEL)", old.ip),
                ));
            }
            self.drop_lease(old.ip.addr, &old.container_id, &old.ifname)
                .map_err(|e| io_error("cannot drop a stale lease".into(), format!("{e:#}")))?;
        }
        let reserved: HashSet<Ipv4Addr> = net.reserved.iter().copied().chain([net.gateway]).collect();
        let hosts = net.subnet.host_count() as u32;
        let usable = |ip: Ipv4Addr| {
            net.subnet.contains(ip)
                && ip != net.subnet.network()
                && u32::from(ip) - u32::from(net.subnet.network()) <= hosts
                && !reserved.contains(&ip)
        };
        let mut leased = self.leased();
        let pick = |leased: &HashSet<Ipv4Addr>| -> Result<Option<Ipv4Addr>, CniError> {
            if let Some(want) = req.want {
                if !usable(want) {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("the address {want} cannot be leased"),
                        format!("it is not a free host address of {} (reserved: {:?})", net.subnet, net.reserved),
                    ));
                }
                return Ok((!leased.contains(&want)).then_some(want));
            }
            let last: Option<Ipv4Addr> =
                fs::read_to_string(self.dir.join("last")).ok().and_then(|s| s.trim().parse().ok()).filter(|ip| usable(*ip));
            let base = u32::from(net.subnet.network());
            let start = last.map_or(1, |l| u32::from(l) - base + 1);
            Ok((0..hosts)
                .map(|k| (start - 1 + k) % hosts + 1)
                .map(|n| Ipv4Addr::from(base + n))
                .find(|ip| usable(*ip) && !leased.contains(ip)))
        };
        let mut ip = pick(&leased)?;
        if ip.is_none() {
            self.collect_stale_locked();
            leased = self.leased();
            ip = pick(&leased)?;
        }
        let Some(ip) = ip else {
            return Err(match req.want {
                Some(w) => CniError::new(
                    code::POOL_EXHAUSTED,
                    format!("the address {w} is leased already"),
                    format!("pool {}", net.subnet),
                ),
                None => CniError::new(
                    code::POOL_EXHAUSTED,
                    format!("no free address in {}", net.subnet),
                    format!("{} addresses are leased ({}), none of them stale", leased.len(), self.dir.display()),
                ),
            });
        };
        let lease = Lease {
            ip: Ipv4Net::new(ip, net.subnet.prefix),
            container_id: req.container_id.to_string(),
            ifname: req.ifname.to_string(),
            netns: req.netns.to_string(),
            netns_id: ns::ns_id(Path::new(req.netns)),
            host_veth: host_veth_name(ip),
            gateway: net.gateway,
            network: req.network.to_string(),
            name: req.name.map(str::to_string),
        };
        let write = || -> Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(self.lease_path(ip))?;
            f.write_all(&serde_json::to_vec(&lease)?)?;
            let link = self.id_link(req.container_id, req.ifname);
            if let Err(e) = std::os::unix::fs::symlink(ip.to_string(), &link) {
                // A dangling entry (its lease went with a killed writer): replaced.
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(e.into());
                }
                crate::apply::state::remove_if_exists(&link)?;
                std::os::unix::fs::symlink(ip.to_string(), &link)?;
            }
            if req.want.is_none() {
                fs::write(self.dir.join("last"), ip.to_string())?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = self.drop_lease(ip, req.container_id, req.ifname);
            return Err(io_error(format!("cannot write the lease of {ip}"), format!("{e:#}")));
        }
        Ok(lease)
    }

    /// Give back an attachment's address: its lease, if it had one.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Lease>> {
        let _lock = self.lock()?;
        let Some(lease) = self.find(container_id, ifname) else {
            // A dangling index entry (its lease file gone) goes too.
            crate::apply::state::remove_if_exists(&self.id_link(container_id, ifname))?;
            return Ok(None);
        };
        self.drop_lease(lease.ip.addr, container_id, ifname)?;
        Ok(Some(lease))
    }

    /// Collect stale leases (their namespaces are gone): how many.
    pub fn collect_stale(&self) -> Result<Vec<Lease>> {
        let _lock = self.lock()?;
        Ok(self.collect_stale_locked())
    }

    fn collect_stale_locked(&self) -> Vec<Lease> {
        let mut gone = Vec::new();
        for ip in self.leased() {
            match self.read_lease(ip) {
                Some(l) if l.is_stale() => {
                    if self.drop_lease(ip, &l.container_id, &l.ifname).is_ok() {
                        gone.push(l);
                    }
                }
                Some(_) => {}
                // Unreadable: a writer killed half-way (leases are written under the lock).
                None => {
                    let _ = crate::apply::state::remove_if_exists(&self.lease_path(ip));
                }
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_follow_the_address() {
        assert_eq!(host_veth_name(Ipv4Addr::new(172, 16, 0, 2)), "vethac100002");
        assert_eq!(host_veth_name(Ipv4Addr::new(10, 255, 1, 254)), "veth0aff01fe");
        assert!(host_veth_name(Ipv4Addr::BROADCAST).len() < 16);
    }

    #[test]
    fn labels() {
        let mut l = Lease {
            ip: "172.16.0.2/24".parse().unwrap(),
            container_id: "0123456789abcdef0123".into(),
            ifname: "eth0".into(),
            netns: "/nonexistent".into(),
            netns_id: None,
            host_veth: "vethac100002".into(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            network: "cnet".into(),
            name: None,
        };
        assert_eq!(l.label(), "0123456789ab");
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.starts_with(r#"{"ip":"172.16.0.2/24","#), "{json}");
        assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), l);
        assert!(l.is_stale());
        l.name = Some("web".into());
        l.ifname = "net1".into();
        assert_eq!(l.label(), "web:net1");
    }
}
