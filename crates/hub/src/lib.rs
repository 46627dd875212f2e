//! Models by Hugging Face Hub id: `--model Qwen/Qwen3-VL-2B-Instruct[@revision]`.
//!
//! - [`resolve_model`]: the one function that turns a `--model` argument (a local directory or a Hub id)
//!   into a checkpoint directory, downloading what is missing.
//! - The cache is the standard Hugging Face layout, shared with `huggingface_hub` and transformers:
//!   `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) holds
//!   `models--owner--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/<revision>}`.
//! - Only the files the engine reads are fetched (config, tokenizer, chat template, processor and
//!   generation configs, the safetensors shards named by the index), shards concurrently, each resumed
//!   from its `.incomplete` file with an HTTP Range request and verified against the Hub's metadata
//!   (sha256 of LFS files, git blob sha1 of the others) before it enters the cache.
//! - Environment: `HF_ENDPOINT`, `HF_TOKEN` (else the `$HF_HOME/token` file), `HF_HOME`, `HF_HUB_CACHE`,
//!   `HF_HUB_OFFLINE`.
//!
//! Why not the `hf-hub` crate: 1.0.0 restarts an interrupted download from byte 0, verifies no hash,
//! ignores `HF_HUB_OFFLINE` and brings tokio, reqwest and hf-xet; 0.4.3 (ureq) resumes but verifies no
//! hash and ignores `HF_HUB_CACHE` and `HF_HUB_OFFLINE`. What we need is two GET routes, so this crate
//! is a small client on `ureq` (rustls) and `sha2`.

mod cache;
mod download;
#[cfg(feature = "fake-hub")]
pub mod fake_hub;
mod http;
mod id;

use std::path::{Path, PathBuf};

pub use cache::{list, missing_files, remove, CachedModel};
pub use download::{pull, PullReport};
pub use id::HubId;

/// Where the cache is, which Hub to ask and how.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The hub cache directory (holds `models--owner--name/`).
    pub cache: PathBuf,
    /// Base URL of the Hub, without a trailing `/`.
    pub endpoint: String,
    /// Bearer token for private and gated models.
    pub token: Option<String>,
    /// Never touch the network: use the cache or say what is missing.
    pub offline: bool,
    /// Files downloaded at the same time.
    pub jobs: usize,
}

impl HubOptions {
    /// From the process environment, as `huggingface_hub` reads it.
    pub fn from_env() -> HubOptions {
        HubOptions::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubOptions {
        let home = || var("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let truthy = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "on" | "yes" | "true"
                )
            })
        };
        HubOptions {
            cache,
            endpoint,
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            jobs: 4,
        }
    }
}

/// Bytes done and total, called as a download advances (from several threads).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Everything that can go wrong; each message is one line that names the model, file or URL.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{id:?} is not a Hugging Face Hub id ({why}); a Hub id is owner/name[@revision]")]
    BadId { id: String, why: String },
    #[error(
        "--model {arg}: {arg} does not exist, and it is not a Hugging Face Hub id either ({why})"
    )]
    NotDirOrId { arg: String, why: String },
    #[error("{id}: the Hub ({endpoint}) answered 401 Unauthorized{}", if *token_set { ": HF_TOKEN was refused (expired, or without access to this model)" } else { ": the model is private or gated, or does not exist; set HF_TOKEN to a token with access (https://huggingface.co/settings/tokens)" })]
    Unauthorized {
        id: String,
        endpoint: String,
        token_set: bool,
    },
    #[error("{id}: the Hub ({endpoint}) answered 403 Forbidden: a gated model needs its licence accepted on {endpoint}/{repo} by the account of HF_TOKEN{}", if *token_set { "" } else { " (HF_TOKEN is not set)" })]
    Forbidden {
        id: String,
        repo: String,
        endpoint: String,
        token_set: bool,
    },
    #[error("{id}: {what} not found on the Hub ({endpoint})")]
    NotFound {
        id: String,
        what: String,
        endpoint: String,
    },
    #[error("cannot reach the Hub at {endpoint} ({msg}); check the network, or set HF_HUB_OFFLINE=1 to use only models already in the cache")]
    Network { endpoint: String, msg: String },
    #[error("{url}: the connection dropped during the download of {file} ({done} of {total} bytes kept in {partial}): {msg}; run the command again to resume")]
    Dropped {
        url: String,
        file: String,
        done: u64,
        total: u64,
        partial: PathBuf,
        msg: String,
    },
    #[error("{url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: {msg}")]
    BadResponse { url: String, msg: String },
    #[error("{file}: downloaded twice and both copies failed verification ({algo} {got}, the Hub says {expected})")]
    Checksum {
        file: String,
        algo: &'static str,
        expected: String,
        got: String,
    },
    #[error("HF_HUB_OFFLINE is set and {id} is not complete in the cache {cache}: missing {}; download it first (qwen3vl pull {id}) or unset HF_HUB_OFFLINE", missing.join(", "))]
    Offline {
        id: String,
        cache: PathBuf,
        missing: Vec<String>,
    },
    #[error("{id}: not enough disk space in {dir}: the download needs {} MB more, {} MB are free (HF_HUB_CACHE or HF_HOME put the cache elsewhere)", need.div_ceil(1_000_000), free / 1_000_000)]
    NoSpace {
        id: String,
        dir: PathBuf,
        need: u64,
        free: u64,
    },
    #[error("{id} is not in the cache {cache}")]
    NotCached { id: String, cache: PathBuf },
    #[error("{id} (commit {commit}) is not a checkpoint this engine can load: {why}")]
    NotACheckpoint {
        id: String,
        commit: String,
        why: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A `--model` argument to a checkpoint directory: an existing path as is; else a Hub id
/// (`owner/name[@revision]`) through the cache, downloading what is missing unless `HF_HUB_OFFLINE`
/// is set. A complete snapshot in the cache is used without asking the Hub (`qwen3vl pull` asks).
pub fn resolve_model(arg: &Path, progress: Option<Progress>) -> Result<PathBuf, HubError> {
    resolve_model_with(arg, &HubOptions::from_env(), progress)
}

/// [`resolve_model`] with explicit options.
pub fn resolve_model_with(
    arg: &Path,
    opts: &HubOptions,
    progress: Option<Progress>,
) -> Result<PathBuf, HubError> {
    if arg.exists() {
        // A directory; or a file, which the loader reports as not a directory.
        return Ok(arg.to_path_buf());
    }
    let text = arg.to_string_lossy();
    let id = HubId::parse(&text).map_err(|e| match e {
        HubError::BadId { why, .. } => HubError::NotDirOrId {
            arg: text.to_string(),
            why,
        },
        e => e,
    })?;
    if let Some(dir) = cache::complete_snapshot(&opts.cache, &id) {
        return Ok(dir);
    }
    Ok(pull(&id, opts, progress)?.dir)
}
