//! `pull`: the files the engine needs at the commit a revision points to, into the cache, verified.
//!
//! Per file: a blob already in the cache is hashed and kept if it matches the Hub's metadata (else
//! deleted and fetched again); a missing blob is streamed into `blobs/<etag>.incomplete`, resuming
//! from that file's length with `Range: bytes=N-`, then hashed whole (so a resumed file is checked
//! end to end) and renamed into place only if size and hash match. A dropped connection is resumed twice before it is reported; a hash mismatch
//! deletes the download and fetches it once more from byte 0.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::cache::{self, INDEX, OPTIONAL, REQUIRED, SINGLE};
use crate::http::{Check, Client, RemoteFile};
use crate::{io_err, HubError, HubId, HubOptions, Progress};

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    /// The snapshot directory (`.../snapshots/<commit>`), ready to load.
    pub dir: PathBuf,
    pub commit: String,
    /// Files of the checkpoint (all verified).
    pub files: usize,
    /// Total bytes of those files.
    pub bytes: u64,
    /// Files fetched over the network (new, resumed or replacing a corrupt cached copy).
    pub fetched: Vec<String>,
    /// Cached files that failed verification and were fetched again.
    pub corrupt: Vec<String>,
    /// Bytes received over the network.
    pub received: u64,
    /// True when the Hub was not asked (`HF_HUB_OFFLINE`).
    pub offline: bool,
}

/// Resumes after a dropped connection before the error is reported.
const RESUMES: usize = 2;

/// Ask the Hub which commit `id` points to, bring every file the engine needs into the cache
/// (verifying cached ones), and record the revision in `refs/`. With `opts.offline`, the cache alone.
pub fn pull(
    id: &HubId,
    opts: &HubOptions,
    progress: Option<Progress>,
) -> Result<PullReport, HubError> {
    if opts.offline {
        let dir = cache::offline_snapshot(opts, id)?;
        let commit = dir
            .file_name()
            .map(|c| c.to_string_lossy().to_string())
            .unwrap_or_default();
        return Ok(PullReport {
            dir,
            commit,
            offline: true,
            ..PullReport::default()
        });
    }
    let client = Client::new(opts, id);
    let info = client.repo_info()?;
    let commit = info.commit.clone();
    let not_ckpt = |why: String| HubError::NotACheckpoint {
        id: id.to_string(),
        commit: commit.clone(),
        why,
    };
    let by_name: HashMap<&str, &RemoteFile> =
        info.files.iter().map(|f| (f.name.as_str(), f)).collect();
    for f in REQUIRED {
        if !by_name.contains_key(f) {
            return Err(not_ckpt(format!("the repository has no {f}")));
        }
    }
    let mut wanted: Vec<&RemoteFile> = REQUIRED
        .iter()
        .chain(OPTIONAL.iter())
        .filter_map(|f| by_name.get(f).copied())
        .collect();
    let index = by_name.get(INDEX).copied();
    let shards: Vec<&RemoteFile> = match (index, by_name.get(SINGLE)) {
        (Some(_), _) => Vec::new(), // named by the index, read below
        (None, Some(single)) => vec![single],
        (None, None) => {
            return Err(not_ckpt(format!(
                "the repository has neither {SINGLE} nor {INDEX}"
            )))
        }
    };
    wanted.extend(shards);
    let state = State {
        client: &client,
        opts,
        id,
        commit: &commit,
        done: AtomicU64::new(0),
        total: AtomicU64::new(wanted.iter().chain(index.iter()).map(|f| f.size).sum()),
        received: AtomicU64::new(0),
        progress,
    };
    let mut outcomes = Vec::new();
    if let Some(index) = index {
        // The index names the shards: fetch it first, then the shards with the rest.
        outcomes.push((index.name.clone(), ensure_file(&state, index)?));
        let path = cache::snapshot_dir(&opts.cache, id, &commit).join(INDEX);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let names = cache::index_shards(&text).map_err(|e| not_ckpt(format!("{INDEX}: {e}")))?;
        for n in names {
            let f = by_name.get(n.as_str()).copied().ok_or_else(|| {
                not_ckpt(format!(
                    "{INDEX} names {n}, which the repository does not have"
                ))
            })?;
            state.total.fetch_add(f.size, Ordering::Relaxed);
            wanted.push(f);
        }
    }
    check_space(opts, id, &wanted)?;
    outcomes.extend(ensure_all(&state, &wanted)?);
    cache::write_ref(&opts.cache, id, &commit)?;
    let dir = cache::snapshot_dir(&opts.cache, id, &commit);
    let missing = cache::missing_files(&dir);
    if !missing.is_empty() {
        return Err(not_ckpt(format!(
            "after download still missing {}",
            missing.join(", ")
        )));
    }
    let mut report = PullReport {
        dir,
        commit: commit.clone(),
        files: outcomes.len(),
        bytes: state.total.load(Ordering::Relaxed),
        received: state.received.load(Ordering::Relaxed),
        ..PullReport::default()
    };
    for (name, o) in outcomes {
        match o {
            Outcome::Cached => {}
            Outcome::Fetched => report.fetched.push(name),
            Outcome::Corrupt => {
                report.fetched.push(name.clone());
                report.corrupt.push(name);
            }
        }
    }
    Ok(report)
}

