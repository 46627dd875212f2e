//! The packed-weight cache file: written once after a load that packed weights, then mapped read-only by
//! later loads and used in place. Nothing in it is trusted: every length and offset is bounds-checked,
//! the table carries a checksum, the key must match exactly.
//!
//! ```text
//! offset  field (little-endian)
//! 0       magic "QW3VPKW\0"
//! 8       format version u32, 0u32
//! 16      file length u64                       (a truncated file is refused)
//! 24      table offset u64, table length u64, FNV-1a 64 of the table u64
//! 48      key length u64, key (UTF-8)           (header ≤ 64 KiB)
//! 64 KiB  blobs: each weight's panels as `PackedWeight::as_bytes` gives them, 64-byte aligned, 2 MiB
//!         aligned from 2 MiB (the gaps are holes: no disk space)
//! table   count u64, then per weight: name length u32, name (UTF-8), n u64, k u64, bf16 u8, swiglu u8,
//!         blob offset u64, blob length u64
//! ```
//! The panels' bytes themselves carry no checksum (hashing gigabytes would cost what the cache saves);
//! a file is only ever published whole (written to a temporary name, synced, renamed).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use qwen3vl_kernels::matmul::{PackedLayout, StableBytes};

pub(super) const MAGIC: &[u8; 8] = b"QW3VPKW\0";
/// Version of the container layout above (the panel layout is covered by the key's fingerprint).
pub(super) const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for the header; the first blob starts here.
const HEADER: u64 = 64 << 10;
const HUGE: u64 = 2 << 20;
/// Room to leave on the cache's file system after each write.
pub(super) const KEEP_FREE: u64 = 1 << 30;
/// Most weights a file may list (a 32B model has ~450 packed weights; MoE models one per expert).
const MAX_ENTRIES: u64 = 1 << 20;

/// FNV-1a, 64 bits: the table checksum and the hashes in the key and file name.
pub(super) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One weight in the file.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub layout: PackedLayout,
    pub offset: usize,
    pub len: usize,
}

/// A cache file mapped read-only (MAP_SHARED from the page cache, populated at map time).
pub(super) struct Mapped(Mmap);
// Safety: a read-only mapping at a fixed address for its whole life. The file is only ever replaced by
// rename (a new inode), never written in place, so the mapped bytes do not change.
unsafe impl StableBytes for Mapped {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A validated cache file: its mapping and its table by weight name.
pub(super) struct Reader {
    pub map: Arc<dyn StableBytes>,
    pub entries: HashMap<String, Entry>,
    pub bytes: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Opens `path` if it is a complete cache file for `key`. Err: why not, in a few words (the file is
/// then rebuilt). The header is read and checked before the file is mapped, so a stale file of gigabytes
/// is never paged in.
pub(super) fn open(path: &Path, key: &str) -> Result<Reader, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut head = Vec::new();
    (&mut f)
        .take(HEADER)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    if head.len() < 56 || &head[..8] != MAGIC {
        return Err("not a packed-weight cache file (bad magic or too short)".into());
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this engine writes {FORMAT_VERSION}"
        ));
    }
    let file_len = le64(&head, 16);
    if file_len != len {
        return Err(format!(
            "{len} bytes, the header says {file_len} (truncated?)"
        ));
    }
    let key_len = le64(&head, 48);
    let stored = (key_len <= HEADER - 56)
        .then(|| head.get(56..56 + key_len as usize))
        .flatten()
        .ok_or_else(|| format!("key length {key_len} runs past the header"))?;
    if stored != key.as_bytes() {
        let stored = String::from_utf8_lossy(stored);
        let what = key
            .lines()
            .zip(stored.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("{b:?} is now {a:?}"))
            .unwrap_or_else(|| "the key differs".into());
        return Err(format!("stale: {what}"));
    }
    let (t_off, t_len, t_sum) = (le64(&head, 24), le64(&head, 32), le64(&head, 40));
    if t_off < HEADER || t_off.checked_add(t_len) != Some(len) {
        return Err(format!(
            "table at {t_off}..+{t_len} does not end the {len}-byte file"
        ));
    }
    // Safety: read-only mapping; see `Mapped`.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&f) }
        .map_err(|e| format!("mmap: {e}"))?;
    if map.len() as u64 != len {
        return Err("the file changed while it was opened".into());
    }
    let table = &map[t_off as usize..];
    if fnv64(table) != t_sum {
        return Err("table checksum mismatch (corrupt)".into());
    }
    let entries = parse_table(table, t_off)?;
    let bytes = entries.values().map(|e| e.len as u64).sum();
    Ok(Reader {
        map: Arc::new(Mapped(map)),
        entries,
        bytes,
    })
}

