//! A local stand-in for the Hugging Face Hub, for tests (feature `fake-hub`): an HTTP/1.1 server on
//! 127.0.0.1 (port chosen by the OS, one thread per connection) serving
//! - `GET /api/models/{owner}/{name}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename",
//!   "size", "blobId", "lfs": {"sha256", "size"}}]}` (`*.safetensors` are LFS files);
//! - `GET|HEAD /{owner}/{name}/resolve/{rev}/{file}`: plain files with `ETag`; LFS files by a 302 redirect
//!   to `/cdn/{sha256}` (as the Hub sends them to its CDN); both honour `Range: bytes=N-`.
//!
//! Faults for the tests: a token requirement (401 without it), a connection dropped after N bytes of a
//! file, corrupted bytes, a delay per file response (to observe concurrency). Every request is logged.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path and query.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub host: Option<String>,
}

/// A file and its hashes (computed once: a test may serve hundreds of MB).
struct Entry {
    bytes: Vec<u8>,
    sha256: String,
    git_sha1: String,
}

struct Repo {
    commit: String,
    files: BTreeMap<String, Entry>,
    token: Option<String>,
    /// A gated model whose licence the token's account has not accepted: 403.
    gated: bool,
    /// Sizes the API states instead of the true ones.
    listed_size: HashMap<String, u64>,
}

#[derive(Default)]
struct Faults {
    /// file -> (bytes to send before dropping the connection, how many more times)
    drop_after: HashMap<String, (usize, usize)>,
    /// file -> how many more responses carry a flipped byte
    corrupt: HashMap<String, usize>,
    delay: Duration,
}

#[derive(Default)]
struct Shared {
    repos: Mutex<HashMap<String, Repo>>,
    log: Mutex<Vec<Request>>,
    faults: Mutex<Faults>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    stop: AtomicBool,
}

/// The server; stops when dropped.
pub struct FakeHub {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// The git blob id of a file: sha1 of `"blob {len}\0" + bytes`.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The name the cache gives a file's blob (as `huggingface_hub` does): sha256 for LFS files, the git
/// blob id otherwise.
pub fn etag(name: &str, bytes: &[u8]) -> String {
    if is_lfs(name) {
        sha256(bytes)
    } else {
        git_blob_sha1(bytes)
    }
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        FakeHub { addr, shared }
    }

    /// `http://127.0.0.1:PORT` (for `HF_ENDPOINT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve `repo` (`owner/name`) at `commit` (40 hex digits) with these files.
    pub fn add_repo(&self, repo: &str, commit: &str, files: Vec<(String, Vec<u8>)>) {
        lock(&self.shared.repos).insert(
            repo.to_string(),
            Repo {
                commit: commit.to_string(),
                files: files
                    .into_iter()
                    .map(|(name, bytes)| {
                        let e = Entry {
                            sha256: sha256(&bytes),
                            git_sha1: git_blob_sha1(&bytes),
                            bytes,
                        };
                        (name, e)
                    })
                    .collect(),
                token: None,
                gated: false,
                listed_size: HashMap::new(),
            },
        );
    }

    /// The files of a checkpoint directory (symlinks followed), as `add_repo` takes them.
    pub fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("read checkpoint dir") {
            let e = e.expect("dir entry");
            if e.path().is_file() {
                let bytes = std::fs::read(e.path()).expect("read checkpoint file");
                out.push((e.file_name().to_string_lossy().to_string(), bytes));
            }
        }
        out.sort();
        out
    }

    /// Answer 401 for `repo` unless `Authorization: Bearer <token>`.
    pub fn require_token(&self, repo: &str, token: &str) {
        if let Some(r) = lock(&self.shared.repos).get_mut(repo) {
            r.token = Some(token.to_string());
        }
    }

    /// The API lists `file` with this size (the files served stay as they are).
    pub fn list_size(&self, repo: &str, file: &str, size: u64) {
        if let Some(r) = lock(&self.shared.repos).get_mut(repo) {
            r.listed_size.insert(file.to_string(), size);
        }
    }

    /// Answer 403 (`X-Error-Code: GatedRepo`) for `repo`, as the Hub does for a gated model whose
    /// licence was not accepted.
    pub fn gate(&self, repo: &str) {
        if let Some(r) = lock(&self.shared.repos).get_mut(repo) {
            r.gated = true;
        }
    }

    /// The next `times` responses for `file` send `bytes` bytes of the body and close the connection.
    pub fn drop_after(&self, file: &str, bytes: usize, times: usize) {
        lock(&self.shared.faults)
            .drop_after
            .insert(file.to_string(), (bytes, times));
    }

    /// The next `times` responses for `file` have one byte flipped.
    pub fn corrupt(&self, file: &str, times: usize) {
        lock(&self.shared.faults)
            .corrupt
            .insert(file.to_string(), times);
    }

    /// Wait this long before each file body (so concurrent downloads overlap).
    pub fn delay(&self, d: Duration) {
        lock(&self.shared.faults).delay = d;
    }

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// The most file responses that were in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::Relaxed)
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Which file the body is (for faults).
    file: Option<String>,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: body.as_bytes().to_vec(),
        file: None,
    }
}

fn serve(s: &Shared, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("GET").to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Request {
        method,
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
        host: headers.get("host").cloned(),
    };
    lock(&s.log).push(req.clone());
    let r = route(s, &req);
    write_reply(s, conn, &req, r)
}

