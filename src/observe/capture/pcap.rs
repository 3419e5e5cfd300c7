//! Classic libpcap file writer (what `tcpdump -w` writes and `tcpdump -r` / Wireshark read).
//!
//! Layout, all fields little-endian (readers detect the byte order from the magic):
//! - global header, 24 bytes: magic `0xa1b2c3d4` (microsecond timestamps), version 2.4,
//!   thiszone 0, sigfigs 0, snaplen 65535, link type (1 Ethernet, 101 raw IP);
//! - per packet, 16 bytes: seconds, microseconds, captured length, original length, then
//!   the captured bytes (at most snaplen).
//!
//! Every record is written with one `write_all` of the buffered writer followed by a flush,
//! so the file on disk is a valid capture after each packet, even if the process is killed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MAGIC: u32 = 0xa1b2_c3d4;
pub const VERSION_MAJOR: u16 = 2;
pub const VERSION_MINOR: u16 = 4;
pub const SNAPLEN: u32 = 65535;
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;

/// The 24-byte global header.
pub fn file_header(linktype: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    h[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    // 8..12 thiszone = 0, 12..16 sigfigs = 0
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&linktype.to_le_bytes());
    h
}

/// The 16-byte record header for a packet seen at `since_epoch`.
pub fn record_header(since_epoch: Duration, captured: u32, original: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    // u32 seconds last until 2106; saturate rather than wrap.
    let secs = u32::try_from(since_epoch.as_secs()).unwrap_or(u32::MAX);
    h[0..4].copy_from_slice(&secs.to_le_bytes());
    h[4..8].copy_from_slice(&since_epoch.subsec_micros().to_le_bytes());
    h[8..12].copy_from_slice(&captured.to_le_bytes());
    h[12..16].copy_from_slice(&original.to_le_bytes());
    h
}

/// Writes a pcap stream to any writer; `create` for a file.
pub struct PcapWriter<W: Write> {
    w: W,
    record: Vec<u8>,
}

impl PcapWriter<BufWriter<File>> {
    /// Creates (truncates) `path` and writes the global header.
    pub fn create(path: &Path, linktype: u32) -> io::Result<Self> {
        let file = File::create(path)?;
        PcapWriter::new(BufWriter::new(file), linktype)
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header to `w` and flushes it.
    pub fn new(mut w: W, linktype: u32) -> io::Result<Self> {
        w.write_all(&file_header(linktype))?;
        w.flush()?;
        Ok(PcapWriter { w, record: Vec::with_capacity(16 + SNAPLEN as usize) })
    }

    /// Appends one packet: `data` is what was captured (cut to the snaplen here),
    /// `original_len` the packet's length on the wire. Flushes.
    pub fn write_packet(&mut self, at: SystemTime, data: &[u8], original_len: usize) -> io::Result<()> {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let data = &data[..data.len().min(SNAPLEN as usize)];
        let captured = data.len() as u32; // <= SNAPLEN
        let original = u32::try_from(original_len.max(data.len())).unwrap_or(u32::MAX);
        self.record.clear();
        self.record.extend_from_slice(&record_header(since_epoch, captured, original));
        self.record.extend_from_slice(data);
        self.w.write_all(&self.record)?;
        self.w.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_header_layout() {
        let h = file_header(LINKTYPE_ETHERNET);
        assert_eq!(
            h,
            [
                0xd4, 0xc3, 0xb2, 0xa1, // magic, little-endian
                2, 0, 4, 0, // version 2.4
                0, 0, 0, 0, // thiszone
                0, 0, 0, 0, // sigfigs
                0xff, 0xff, 0, 0, // snaplen 65535
                1, 0, 0, 0, // LINKTYPE_ETHERNET
            ]
        );
        assert_eq!(&file_header(LINKTYPE_RAW)[20..], &[101, 0, 0, 0]);
    }

    #[test]
    fn records_follow_the_header() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_RAW).unwrap();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        w.write_packet(t, &[0x45, 1, 2], 3).unwrap();
        w.write_packet(t + Duration::from_micros(1), &[9; 10], 1500).unwrap();
        let out = w.into_inner();
        assert_eq!(out.len(), 24 + 16 + 3 + 16 + 10);
        let r = &out[24..40];
        assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 1_700_000_000);
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), 3);
        assert_eq!(&out[40..43], &[0x45, 1, 2]);
        let r = &out[43..59];
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 123_457);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 10);
        assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), 1500);
    }

    #[test]
    fn packets_longer_than_snaplen_are_cut_but_keep_their_length() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET).unwrap();
        let big = vec![7u8; 70_000];
        w.write_packet(UNIX_EPOCH, &big, big.len()).unwrap();
        let out = w.into_inner();
        assert_eq!(out.len(), 24 + 16 + 65535);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 65535);
        assert_eq!(u32::from_le_bytes(out[36..40].try_into().unwrap()), 70_000);
    }

    #[test]
    fn file_is_flushed_after_each_record() {
        let dir = std::env::temp_dir().join(format!("capture-pcap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.pcap");
        let mut w = PcapWriter::create(&path, LINKTYPE_ETHERNET).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        w.write_packet(SystemTime::now(), &[1; 60], 60).unwrap();
        // still open, not dropped: the bytes are already on disk
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24 + 16 + 60);
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
