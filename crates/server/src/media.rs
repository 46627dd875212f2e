//! Image and video sources of a request: `data:` URIs (base64), `file://` paths inside
//! `--allowed-media-dir`, and `http(s)` URLs only with `--allow-remote-media` (size, time and redirect
//! limits; private, loopback and link-local addresses refused). Returns the encoded bytes; decoding is the
//! processor's (with its limits).
//!
//! A host name is resolved once per connection, every address is checked, and the connection goes to the
//! checked addresses (the HTTP client's resolver is [`Vetted`]): a name that resolves to a public address
//! for the check and to a private one for the connection (DNS rebinding) cannot reach the private one.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::api::ApiError;

/// Host name and port to socket addresses: the system resolver, or a stand-in (tests).
#[derive(Clone)]
pub struct Lookup(Arc<LookupFn>);

type LookupFn = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

impl Lookup {
    pub fn new(
        f: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Lookup {
        Lookup(Arc::new(f))
    }
}

impl Default for Lookup {
    /// The system resolver (`getaddrinfo`).
    fn default() -> Self {
        Lookup::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
    }
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lookup")
    }
}

/// Where images and videos may come from.
#[derive(Clone, Debug)]
pub struct MediaPolicy {
    /// `file://` URLs are served only from inside this directory.
    pub allowed_dir: Option<PathBuf>,
    /// `http(s)` URLs are fetched only when set.
    pub allow_remote: bool,
    /// Also fetch from private, loopback and link-local addresses (a media server on the LAN; tests).
    pub allow_private: bool,
    /// How host names are resolved (once per connection; the connection uses the checked addresses).
    pub lookup: Lookup,
    /// Largest encoded image or video accepted (data URI, file or download), in bytes.
    pub max_bytes: u64,
    /// Whole-download time limit.
    pub timeout: Duration,
    /// Redirects followed (each checked like the first URL).
    pub max_redirects: usize,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        MediaPolicy {
            allowed_dir: None,
            allow_remote: false,
            allow_private: false,
            lookup: Lookup::default(),
            max_bytes: 20 << 20,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }
}

/// The encoded bytes of the image or video at `url`; `param` names the field for errors
/// (`messages[0].content[1].video_url`: its last word says which kind of media it is).
pub fn fetch(url: &str, param: &str, policy: &MediaPolicy) -> Result<Vec<u8>, ApiError> {
    let bad = |m: String| ApiError::invalid(param, format!("{param}: {m}"));
    let what = if param.ends_with("video_url") {
        "video"
    } else {
        "image"
    };
    if let Some(rest) = url.strip_prefix("data:") {
        return decode_data_uri(rest, policy.max_bytes).map_err(bad);
    }
    if let Some(path) = url.strip_prefix("file://") {
        return read_file(Path::new(path), policy).map_err(bad);
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https:/") {
        if !policy.allow_remote {
            return Err(bad(
                format!(
                    "http(s) {what} URLs are disabled on this server (start it with --allow-remote-media); \
                     send the {what} as a data: URI"
                ),
            ));
        }
        return download(url, policy).map_err(bad);
    }
    Err(bad(format!(
        "unsupported {what} URL {:?}: use a data: URI (base64), a file:// path or an http(s) URL",
        url.chars().take(40).collect::<String>()
    )))
}

/// `data:[<mediatype>][;base64],<data>` (after `data:`). Only base64 payloads: images are binary.
fn decode_data_uri(rest: &str, max_bytes: u64) -> Result<Vec<u8>, String> {
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err("the data URI has no comma before its data".into());
    };
    if !meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(
            "the data URI is not base64 (expected data:image/...;base64,... or data:video/...;base64,...)"
                .into(),
        );
    }
    // Decoded size is 3/4 of the text: refuse before decoding.
    if payload.len() as u64 / 4 * 3 > max_bytes {
        return Err(format!(
            "the data is about {} bytes, over the limit of {max_bytes} bytes",
            payload.len() / 4 * 3
        ));
    }
    let clean: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(clean.as_bytes()))
        .map_err(|e| format!("the data URI is not valid base64: {e}"))
}

fn read_file(path: &Path, policy: &MediaPolicy) -> Result<Vec<u8>, String> {
    let Some(dir) = &policy.allowed_dir else {
        return Err(
            "file:// media URLs are disabled on this server (start it with --allowed-media-dir DIR)"
                .into(),
        );
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("--allowed-media-dir {}: {e}", dir.display()))?;
    // Canonical paths: `..` and symlinks cannot leave the directory.
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !real.starts_with(&dir) {
        return Err(format!(
            "{} is outside the allowed media directory",
            path.display()
        ));
    }
    let f =
        std::fs::File::open(&real).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    read_limited(f, policy.max_bytes)
}

fn read_limited(r: impl Read, max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("reading the data: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("the data is over the limit of {max} bytes"));
    }
    Ok(out)
}

