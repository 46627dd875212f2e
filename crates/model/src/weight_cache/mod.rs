//! The packed-weight cache (`--weight-cache`): a load that packs the linear weights writes their panels
//! to one file in the cache directory; a later load of the same checkpoint with the same engine maps that
//! file (read-only, populated from the page cache) and uses the panels in place: no repack and no
//! first-touch zeroing of gigabytes of fresh memory, which dominated the load.
//!
//! One file per checkpoint directory, SIMD level and quantization options (`packed/<dir>-<isa>-<hash>.qwpk`);
//! its key, checked in full before anything is mapped, holds everything the panels depend on: the
//! container format version, the engine version, the SIMD level and its group size, a fingerprint of the
//! panel layout (a small weight packed by these kernels, hashed), the quantization options, a hash of
//! config.json and each checkpoint file's name, size and modification time. A file whose key differs, or
//! that is truncated or corrupt, is ignored with a note and rewritten. The precision (`fast`/`f32`) is
//! not in the key: the panels are the same bits for both (only the matmul arithmetic differs).

mod file;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use qwen3vl_kernels::matmul::{PackedLayout, PackedWeight, Weight};
use qwen3vl_kernels::Kernels;

use crate::model::LoadOptions;
use crate::weights::Weights;
use crate::ModelError;
use file::{fnv64, gb, Reader, Writer};

/// Where packed weights are cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightCache<'a> {
    /// Neither read nor written (the library's default).
    #[default]
    Off,
    /// `$QWEN3VL_CACHE/packed`, else `$XDG_CACHE_HOME/qwen3vl/packed`, else `~/.cache/qwen3vl/packed`.
    Auto,
    /// This directory (created if missing).
    Dir(&'a Path),
}

impl WeightCache<'_> {
    /// The directory the files go to (None: off, or no home directory to put `~/.cache` in).
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            WeightCache::Off => None,
            WeightCache::Dir(d) => Some(d.to_path_buf()),
            WeightCache::Auto => {
                let env = |v: &str| {
                    std::env::var_os(v)
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                };
                let root = env("QWEN3VL_CACHE")
                    .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("qwen3vl")))
                    .or_else(|| env("HOME").map(|d| d.join(".cache").join("qwen3vl")))?;
                Some(root.join("packed"))
            }
        }
    }
}

/// What the cache did during a load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Not used (off, or nothing was packed).
    #[default]
    Off,
    /// Every packed weight came from this file (bytes of panels mapped).
    Hit { path: PathBuf, bytes: u64 },
    /// The packed weights were written to this file (bytes it takes on disk).
    Written { path: PathBuf, bytes: u64 },
    /// The weights were packed and not cached (the notes say why).
    NotWritten,
}

/// The cache's outcome and its one-line notes (stale or corrupt files, skipped writes, files written).
#[derive(Clone, Debug, Default)]
pub struct WeightCacheReport {
    pub outcome: CacheOutcome,
    pub notes: Vec<String>,
}

/// The cache as one load uses it (single-threaded, like the loader).
pub(crate) struct Session {
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    key: String,
    path: Option<PathBuf>,
    reader: Option<Reader>,
    /// names of the reader's entries used
    used: HashSet<String>,
    /// why the reader's file cannot serve a whole load (a weight missing or not matching)
    stale: Option<String>,
    writer: Option<Writer>,
    notes: Vec<String>,
}

impl Session {
    pub fn off() -> Session {
        Session {
            inner: RefCell::new(Inner::default()),
        }
    }

    /// The cache for loading `dir` with `opts`: a valid file to read, else a file to write (or neither,
    /// with a note saying why). Never fails the load.
    pub fn open(dir: &Path, weights: &Weights, kernels: &Kernels, opts: &LoadOptions) -> Session {
        let s = Session::off();
        let Some(cache_dir) = opts.weight_cache.dir() else {
            return s;
        };
        let mut inner = s.inner.borrow_mut();
        let key = match cache_key(dir, weights, kernels, opts) {
            Ok(k) => k,
            Err(e) => {
                inner
                    .notes
                    .push(format!("packed-weight cache not used: {e}"));
                drop(inner);
                return s;
            }
        };
        let path = cache_dir.join(slot_name(dir, kernels, opts));
        match file::open(&path, &key) {
            Ok(r) => inner.reader = Some(r),
            Err(why) => {
                if path.exists() {
                    inner.notes.push(format!(
                        "packed-weight cache {} ignored: {why}; rebuilding it",
                        path.display()
                    ));
                }
                inner.writer = start_writer(&cache_dir, &path, weights, opts)
                    .map_err(|e| inner.notes.push(format!("packed weights not cached: {e}")))
                    .ok();
            }
        }
        inner.key = key;
        inner.path = Some(path);
        drop(inner);
        s
    }

