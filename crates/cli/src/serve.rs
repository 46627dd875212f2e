//! `qwen3vl serve`: parse the options and run the server crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use qwen3vl_server::media::MediaPolicy;
use qwen3vl_server::{Server, ServerOptions};

use crate::args::ModelArgs;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Sequences decoded together (one batched forward pass per step).
    #[arg(long, default_value_t = 4)]
    pub(crate) parallel: usize,
    /// Requests waiting behind the running ones; beyond that a request gets 429 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub(crate) queue: usize,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// KV cache memory shared by all sequences and the prefix cache, e.g. 2G, 512M (default: --parallel
    /// full contexts).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) kv_memory: Option<u64>,
    /// Allow `file://` image URLs inside this directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) allowed_media_dir: Option<PathBuf>,
    /// Fetch `http(s)` image and video URLs (public addresses only; 20 MB, 10 s, 3 redirects at most).
    #[arg(long)]
    pub(crate) allow_remote_media: bool,
    /// With --allow-remote-media: also fetch from private, loopback and link-local addresses (a media
    /// server on your LAN). Anyone who can reach this server can then make it fetch from your network.
    #[arg(long, requires = "allow_remote_media")]
    pub(crate) allow_private_media: bool,
    /// Most images in one request.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_images: usize,
    /// Largest request body, e.g. 32M.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub(crate) max_body: u64,
    /// Seconds a request may run before it is cancelled.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    /// The model name in responses and /v1/models (default: the checkpoint directory's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
}

/// `1234`, `64K`, `512M`, `2G`, `2GiB`, `1.5G` → bytes (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 512M or 2G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use K, M, G or T)"
            ))
        }
    };
    let v = x * mult as f64;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(v as u64)
}

pub(crate) fn cmd_serve(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .model
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "qwen3vl".into()),
    };
    let opts = ServerOptions {
        host: a.host.clone(),
        port: a.port,
        parallel: a.parallel,
        queue: a.queue,
        api_key: a.api_key.clone(),
        context: a.model.context,
        kv_memory: a.kv_memory,
        media: MediaPolicy {
            allowed_dir: a.allowed_media_dir.clone(),
            allow_remote: a.allow_remote_media,
            allow_private: a.allow_private_media,
            ..MediaPolicy::default()
        },
        max_images: a.max_images,
        body_limit: usize::try_from(a.max_body).unwrap_or(usize::MAX),
        request_timeout: Duration::from_secs(a.timeout.max(1)),
        model_name: name,
        ..ServerOptions::default()
    };
    let model = a.model;
    let server = Server::start(
        opts,
        Box::new(move || {
            let e = crate::load_engine(&model).map_err(|e| format!("{e:#}"))?;
            eprintln!("model loaded in {:.1} s; ready", e.load_seconds);
            Ok(e)
        }),
    )
    .map_err(|e| anyhow!(e))?;
    eprintln!(
        "listening on http://{} (loading the model; /health says 503 until it is ready)",
        server.addr()
    );
    server.join().map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("0").is_err());
    }
}