/// Is `ip` a public unicast address (not loopback, private, link-local, shared, multicast, unspecified,
/// documentation or reserved)? Only such addresses are fetched from (no requests into the server's own
/// network on a client's behalf).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64 into anything
        }
    }
}

/// Host and port of an http(s) URL.
fn host_port(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        s => return Err(format!("scheme {s:?} is not http or https")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default,
        };
        return Ok((h.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port {p:?}"))?,
        )),
        None => Ok((hostport.to_string(), default)),
    }
}

/// The addresses to connect to for `host:port`: resolved once with `policy.lookup` (an IP literal is
/// taken as is), every one public unless `policy.allow_private`.
pub fn vetted_addrs(
    host: &str,
    port: u16,
    policy: &MediaPolicy,
) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            (policy.lookup.0)(bare, port).map_err(|e| format!("cannot resolve {bare}: {e}"))?
        }
    };
    if addrs.is_empty() {
        return Err(format!("{bare} resolves to no address"));
    }
    if !policy.allow_private {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "{bare} resolves to {}, a private, loopback or reserved address: refused",
                a.ip()
            ));
        }
    }
    Ok(addrs)
}

/// Every address `url`'s host resolves to must be public (or `policy.allow_private`).
pub fn check_remote(url: &str, policy: &MediaPolicy) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = host_port(url)?;
    vetted_addrs(&host, port, policy)
}

/// The HTTP client's resolver: [`vetted_addrs`], so the addresses checked are the addresses connected to.
/// A refusal's message is kept in `refused` for the error (the client's own error type loses it).
#[derive(Debug)]
struct Vetted {
    policy: MediaPolicy,
    refused: Arc<Mutex<Option<String>>>,
}

impl ureq::unversioned::resolver::Resolver for Vetted {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let checked = host_port(&uri.to_string())
            .and_then(|(host, port)| vetted_addrs(&host, port, &self.policy));
        match checked {
            Ok(addrs) => {
                let mut out = self.empty();
                // At most the client's 16 addresses; the rest are as vetted but unused.
                for a in addrs {
                    if out.try_push(a).is_err() {
                        break;
                    }
                }
                Ok(out)
            }
            Err(m) => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                Err(ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    m,
                )))
            }
        }
    }
}