    /// The packed weight `name` of layout `l`: from the cache file if it holds it, else `pack()` (then
    /// appended to the file being written, if any).
    pub fn packed(
        &self,
        k: &Kernels,
        name: &str,
        l: PackedLayout,
        pack: impl FnOnce() -> Result<PackedWeight, ModelError>,
    ) -> Result<PackedWeight, ModelError> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(r) = &inner.reader {
            let got = match r.entries.get(name) {
                None => Err("it does not hold it".to_string()),
                Some(e) if e.layout != l => Err(format!("it holds {:?}, not {l:?}", e.layout)),
                Some(e) => k
                    .packed_from_shared(l, r.map.clone(), e.offset, e.len)
                    .map_err(|e| e.to_string()),
            };
            match got {
                Ok(w) => {
                    inner.used.insert(name.to_string());
                    return Ok(w);
                }
                Err(why) => {
                    inner.stale.get_or_insert(format!("{name}: {why}"));
                }
            }
        }
        let w = pack()?;
        if let Some(wr) = &mut inner.writer {
            if let Err(e) = wr.append(name, w.layout(), w.as_bytes()) {
                inner.notes.push(format!("packed weights not cached: {e}"));
                inner.writer = None;
            }
        }
        Ok(w)
    }

    /// Publishes the file being written, or drops a file that could not serve the whole load.
    pub fn finish(self) -> WeightCacheReport {
        let mut inner = self.inner.into_inner();
        let mut notes = std::mem::take(&mut inner.notes);
        let outcome = if let Some(r) = inner.reader.take() {
            let path = inner.path.take().unwrap_or_default();
            let unused = r.entries.len() - inner.used.len();
            match inner.stale.take() {
                None if unused == 0 => CacheOutcome::Hit {
                    path,
                    bytes: r.bytes,
                },
                why => {
                    let why = why.unwrap_or_else(|| format!("{unused} of its weights unused"));
                    let _ = std::fs::remove_file(&path);
                    notes.push(format!(
                        "packed-weight cache {} does not match this load ({why}): removed; the next load rewrites it",
                        path.display()
                    ));
                    CacheOutcome::NotWritten
                }
            }
        } else if let Some(w) = inner.writer.take() {
            if w.count() == 0 {
                CacheOutcome::Off
            } else {
                match w.commit(&inner.key) {
                    Ok((path, bytes)) => {
                        notes.push(format!(
                            "packed weights cached: {} in {}",
                            gb(bytes),
                            path.display()
                        ));
                        CacheOutcome::Written { path, bytes }
                    }
                    Err(e) => {
                        notes.push(format!("packed weights not cached: {e}"));
                        CacheOutcome::NotWritten
                    }
                }
            }
        } else if inner.path.is_some() {
            CacheOutcome::NotWritten
        } else {
            CacheOutcome::Off
        };
        WeightCacheReport { outcome, notes }
    }
}

/// A writer for `path`, after checking the room left (roughly the checkpoint's size when nothing is
/// quantized) and removing temporary files of crashed writers of this slot.
fn start_writer(
    cache_dir: &Path,
    path: &Path,
    weights: &Weights,
    opts: &LoadOptions,
) -> Result<Writer, String> {
    std::fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    remove_orphans(path);
    if opts.quant.is_none() && opts.vision_quant.is_none() {
        let need = weights.total_bytes();
        file::room(file::free_bytes(cache_dir), need, cache_dir, "they take")?;
    }
    Writer::create(path)
}

/// Removes `<path>.tmp<pid>` files whose process is gone (a writer killed mid-load). Linux only (where
/// `/proc` tells whether a process lives).
fn remove_orphans(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!("{}.tmp", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The file name of the cache slot of `dir` at this level with these quantization options.
fn slot_name(dir: &Path, k: &Kernels, opts: &LoadOptions) -> String {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base: String = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let id = format!(
        "{}\n{:?}\n{:?}",
        canon.display(),
        opts.quant.map(|q| q.name()),
        opts.vision_quant.map(|q| q.name())
    );
    format!("{base}-{}-{:016x}.qwpk", k.isa(), fnv64(id.as_bytes()))
}

/// Everything the cached panels depend on, one item per line (see the module docs).
fn cache_key(
    dir: &Path,
    weights: &Weights,
    k: &Kernels,
    opts: &LoadOptions,
) -> Result<String, String> {
    let (group, layout) = layout_probe(k)?;
    let mut key = format!(
        "qwen3vl packed-weight cache format {}\nengine {}\nisa {} group {group}\nlayout {layout:016x}\nquant {:?} vision {:?}\n",
        file::FORMAT_VERSION,
        env!("CARGO_PKG_VERSION"),
        k.isa(),
        opts.quant.map(|q| q.name()),
        opts.vision_quant.map(|q| q.name()),
    );
    let config = std::fs::read(dir.join("config.json")).map_err(|e| format!("config.json: {e}"))?;
    key += &format!("config.json {:016x}\n", fnv64(&config));
    let index = dir.join("model.safetensors.index.json");
    let files = weights
        .file_paths()
        .map(Path::to_path_buf)
        .chain(index.exists().then_some(index));
    for p in files {
        let m = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        key += &format!("file {name} {} bytes mtime {mtime}\n", m.len());
    }
    Ok(key)
}

/// (group, hash of the panels of small bf16, f32 and SwiGLU weights packed by `k`): changes whenever the
/// packers' layout does, so a cache can never outlive the layout it was written in.
fn layout_probe(k: &Kernels) -> Result<(usize, u64), String> {
    let (n, kk) = (67usize, 5usize);
    let w32: Vec<f32> = (0..n * kk).map(|i| i as f32 + 0.5).collect();
    let w16: Vec<u16> = (0..n * kk).map(|i| 0x3f80 + i as u16).collect();
    let err = |e: qwen3vl_kernels::KernelError| format!("layout probe: {e}");
    let a = k.pack_weight(Weight::Bf16(&w16), n, kk).map_err(err)?;
    let b = k.pack_weight(Weight::F32(&w32), n, kk).map_err(err)?;
    let c = k
        .pack_swiglu(Weight::Bf16(&w16), Weight::Bf16(&w16), n, kk)
        .map_err(err)?;
    let mut all = Vec::new();
    for p in [&a, &b, &c] {
        all.extend_from_slice(p.as_bytes());
    }
    Ok((a.group(), fnv64(&all)))
}
