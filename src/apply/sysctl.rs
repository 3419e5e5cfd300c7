//! Kernel parameters through /proc/sys (what `sysctl -w` does), in the caller's network
//! namespace: /proc/sys/net reflects the namespace of the process that opens it.

use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{Context, Result};

pub fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> Result<String> {
    let p = path(key);
    Ok(fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?.trim().to_string())
}

pub fn write(key: &str, value: &str) -> Result<()> {
    let p = path(key);
    fs::write(&p, value).with_context(|| format!("cannot write {} = {value}", p.display()))
}

/// Whether the key no longer exists (its interface is gone): restoring it is then moot.
pub fn is_missing(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::NotFound))
}