fn download(url: &str, policy: &MediaPolicy) -> Result<Vec<u8>, String> {
    let refused = Arc::new(Mutex::new(None::<String>));
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(policy.timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        // A proxy would be resolved instead of the media host: connect directly.
        .proxy(None)
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Vetted {
            policy: policy.clone(),
            refused: refused.clone(),
        },
    );
    let mut url = url.to_string();
    for _ in 0..=policy.max_redirects {
        // Scheme and host checked before any lookup (the resolver checks the addresses).
        host_port(&url)?;
        let mut resp = agent.get(&url).call().map_err(|e| {
            match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(m) => m,
                None => format!("fetching {url}: {e}"),
            }
        })?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let loc = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("redirect {status} without a Location"))?;
            url = if loc.contains("://") {
                loc.to_string()
            } else {
                // A relative redirect: same scheme and host.
                let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
                let host = rest.split('/').next().unwrap_or("");
                format!("{scheme}://{host}/{}", loc.trim_start_matches('/'))
            };
            continue;
        }
        if status != 200 {
            return Err(format!("fetching {url}: HTTP {status}"));
        }
        if let Some(len) = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > policy.max_bytes {
                return Err(format!(
                    "{url} is {len} bytes, over the limit of {} bytes",
                    policy.max_bytes
                ));
            }
        }
        return read_limited(resp.body_mut().as_reader(), policy.max_bytes);
    }
    Err(format!(
        "more than {} redirects fetching {url}",
        policy.max_redirects
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn data_uris() {
        let p = MediaPolicy::default();
        assert_eq!(
            fetch("data:image/png;base64,aGVs bG8=", "img", &p).unwrap(),
            b"hello"
        );
        let e = fetch(
            "data:image/png;base64,@@@",
            "messages[0].content[0].image_url",
            &p,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].image_url"));
        assert!(e.message.contains("not valid base64"), "{}", e.message);
        assert!(fetch("data:image/png,abc", "i", &p)
            .unwrap_err()
            .message
            .contains("not base64"));
        assert!(fetch("data:abc", "i", &p)
            .unwrap_err()
            .message
            .contains("no comma"));
        let small = MediaPolicy {
            max_bytes: 4,
            ..Default::default()
        };
        assert!(fetch("data:;base64,aGVsbG8gd29ybGQ=", "i", &small)
            .unwrap_err()
            .message
            .contains("over the limit"));
        assert!(fetch("ftp://x/y.png", "i", &p)
            .unwrap_err()
            .message
            .contains("unsupported image URL"));
    }

    #[test]
    fn files_only_inside_the_allowed_dir() {
        let root = std::env::temp_dir().join(format!("qwen3vl-media-{}", std::process::id()));
        let inside = root.join("in");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("a.bin"), b"abc").unwrap();
        std::fs::write(root.join("secret"), b"no").unwrap();
        let url = |p: &Path| format!("file://{}", p.display());
        let off = MediaPolicy::default();
        assert!(fetch(&url(&inside.join("a.bin")), "i", &off)
            .unwrap_err()
            .message
            .contains("disabled"));
        let on = MediaPolicy {
            allowed_dir: Some(inside.clone()),
            ..Default::default()
        };
        assert_eq!(
            fetch(&url(&inside.join("a.bin")), "i", &on).unwrap(),
            b"abc"
        );
        let e = fetch(&url(&inside.join("../secret")), "i", &on).unwrap_err();
        assert!(
            e.message.contains("outside the allowed media directory"),
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn remote_urls_need_the_flag_and_public_addresses() {
        let p = MediaPolicy::default();
        let e = fetch("https://example.com/a.png", "i", &p).unwrap_err();
        assert!(e.message.contains("--allow-remote-media"), "{}", e.message);
        // Resolution of literal addresses needs no network.
        for bad in [
            "http://127.0.0.1/a.png",
            "http://localhost:8080/a.png",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.4/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:80/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            let e = check_remote(bad, &p).unwrap_err();
            assert!(e.contains("refused"), "{bad}: {e}");
        }
        let lan = MediaPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert_eq!(
            check_remote("http://[::1]:81/", &lan).unwrap(),
            vec!["[::1]:81".parse::<SocketAddr>().unwrap()]
        );
        let on = MediaPolicy {
            allow_remote: true,
            ..Default::default()
        };
        let e = fetch("http://127.0.0.1:9/x.png", "i", &on).unwrap_err();
        assert!(e.message.contains("refused"), "{}", e.message);
        assert!(check_remote("http://8.8.8.8/", &p).is_ok());
        assert!(check_remote("https://[2606:4700::1111]:8443/x", &p).is_ok());
        assert!(is_public("1.1.1.1".parse().unwrap()));
        assert!(!is_public("198.18.0.1".parse().unwrap()));
        assert_eq!(host_port("http://user@h:81/x").unwrap(), ("h".into(), 81));
        assert_eq!(host_port("https://h?q").unwrap(), ("h".into(), 443));
        assert!(host_port("gopher://h").is_err());
    }

    /// A one-file HTTP server on `ip` (port 0 picks one): answers every request with `body`, counting
    /// the connections it accepts.
    fn serve(ip: &str, port: u16, body: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind((ip, port)).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(body);
            }
        });
        (port, hits)
    }

    /// A lookup answering `first` on its first call and `later` after (a rebinding DNS server), counting
    /// its calls.
    fn rebinding(first: &str, later: &str) -> (Lookup, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let (first, later): (IpAddr, IpAddr) = (first.parse().unwrap(), later.parse().unwrap());
        let lookup = Lookup::new(move |host, port| {
            assert_eq!(host, "media.test");
            let n = c.fetch_add(1, Ordering::SeqCst);
            Ok(vec![SocketAddr::new(
                if n == 0 { first } else { later },
                port,
            )])
        });
        (lookup, calls)
    }

    #[test]
    fn a_name_is_resolved_once_and_the_connection_goes_to_the_checked_address() {
        let (port, hits) = serve("127.0.0.1", 0, b"vetted");
        let url = format!("http://media.test:{port}/clip.gif");
        // Loopback behind a name: refused before any connection, unless private addresses are allowed.
        let (lookup, calls) = rebinding("127.0.0.1", "127.0.0.1");
        let remote = MediaPolicy {
            allow_remote: true,
            lookup,
            ..Default::default()
        };
        let e = fetch(&url, "messages[0].content[0].video_url", &remote).unwrap_err();
        assert!(
            e.message.contains("127.0.0.1, a private, loopback"),
            "{}",
            e.message
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].video_url"));
        assert_eq!(
            (calls.load(Ordering::SeqCst), hits.load(Ordering::SeqCst)),
            (1, 0)
        );

        // Rebinding: the first answer (checked) is 127.0.0.1, every later one 127.0.0.2, where another
        // server listens on the same port. Only the checked address may be connected to, and the name is
        // not resolved again ("media.test" is no name the system resolver knows either).
        let Ok((_, other_hits)) = std::panic::catch_unwind(|| serve("127.0.0.2", port, b"rebound"))
        else {
            eprintln!("skipped the rebinding half: cannot listen on 127.0.0.2:{port}");
            return;
        };
        let (lookup, calls) = rebinding("127.0.0.1", "127.0.0.2");
        let lan = MediaPolicy {
            allow_remote: true,
            allow_private: true,
            lookup,
            ..Default::default()
        };
        assert_eq!(fetch(&url, "i", &lan).unwrap(), b"vetted");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            (
                hits.load(Ordering::SeqCst),
                other_hits.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
    }
}