fn route(s: &Shared, req: &Request) -> Reply {
    let (path, _query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let repos = lock(&s.repos);
    if parts.len() == 2 && parts[0] == "cdn" {
        for r in repos.values() {
            for (name, e) in &r.files {
                if is_lfs(name) && e.sha256 == parts[1] {
                    let bytes = &e.bytes;
                    return file_reply(name, bytes, req.range.as_deref());
                }
            }
        }
        return reply(404, "no such object");
    }
    let (api, rest) = match parts.first() {
        Some(&"api") if parts.len() >= 6 && parts[1] == "models" && parts[4] == "revision" => {
            (true, &parts[2..])
        }
        _ if parts.len() >= 5 && parts[2] == "resolve" => (false, &parts[..]),
        _ => return reply(404, "no such route"),
    };
    let repo_id = format!("{}/{}", rest[0], rest[1]);
    let Some(repo) = repos.get(&repo_id) else {
        let mut r = reply(404, "Repository Not Found");
        r.headers
            .push(("X-Error-Code".into(), "RepoNotFound".into()));
        return r;
    };
    if let Some(t) = &repo.token {
        if req.authorization.as_deref() != Some(&format!("Bearer {t}")) {
            return reply(401, "Invalid credentials in Authorization header");
        }
    }
    if repo.gated {
        let mut r = reply(403, "Access to model is restricted");
        r.headers.push(("X-Error-Code".into(), "GatedRepo".into()));
        return r;
    }
    let rev = rest[3].replace("%2F", "/");
    if rev != "main" && rev != repo.commit {
        let mut r = reply(404, "Revision Not Found");
        r.headers
            .push(("X-Error-Code".into(), "RevisionNotFound".into()));
        return r;
    }
    if api {
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(name, e)| {
                let size = repo
                    .listed_size
                    .get(name)
                    .copied()
                    .unwrap_or(e.bytes.len() as u64);
                let mut v = serde_json::json!({
                    "rfilename": name, "size": size, "blobId": e.git_sha1,
                });
                if is_lfs(name) {
                    v["lfs"] = serde_json::json!({
                        "sha256": e.sha256, "size": size, "pointerSize": 134,
                    });
                }
                v
            })
            .collect();
        let body = serde_json::json!({"id": repo_id, "sha": repo.commit, "siblings": siblings});
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            file: None,
        };
    }
    let name = rest[4..].join("/");
    let Some(entry) = repo.files.get(&name) else {
        let mut r = reply(404, "Entry not found");
        r.headers
            .push(("X-Error-Code".into(), "EntryNotFound".into()));
        return r;
    };
    if is_lfs(&name) {
        // Another host, as the Hub's CDN is: `localhost` for `127.0.0.1` (a client must not send the
        // token there, and `huggingface_hub` takes the metadata from this redirect only then).
        let host = req
            .host
            .as_deref()
            .unwrap_or("127.0.0.1")
            .replace("127.0.0.1", "localhost");
        let mut r = reply(302, "");
        r.headers.push((
            "Location".into(),
            format!("http://{host}/cdn/{}", entry.sha256),
        ));
        r.headers
            .push(("X-Linked-Etag".into(), format!("\"{}\"", entry.sha256)));
        r.headers
            .push(("X-Linked-Size".into(), entry.bytes.len().to_string()));
        r.headers
            .push(("X-Repo-Commit".into(), repo.commit.clone()));
        return r;
    }
    let mut r = file_reply(&name, &entry.bytes, req.range.as_deref());
    r.headers
        .push(("ETag".into(), format!("\"{}\"", entry.git_sha1)));
    r.headers
        .push(("X-Repo-Commit".into(), repo.commit.clone()));
    r
}

fn file_reply(name: &str, bytes: &[u8], range: Option<&str>) -> Reply {
    let from = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    match from {
        Some(from) if from >= bytes.len() => reply(416, "Range Not Satisfiable"),
        Some(from) => Reply {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
            body: bytes[from..].to_vec(),
            file: Some(name.to_string()),
        },
        None => Reply {
            status: 200,
            headers: Vec::new(),
            body: bytes.to_vec(),
            file: Some(name.to_string()),
        },
    }
}

fn write_reply(
    s: &Shared,
    mut conn: TcpStream,
    req: &Request,
    mut r: Reply,
) -> std::io::Result<()> {
    // HEAD: the headers a GET would have, no body.
    let mut send = if req.method == "HEAD" {
        0
    } else {
        r.body.len()
    };
    if let Some(file) = &r.file {
        let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_active.fetch_max(now, Ordering::SeqCst);
        let mut f = lock(&s.faults);
        if let Some((n, times)) = f.drop_after.get_mut(file) {
            if *times > 0 {
                *times -= 1;
                send = send.min(*n);
            }
        }
        if let Some(times) = f.corrupt.get_mut(file) {
            if *times > 0 && !r.body.is_empty() {
                *times -= 1;
                let mid = r.body.len() / 2;
                r.body[mid] ^= 0x5a;
            }
        }
        let delay = f.delay;
        drop(f);
        std::thread::sleep(delay);
    }
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let result = conn
        .write_all(head.as_bytes())
        .and_then(|_| conn.write_all(&r.body[..send]))
        .and_then(|_| conn.flush());
    if r.file.is_some() {
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
    // A dropped connection: close without sending the rest.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    result
}
