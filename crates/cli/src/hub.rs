//! Models by Hugging Face Hub id: `--model` resolution and the `pull`, `list`, `rm` subcommands.
//! The work is in `qwen3vl_engine::hub`; this file parses, draws a progress bar and prints.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use qwen3vl_engine::hub::{self, HubId, HubOptions};

/// `qwen3vl pull ID`.
#[derive(Args)]
pub(crate) struct PullArgs {
    /// Hub id: owner/name[@revision] (a branch, tag or commit; default main).
    id: String,
}

/// `qwen3vl list`.
#[derive(Args)]
pub(crate) struct ListArgs {
    /// Print one JSON array: [{"id", "size", "incomplete", "refs", "snapshots", "path"}].
    #[arg(long)]
    json: bool,
}

/// `qwen3vl rm ID`.
#[derive(Args)]
pub(crate) struct RmArgs {
    /// Hub id: owner/name (every revision is removed).
    id: String,
}

/// A `--model` argument (a directory or a Hub id) to a checkpoint directory, downloading what is
/// missing with a progress bar (on a terminal).
pub(crate) fn resolve(model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let bar = crate::progress_bar(&format!("fetching {}", model.display()));
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let dir = qwen3vl_engine::resolve_model(model, Some(&progress)).map_err(|e| match e {
        hub::HubError::NotDirOrId { .. } => anyhow::Error::new(e),
        // Say why the Hub was asked: a mistyped relative path looks like owner/name.
        e => anyhow::Error::new(e).context(format!(
            "--model {}: no such directory, so it was taken as a Hugging Face Hub id",
            model.display()
        )),
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(dir)
}

/// The first 12 characters of a commit id.
fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub(crate) fn cmd_pull(a: &PullArgs) -> Result<()> {
    let id = HubId::parse(&a.id)?;
    let opts = HubOptions::from_env();
    let bar = crate::progress_bar(&format!("fetching {id}"));
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let r = hub::pull(&id, &opts, Some(&progress))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if r.offline {
        eprintln!("{id}: in the cache (HF_HUB_OFFLINE is set, the Hub was not asked)");
    } else {
        let corrupt = if r.corrupt.is_empty() {
            String::new()
        } else {
            format!(
                "; replaced {} cached file(s) that failed verification: {}",
                r.corrupt.len(),
                r.corrupt.join(", ")
            )
        };
        eprintln!(
            "{id}: commit {}, {} files, {} verified, {} downloaded{corrupt}",
            short(&r.commit),
            r.files,
            mb(r.bytes),
            mb(r.received),
        );
    }
    // The directory on stdout, for scripts: `dir=$(qwen3vl pull owner/name)`.
    writeln!(std::io::stdout().lock(), "{}", r.dir.display())?;
    Ok(())
}

pub(crate) fn cmd_list(a: &ListArgs) -> Result<()> {
    let opts = HubOptions::from_env();
    let models = hub::list(&opts.cache)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let v: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.repo,
                    "size": m.size,
                    "incomplete": m.incomplete,
                    "refs": m.refs.iter().map(|(r, c)| serde_json::json!({"revision": r, "commit": c})).collect::<Vec<_>>(),
                    "snapshots": m.snapshots.iter().map(|(c, ok)| serde_json::json!({"commit": c, "complete": ok})).collect::<Vec<_>>(),
                    "path": m.path,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if models.is_empty() {
        eprintln!("no models in {}", opts.cache.display());
        return Ok(());
    }
    let width = models
        .iter()
        .map(|m| m.repo.len())
        .max()
        .unwrap_or(0)
        .max(2);
    writeln!(out, "{:width$}  {:>10}  revisions", "id", "size")?;
    for m in &models {
        let mut revs: Vec<String> = m
            .refs
            .iter()
            .map(|(r, c)| format!("{r}={}", short(c)))
            .collect();
        for (c, ok) in &m.snapshots {
            if !m.refs.iter().any(|(_, rc)| rc == c) {
                revs.push(short(c));
            }
            if !ok {
                revs.push(format!("({} incomplete)", short(c)));
            }
        }
        if m.incomplete > 0 {
            revs.push(format!("(+{} partial download)", mb(m.incomplete)));
        }
        writeln!(
            out,
            "{:width$}  {:>10}  {}",
            m.repo,
            mb(m.size),
            revs.join(" ")
        )?;
    }
    writeln!(out, "cache: {}", opts.cache.display())?;
    Ok(())
}

pub(crate) fn cmd_rm(a: &RmArgs) -> Result<()> {
    let id = HubId::parse(&a.id)?;
    let opts = HubOptions::from_env();
    let freed = hub::remove(&opts.cache, &id)?;
    eprintln!(
        "removed {id} from {} ({} freed)",
        opts.cache.display(),
        mb(freed)
    );
    Ok(())
}