/// The entries of `t` (the table; blobs must lie in HEADER..blobs_end).
fn parse_table(t: &[u8], blobs_end: u64) -> Result<HashMap<String, Entry>, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = t
            .get(at..at.checked_add(n).ok_or("overflow")?)
            .ok_or_else(|| format!("table truncated at byte {at}"))?;
        at += n;
        Ok(s)
    };
    let count = le64(take(8)?, 0);
    if count > MAX_ENTRIES {
        return Err(format!("{count} entries, over the limit of {MAX_ENTRIES}"));
    }
    let mut entries = HashMap::with_capacity(count as usize);
    for i in 0..count {
        let name_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let name = std::str::from_utf8(take(name_len)?)
            .map_err(|_| format!("entry {i}: name is not UTF-8"))?
            .to_string();
        let f = take(34)?;
        let (n, k, bf16, swiglu, off, len) = (
            le64(f, 0),
            le64(f, 8),
            f[16],
            f[17],
            le64(f, 18),
            le64(f, 26),
        );
        let bad = |msg: String| Err(format!("entry {name}: {msg}"));
        if bf16 > 1 || swiglu > 1 {
            return bad("flags are not 0/1".into());
        }
        if off < HEADER || off % 64 != 0 || off.checked_add(len).is_none_or(|e| e > blobs_end) {
            return bad(format!(
                "blob {off}..+{len} is not an aligned range of the data section"
            ));
        }
        let (Ok(n), Ok(k), Ok(offset), Ok(len)) = (
            usize::try_from(n),
            usize::try_from(k),
            usize::try_from(off),
            usize::try_from(len),
        ) else {
            return bad("sizes overflow the address space".into());
        };
        let e = Entry {
            layout: PackedLayout {
                n,
                k,
                bf16: bf16 == 1,
                swiglu: swiglu == 1,
            },
            offset,
            len,
        };
        if entries.insert(name.clone(), e).is_some() {
            return Err(format!("entry {name} is listed twice"));
        }
    }
    if at != t.len() {
        return Err(format!(
            "{} bytes after the table's last entry",
            t.len() - at
        ));
    }
    Ok(entries)
}

/// Free bytes for an unprivileged user on the file system of `dir` (None if unknown).
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // Safety: a valid C string and a statvfs struct to fill.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Ok if `free` bytes (None: unknown) hold `need` more and leave [`KEEP_FREE`]; else why not (`what`
/// says what needs the room).
pub(super) fn room(free: Option<u64>, need: u64, dir: &Path, what: &str) -> Result<(), String> {
    match free {
        Some(free) if free < need.saturating_add(KEEP_FREE) => Err(format!(
            "{} free in {}, under the {} {what} + 1 GiB kept free",
            gb(free),
            dir.display(),
            gb(need)
        )),
        _ => Ok(()),
    }
}

