//! The Hugging Face cache layout (as `huggingface_hub` writes it, so either side finds the other's files):
//!
//! ```text
//! <cache>/models--owner--name/
//!     blobs/<etag>                     the file's bytes; etag = sha256 (LFS files) or git blob sha1
//!     blobs/<etag>.incomplete          a download in progress (resumed from its length)
//!     snapshots/<commit>/<file>        relative symlink -> ../../blobs/<etag>
//!     refs/<revision>                  the commit a branch or tag pointed to when last asked
//! <cache>/.locks/models--owner--name/<etag>.lock   flock while a blob is being written
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::id::is_commit;
use crate::{io_err, HubError, HubId, HubOptions};

/// The files a checkpoint cannot load without (besides the weights).
pub(crate) const REQUIRED: [&str; 3] =
    ["config.json", "tokenizer.json", "preprocessor_config.json"];
/// Everything else the engine reads when present.
pub(crate) const OPTIONAL: [&str; 5] = [
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
];
pub(crate) const INDEX: &str = "model.safetensors.index.json";
pub(crate) const SINGLE: &str = "model.safetensors";

pub(crate) fn repo_dir(cache: &Path, id: &HubId) -> PathBuf {
    cache.join(id.folder())
}

pub(crate) fn blob_path(cache: &Path, id: &HubId, etag: &str) -> PathBuf {
    repo_dir(cache, id).join("blobs").join(etag)
}

pub(crate) fn snapshot_dir(cache: &Path, id: &HubId, commit: &str) -> PathBuf {
    repo_dir(cache, id).join("snapshots").join(commit)
}

/// The commit the cache knows for the revision asked: the revision itself if it is a commit with a
/// snapshot, else the commit in `refs/<revision>`.
pub(crate) fn cached_commit(cache: &Path, id: &HubId) -> Option<String> {
    let rev = id.revision();
    if is_commit(rev) {
        return snapshot_dir(cache, id, rev)
            .is_dir()
            .then(|| rev.to_string());
    }
    let text = std::fs::read_to_string(repo_dir(cache, id).join("refs").join(rev)).ok()?;
    let commit = text.trim();
    is_commit(commit).then(|| commit.to_string())
}

/// The shard file names of a `model.safetensors.index.json` (sorted, each once; plain file names only).
pub(crate) fn index_shards(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or("no weight_map object")?;
    let mut shards: Vec<String> = Vec::new();
    for (key, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| format!("weight_map[{key}] is not a file name"))?;
        if f.is_empty() || f.contains(['/', '\\']) || f.starts_with('.') {
            return Err(format!(
                "weight_map[{key}] = {f:?} is not a plain file name"
            ));
        }
        shards.push(f.to_string());
    }
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err("weight_map is empty".into());
    }
    Ok(shards)
}

/// The files a checkpoint directory still lacks before the engine can load it (empty: complete):
/// config, tokenizer, image processor config, and the weights (`model.safetensors`, or the index and
/// every shard it names).
pub fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let index = dir.join(INDEX);
    if index.is_file() {
        match std::fs::read_to_string(&index)
            .map_err(|e| e.to_string())
            .and_then(|t| index_shards(&t))
        {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            Err(_) => missing.push(INDEX.into()),
        }
    } else if !dir.join(SINGLE).is_file() {
        missing.push(format!("{SINGLE} (or {INDEX})"));
    }
    missing
}

/// The snapshot directory for `id` if the cache holds every file the engine needs.
pub(crate) fn complete_snapshot(cache: &Path, id: &HubId) -> Option<PathBuf> {
    let dir = snapshot_dir(cache, id, &cached_commit(cache, id)?);
    missing_files(&dir).is_empty().then_some(dir)
}

/// Offline: the complete snapshot, or an error listing what is missing.
pub(crate) fn offline_snapshot(opts: &HubOptions, id: &HubId) -> Result<PathBuf, HubError> {
    let missing = match cached_commit(&opts.cache, id) {
        Some(commit) => {
            let dir = snapshot_dir(&opts.cache, id, &commit);
            let missing = missing_files(&dir);
            if missing.is_empty() {
                return Ok(dir);
            }
            missing
        }
        None => vec![format!(
            "{} (no snapshot for revision {})",
            repo_dir(&opts.cache, id).display(),
            id.revision()
        )],
    };
    Err(HubError::Offline {
        id: id.to_string(),
        cache: opts.cache.clone(),
        missing,
    })
}

/// Record that `revision` points to `commit` (`refs/<revision>`).
pub(crate) fn write_ref(cache: &Path, id: &HubId, commit: &str) -> Result<(), HubError> {
    let rev = id.revision();
    if rev == commit {
        return Ok(());
    }
    let path = repo_dir(cache, id).join("refs").join(rev);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, commit).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Point `snapshots/<commit>/<file>` at `blobs/<etag>` (a relative symlink, replacing an old entry).