struct State<'a> {
    client: &'a Client<'a>,
    opts: &'a HubOptions,
    id: &'a HubId,
    commit: &'a str,
    done: AtomicU64,
    total: AtomicU64,
    received: AtomicU64,
    progress: Option<Progress<'a>>,
}

impl State<'_> {
    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(p) = self.progress {
            p(done, self.total.load(Ordering::Relaxed));
        }
    }
    fn rewind(&self, n: u64) {
        self.done.fetch_sub(n, Ordering::Relaxed);
    }
}

enum Outcome {
    Cached,
    Fetched,
    Corrupt,
}

/// Every file, `opts.jobs` at a time; the first error stops the others from starting new files.
fn ensure_all(state: &State, files: &[&RemoteFile]) -> Result<Vec<(String, Outcome)>, HubError> {
    let queue: Mutex<VecDeque<&RemoteFile>> = Mutex::new(files.iter().copied().collect());
    let results = Mutex::new(Vec::new());
    let first_error: Mutex<Option<HubError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let workers = state.opts.jobs.clamp(1, 16).min(files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(f) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        break;
                    };
                    match ensure_file(state, f) {
                        Ok(o) => results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((f.name.clone(), o)),
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Refuse before downloading when the cache's file system cannot hold what is missing.
fn check_space(opts: &HubOptions, id: &HubId, files: &[&RemoteFile]) -> Result<(), HubError> {
    let mut need = 0u64;
    for f in files {
        let blob = cache::blob_path(&opts.cache, id, &f.etag);
        if blob.is_file() {
            continue;
        }
        let part = PathBuf::from(format!("{}.incomplete", blob.display()));
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        need = need.saturating_add(f.size.saturating_sub(have));
    }
    let dir = cache::repo_dir(&opts.cache, id);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    match free_bytes(&dir) {
        Some(free) if free < need => Err(HubError::NoSpace {
            id: id.to_string(),
            dir,
            need,
            free,
        }),
        _ => Ok(()),
    }
}

/// Bytes available to us on the file system holding `dir` (None where unknown).
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// One file into the cache and linked into the snapshot.
fn ensure_file(state: &State, f: &RemoteFile) -> Result<Outcome, HubError> {
    let cache = &state.opts.cache;
    let blob = cache::blob_path(cache, state.id, &f.etag);
    let blobs = blob.parent().unwrap_or(cache);
    std::fs::create_dir_all(blobs).map_err(io_err(blobs))?;
    let _lock = cache::lock_blob(cache, state.id, &f.etag)?;
    let mut outcome = Outcome::Fetched;
    if blob.is_file() {
        if hash_file(&blob, f)?.is_ok() {
            state.advance(f.size);
            cache::link(cache, state.id, state.commit, &f.name, &f.etag)?;
            return Ok(Outcome::Cached);
        }
        std::fs::remove_file(&blob).map_err(io_err(&blob))?;
        outcome = Outcome::Corrupt;
    }
    let part = PathBuf::from(format!("{}.incomplete", blob.display()));
    // A copy that fails verification is deleted and fetched once more from byte 0.
    let mut second = false;
    loop {
        match download(state, f, &part)? {
            Ok(()) => {
                std::fs::rename(&part, &blob).map_err(io_err(&blob))?;
                cache::link(cache, state.id, state.commit, &f.name, &f.etag)?;
                return Ok(outcome);
            }
            Err((algo, expected, got)) => {
                std::fs::remove_file(&part).map_err(io_err(&part))?;
                state.rewind(f.size);
                if second {
                    return Err(HubError::Checksum {
                        file: format!("{} ({})", f.name, state.id),
                        algo,
                        expected,
                        got,
                    });
                }
                second = true;
            }
        }
    }
}

type Mismatch = (&'static str, String, String);

/// Bring `part` to the file's full length (resuming, with up to [`RESUMES`] reconnections) and
/// check it: Ok(Ok) verified, Ok(Err) hash mismatch (the caller deletes it), Err for anything else.
fn download(state: &State, f: &RemoteFile, part: &Path) -> Result<Result<(), Mismatch>, HubError> {
    let mut resumes = 0;
    loop {
        match download_once(state, f, part) {
            Err(HubError::Dropped { .. }) if resumes < RESUMES => resumes += 1,
            Err(e) => return Err(e),
            Ok(()) => return hash_file(part, f),
        }
    }
}

/// One GET from the length of `part` to the end of the file.
fn download_once(state: &State, f: &RemoteFile, part: &Path) -> Result<(), HubError> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > f.size {
        std::fs::remove_file(part).map_err(io_err(part))?;
        have = 0;
    }
    state.advance(have);
    if have == f.size {
        return Ok(());
    }
    let (body, restart) = state.client.open_file(state.commit, &f.name, have)?;
    let mut out = if restart {
        // The server ignored the range: start over.
        state.rewind(have);
        have = 0;
        File::create(part).map_err(io_err(part))?
    } else {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(io_err(part))?
    };
    let url = state.client.file_url(state.commit, &f.name);
    let dropped = |done: u64, msg: String| HubError::Dropped {
        url: url.clone(),
        file: f.name.clone(),
        done,
        total: f.size,
        partial: part.to_path_buf(),
        msg,
    };
    let mut reader = body.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let started = have;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().map_err(io_err(part))?;
                state.rewind(have);
                return Err(dropped(have, e.to_string()));
            }
        };
        if n == 0 {
            break;
        }
        if have + n as u64 > f.size {
            state.rewind(have);
            drop(out);
            std::fs::remove_file(part).map_err(io_err(part))?;
            return Err(HubError::BadResponse {
                url,
                msg: format!(
                    "more bytes than the {} the Hub lists for {}",
                    f.size, f.name
                ),
            });
        }
        out.write_all(&buf[..n]).map_err(io_err(part))?;
        have += n as u64;
        state.received.fetch_add(n as u64, Ordering::Relaxed);
        state.advance(n as u64);
    }
    out.flush().map_err(io_err(part))?;
    if have < f.size {
        state.rewind(have);
        return Err(dropped(
            have,
            format!(
                "the server closed the connection after {} bytes",
                have - started
            ),
        ));
    }
    Ok(())
}

/// Size and hash of a file against the Hub's metadata: Ok(Ok) matches, Ok(Err(algo, expected, got)).
fn hash_file(path: &Path, f: &RemoteFile) -> Result<Result<(), Mismatch>, HubError> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    let (algo, expected) = match &f.check {
        Check::Sha256(h) => ("sha256", h),
        Check::GitSha1(h) => ("git sha1", h),
    };
    if len != f.size {
        return Ok(Err((
            algo,
            format!("{} bytes", f.size),
            format!("{len} bytes"),
        )));
    }
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    if let Check::GitSha1(_) = f.check {
        sha1.update(format!("blob {len}\0").as_bytes());
    }
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        match f.check {
            Check::Sha256(_) => sha256.update(&buf[..n]),
            Check::GitSha1(_) => sha1.update(&buf[..n]),
        }
    }
    let got = match f.check {
        Check::Sha256(_) => hex(&sha256.finalize()),
        Check::GitSha1(_) => hex(&sha1.finalize()),
    };
    Ok(if &got == expected {
        Ok(())
    } else {
        Err((algo, expected.clone(), got))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