/// `3.41 GB`, or `5.0 MB` below 1 GB.
pub(super) fn gb(b: u64) -> String {
    if b >= 1_000_000_000 {
        format!("{:.2} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

/// A cache file being written under a temporary name (removed on drop unless committed).
pub(super) struct Writer {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    /// end of the last blob
    pos: u64,
    table: Vec<u8>,
    count: u64,
    names: std::collections::HashSet<String>,
    committed: bool,
}

impl Writer {
    pub fn create(dest: &Path) -> Result<Writer, String> {
        let tmp = PathBuf::from(format!("{}.tmp{}", dest.display(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        Ok(Writer {
            tmp,
            dest: dest.to_path_buf(),
            file,
            pos: HEADER,
            table: Vec::new(),
            count: 0,
            names: Default::default(),
            committed: false,
        })
    }

    /// Appends one weight's panels (a name already written is skipped). Err: the file is abandoned.
    pub fn append(&mut self, name: &str, l: PackedLayout, bytes: &[u8]) -> Result<(), String> {
        if !self.names.insert(name.to_string()) {
            return Ok(());
        }
        let len = bytes.len() as u64;
        let off = self
            .pos
            .next_multiple_of(if len >= HUGE { HUGE } else { 64 });
        let dir = self.dest.parent().unwrap_or(Path::new("."));
        room(free_bytes(dir), len, dir, "the next weight needs")?;
        let io = |e: std::io::Error| format!("{}: {e}", self.tmp.display());
        self.file.seek(SeekFrom::Start(off)).map_err(io)?;
        self.file.write_all(bytes).map_err(io)?;
        self.pos = off + len;
        self.count += 1;
        self.table
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.table.extend_from_slice(name.as_bytes());
        for v in [l.n as u64, l.k as u64] {
            self.table.extend_from_slice(&v.to_le_bytes());
        }
        self.table
            .extend_from_slice(&[l.bf16 as u8, l.swiglu as u8]);
        for v in [off, len] {
            self.table.extend_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    /// Weights appended so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the table and header, syncs and renames the file into place. Returns (path, bytes the file
    /// takes on disk).
    pub fn commit(mut self, key: &str) -> Result<(PathBuf, u64), String> {
        if key.len() as u64 > HEADER - 56 {
            return Err(format!(
                "the key is {} bytes, over {}",
                key.len(),
                HEADER - 56
            ));
        }
        let mut table = self.count.to_le_bytes().to_vec();
        table.append(&mut self.table);
        let t_off = self.pos.next_multiple_of(64);
        let file_len = t_off + table.len() as u64;
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            file_len,
            t_off,
            table.len() as u64,
            fnv64(&table),
            key.len() as u64,
        ] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        head.extend_from_slice(key.as_bytes());
        let io = |e: std::io::Error| format!("{}: {e}", self.tmp.display());
        self.file.seek(SeekFrom::Start(t_off)).map_err(io)?;
        self.file.write_all(&table).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(&head).map_err(io)?;
        self.file.set_len(file_len).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| format!("renaming {} into place: {e}", self.tmp.display()))?;
        self.committed = true;
        Ok((
            self.dest.clone(),
            disk_usage(&self.dest).unwrap_or(file_len),
        ))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Bytes `path` occupies on disk (holes excluded).
fn disk_usage(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(std::fs::metadata(path).ok()?.blocks() * 512)
    }
    #[cfg(not(unix))]
    {
        Some(std::fs::metadata(path).ok()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write goes ahead only if it leaves 1 GiB free (or the free space is unknown).
    #[test]
    fn room_keeps_a_gib_free() {
        let d = Path::new("/c");
        let gib = 1u64 << 30;
        assert!(room(Some(3 * gib), 2 * gib, d, "x").is_ok());
        assert!(room(None, u64::MAX, d, "x").is_ok());
        let e = room(Some(3 * gib - 1), 2 * gib, d, "they take").unwrap_err();
        assert_eq!(
            e,
            "3.22 GB free in /c, under the 2.15 GB they take + 1 GiB kept free"
        );
        assert!(room(Some(u64::MAX - 1), u64::MAX, d, "x").is_err());
    }

    /// The checksum is FNV-1a 64 (its published test vectors).
    #[test]
    fn fnv64_vectors() {
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