pub(crate) fn link(
    cache: &Path,
    id: &HubId,
    commit: &str,
    file: &str,
    etag: &str,
) -> Result<(), HubError> {
    let path = snapshot_dir(cache, id, commit).join(file);
    let parent = path.parent().unwrap_or(&path);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    // snapshots/<commit>/<a/b/file> -> ../../(../..)blobs/<etag>
    let depth = file.split('/').count() + 1;
    let target: PathBuf = std::iter::repeat_n("..", depth)
        .collect::<PathBuf>()
        .join("blobs")
        .join(etag);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => std::fs::remove_file(&path).map_err(io_err(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(&target, &path);
    #[cfg(not(unix))]
    let r = std::fs::copy(blob_path(cache, id, etag), &path).map(|_| ());
    r.map_err(io_err(&path))
}

/// An exclusive lock on one blob while it is written (`flock`, as `huggingface_hub`'s filelock takes
/// it), so two processes never write the same `.incomplete` file. Released on drop.
pub(crate) struct BlobLock {
    _file: File,
}

pub(crate) fn lock_blob(cache: &Path, id: &HubId, etag: &str) -> Result<BlobLock, HubError> {
    let dir = cache.join(".locks").join(id.folder());
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(format!("{etag}.lock"));
    let file = File::create(&path).map_err(io_err(&path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&path)(std::io::Error::last_os_error()));
        }
    }
    Ok(BlobLock { _file: file })
}

/// A model in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    /// `owner/name`.
    pub repo: String,
    /// The repository folder.
    pub path: PathBuf,
    /// Bytes of complete blobs.
    pub size: u64,
    /// Bytes of interrupted downloads (`.incomplete`), resumed by the next download.
    pub incomplete: u64,
    /// (revision, commit) from `refs/`.
    pub refs: Vec<(String, String)>,
    /// Commits with a snapshot folder, and whether the engine can load it as is.
    pub snapshots: Vec<(String, bool)>,
}

/// Every model repository in the cache (datasets and spaces are not listed), sorted by id.
pub fn list(cache: &Path) -> Result<Vec<CachedModel>, HubError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(cache)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(cache))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("models--") else {
            continue;
        };
        let Some((owner, model)) = rest.split_once("--") else {
            continue;
        };
        let path = entry.path();
        let (mut size, mut incomplete) = (0, 0);
        if let Ok(blobs) = std::fs::read_dir(path.join("blobs")) {
            for b in blobs.flatten() {
                let len = b.metadata().map(|m| m.len()).unwrap_or(0);
                if b.file_name().to_string_lossy().ends_with(".incomplete") {
                    incomplete += len;
                } else {
                    size += len;
                }
            }
        }
        let mut refs = Vec::new();
        collect_refs(&path.join("refs"), "", &mut refs);
        refs.sort();
        let mut snapshots: Vec<(String, bool)> = std::fs::read_dir(path.join("snapshots"))
            .map(|d| {
                d.flatten()
                    .map(|s| {
                        let commit = s.file_name().to_string_lossy().to_string();
                        (commit, missing_files(&s.path()).is_empty())
                    })
                    .collect()
            })
            .unwrap_or_default();
        snapshots.sort();
        out.push(CachedModel {
            repo: format!("{owner}/{model}"),
            path,
            size,
            incomplete,
            refs,
            snapshots,
        });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            collect_refs(&e.path(), &format!("{name}/"), out);
        } else if let Ok(t) = std::fs::read_to_string(e.path()) {
            out.push((name, t.trim().to_string()));
        }
    }
}

/// Delete a model from the cache: the whole repository folder (every revision) and its locks.
/// Returns the bytes freed. An id with `@revision` is refused: blobs are shared between revisions.
pub fn remove(cache: &Path, id: &HubId) -> Result<u64, HubError> {
    if id.revision.is_some() {
        return Err(HubError::BadId {
            id: id.to_string(),
            why: "rm removes a model with all its revisions; give owner/name without @revision"
                .into(),
        });
    }
    let dir = repo_dir(cache, id);
    if !dir.is_dir() {
        return Err(HubError::NotCached {
            id: id.to_string(),
            cache: cache.to_path_buf(),
        });
    }
    let freed = list(cache)?
        .iter()
        .find(|m| m.path == dir)
        .map(|m| m.size + m.incomplete)
        .unwrap_or(0);
    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    let locks = cache.join(".locks").join(id.folder());
    if locks.is_dir() {
        std::fs::remove_dir_all(&locks).map_err(io_err(&locks))?;
    }
    Ok(freed)
}
