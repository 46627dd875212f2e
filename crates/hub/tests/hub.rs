//! The Hub client against a local fake Hub (127.0.0.1, no internet) serving the repo's tiny checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qwen3vl_hub::fake_hub::{etag, FakeHub};
use qwen3vl_hub::{list, pull, remove, resolve_model_with, HubId, HubOptions};

const REPO: &str = "tiny-org/tiny-tied";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const MODEL: &str = "model.safetensors";

fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied")
}

/// A fresh cache directory under the target dir (no tempfile dependency).
fn temp_cache(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-hub-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(cache: &Path, endpoint: &str) -> HubOptions {
    HubOptions {
        cache: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        jobs: 4,
    }
}

fn hub_with_tiny() -> FakeHub {
    let hub = FakeHub::start();
    let mut files = FakeHub::dir_files(&tiny_dir());
    // Files the engine does not read must not be downloaded.
    files.push(("README.md".into(), b"# tiny".to_vec()));
    files.push(("onnx/model.onnx".into(), vec![7; 1000]));
    hub.add_repo(REPO, COMMIT, files);
    hub
}

fn id(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// A port nothing listens on.
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn model_requests(hub: &FakeHub) -> Vec<qwen3vl_hub::fake_hub::Request> {
    hub.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect()
}

#[test]
fn first_use_downloads_and_verifies_second_use_asks_nothing() {
    let hub = hub_with_tiny();
    let cache = temp_cache("first");
    let o = opts(&cache, &hub.url());
    let dir = resolve_model_with(&id(REPO), &o, None).unwrap();
    let repo = cache.join("models--tiny-org--tiny-tied");
    assert_eq!(dir, repo.join("snapshots").join(COMMIT));
    // Every file the engine reads, byte for byte; nothing else.
    let mut got: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    got.sort();
    let want: Vec<String> = FakeHub::dir_files(&tiny_dir())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(got, want);
    for (name, bytes) in FakeHub::dir_files(&tiny_dir()) {
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), bytes, "{name}");
        // huggingface_hub's layout: a relative symlink to blobs/<etag>.
        let link = std::fs::read_link(dir.join(&name)).unwrap();
        assert_eq!(
            link,
            Path::new("../../blobs").join(etag(&name, &bytes)),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let first = hub.requests();
    assert!(first[0]
        .path
        .starts_with(&format!("/api/models/{REPO}/revision/main")));
    assert!(!first
        .iter()
        .any(|r| r.path.contains("README") || r.path.contains("onnx")));
    // The model file came through the CDN redirect.
    assert_eq!(model_requests(&hub).len(), 1);

    hub.clear_requests();
    let again = resolve_model_with(&id(REPO), &o, None).unwrap();
    assert_eq!(again, dir);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_local_directory_is_used_as_is() {
    let cache = temp_cache("local");
    let o = opts(&cache, &closed_endpoint());
    assert_eq!(
        resolve_model_with(&tiny_dir(), &o, None).unwrap(),
        tiny_dir()
    );
    let e = resolve_model_with(&id("no/such/dir"), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "--model no/such/dir: no/such/dir does not exist, and it is not a Hugging Face Hub id \
             either (name \"such/dir\": may only contain letters, digits, '-', '_' and '.')"
        ),
        "{e}"
    );
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let hub = hub_with_tiny();
    let cache = temp_cache("resume");
    let o = opts(&cache, &hub.url());
    // Within one run: the connection drops after 1 MB, the client reconnects for the rest.
    hub.drop_after(MODEL, 1_000_000, 1);
    let report = pull(&HubId::parse(REPO).unwrap(), &o, None).unwrap();
    let model = model_requests(&hub);
    assert_eq!(model.len(), 2, "{model:?}");
    assert_eq!(model[0].range, None);
    assert_eq!(model[1].range.as_deref(), Some("bytes=1000000-"));
    // Each byte crossed the network once.
    assert_eq!(report.received, report.bytes);
    assert_eq!(
        std::fs::read(report.dir.join(MODEL)).unwrap(),
        std::fs::read(tiny_dir().join(MODEL)).unwrap()
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_dropped_connection_is_a_clear_error_and_the_next_run_resumes() {
    let hub = hub_with_tiny();
    let cache = temp_cache("dropped");
    let o = opts(&cache, &hub.url());
    hub.drop_after(MODEL, 700_000, usize::MAX);
    let e = pull(&HubId::parse(REPO).unwrap(), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("connection dropped during the download of model.safetensors"),
        "{e}"
    );
    // Two automatic resumes (each got 700000 more bytes) before the error.
    assert!(e.contains("2100000 of 2857144 bytes kept in"), "{e}");
    assert!(e.contains("run the command again to resume"), "{e}");
    // The next run (the network is back) asks only for the rest.
    hub.drop_after(MODEL, 0, 0);
    hub.clear_requests();
    let dir = resolve_model_with(&id(REPO), &o, None).unwrap();
    let model = model_requests(&hub);
    assert_eq!(model.len(), 1);
    assert_eq!(model[0].range.as_deref(), Some("bytes=2100000-"));
    assert_eq!(
        std::fs::read(dir.join(MODEL)).unwrap(),
        std::fs::read(tiny_dir().join(MODEL)).unwrap()
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn corrupted_files_are_detected_and_fetched_again() {
    let hub = hub_with_tiny();
    let cache = temp_cache("corrupt");
    let o = opts(&cache, &hub.url());
    let hid = HubId::parse(REPO).unwrap();
    let original = std::fs::read(tiny_dir().join(MODEL)).unwrap();

    // Corrupted in transit once: detected by sha256, fetched again from byte 0.
    hub.corrupt(MODEL, 1);
    let report = pull(&hid, &o, None).unwrap();
    assert_eq!(model_requests(&hub).len(), 2);
    assert_eq!(std::fs::read(report.dir.join(MODEL)).unwrap(), original);

    // Corrupted in the cache (a flipped byte, same size): `pull` hashes it and replaces it.
    let blob = cache
        .join("models--tiny-org--tiny-tied/blobs")
        .join(etag(MODEL, &original));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    // And a small git-tracked file truncated.
    let config = report.dir.join("config.json");
    let text = std::fs::read(&config).unwrap();
    std::fs::write(std::fs::canonicalize(&config).unwrap(), &text[..10]).unwrap();
    let report = pull(&hid, &o, None).unwrap();
    let mut corrupt = report.corrupt.clone();
    corrupt.sort();
    assert_eq!(corrupt, ["config.json", MODEL]);
    assert_eq!(std::fs::read(report.dir.join(MODEL)).unwrap(), original);
    assert_eq!(std::fs::read(&config).unwrap(), text);

    // Corrupted every time: an error naming the file and both hashes.
    std::fs::remove_dir_all(&cache).unwrap();
    hub.corrupt(MODEL, usize::MAX);
    let e = pull(&hid, &o, None).unwrap_err().to_string();
    assert!(e.contains("model.safetensors (tiny-org/tiny-tied): downloaded twice and both copies failed verification (sha256"), "{e}");
    assert!(
        e.contains(&format!("the Hub says {}", etag(MODEL, &original))),
        "{e}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn http_errors_say_what_to_do() {
    let hub = hub_with_tiny();
    hub.require_token(REPO, "hf_secret");
    let cache = temp_cache("errors");
    let mut o = opts(&cache, &hub.url());
    let hid = HubId::parse(REPO).unwrap();

    let e = pull(&hid, &o, None).unwrap_err().to_string();
    assert!(e.contains("tiny-org/tiny-tied: the Hub"), "{e}");
    assert!(e.contains("401 Unauthorized"), "{e}");
    assert!(e.contains("set HF_TOKEN"), "{e}");
    o.token = Some("hf_wrong".into());
    let e = pull(&hid, &o, None).unwrap_err().to_string();
    assert!(e.contains("HF_TOKEN was refused"), "{e}");
    o.token = Some("hf_secret".into());
    pull(&hid, &o, None).unwrap();
    assert!(hub
        .requests()
        .iter()
        .filter(|r| !r.path.starts_with("/cdn/"))
        .any(|r| r.authorization.as_deref() == Some("Bearer hf_secret")));
    // The CDN (another host) never sees the token.
    assert!(model_requests(&hub)
        .iter()
        .all(|r| r.authorization.is_none()));
    assert!(!model_requests(&hub).is_empty());

    let e = pull(&HubId::parse("tiny-org/nope").unwrap(), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-org/nope: model not found on the Hub"),
        "{e}"
    );
    let e = pull(&HubId::parse("tiny-org/tiny-tied@v9").unwrap(), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-org/tiny-tied@v9: revision \"v9\" not found"),
        "{e}"
    );

    hub.gate(REPO);
    let e = pull(&hid, &o, None).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "tiny-org/tiny-tied: the Hub ({}) answered 403 Forbidden: a gated model needs its \
             licence accepted on {}/tiny-org/tiny-tied by the account of HF_TOKEN",
            hub.url(),
            hub.url()
        )),
        "{e}"
    );

    let o = opts(&cache, &closed_endpoint());
    let e = pull(&HubId::parse("tiny-org/other").unwrap(), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach the Hub at http://127.0.0.1:"),
        "{e}"
    );
    assert!(e.contains("HF_HUB_OFFLINE=1"), "{e}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn offline_uses_the_cache_or_says_what_is_missing() {
    let hub = hub_with_tiny();
    let cache = temp_cache("offline");
    let mut o = opts(&cache, &hub.url());
    o.offline = true;
    let e = resolve_model_with(&id(REPO), &o, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE is set and tiny-org/tiny-tied is not complete in the cache"),
        "{e}"
    );
    assert!(e.contains("no snapshot for revision main"), "{e}");
    assert!(hub.requests().is_empty());

    o.offline = false;
    let dir = resolve_model_with(&id(REPO), &o, None).unwrap();
    hub.clear_requests();
    o.offline = true;
    assert_eq!(resolve_model_with(&id(REPO), &o, None).unwrap(), dir);
    let r = pull(&HubId::parse(REPO).unwrap(), &o, None).unwrap();
    assert!(r.offline && r.dir == dir);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = resolve_model_with(&id(REPO), &o, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tokenizer.json;"), "{e}");
    assert!(hub.requests().is_empty());
    std::fs::remove_dir_all(&cache).unwrap();
}

/// The layout `huggingface_hub.snapshot_download` leaves (blobs named by etag, relative symlinks,
/// refs/main), written here by hand: found with no request (the endpoint is a closed port).
#[test]
fn a_model_downloaded_by_huggingface_hub_is_found() {
    let cache = temp_cache("hf");
    let repo = cache.join("models--Qwen--Qwen3-VL-2B-Instruct");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (name, bytes) in FakeHub::dir_files(&tiny_dir()) {
        let e = etag(&name, &bytes);
        std::fs::write(repo.join("blobs").join(&e), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&e), snap.join(&name)).unwrap();
    }
    let o = opts(&cache, &closed_endpoint());
    let dir = resolve_model_with(&id("Qwen/Qwen3-VL-2B-Instruct"), &o, None).unwrap();
    assert_eq!(dir, snap);
    // By commit too.
    let by_commit = format!("Qwen/Qwen3-VL-2B-Instruct@{COMMIT}");
    assert_eq!(resolve_model_with(&id(&by_commit), &o, None).unwrap(), snap);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn shards_named_by_the_index_download_concurrently() {
    let hub = FakeHub::start();
    let mut files: Vec<(String, Vec<u8>)> = FakeHub::dir_files(&tiny_dir())
        .into_iter()
        .filter(|(n, _)| n != MODEL)
        .collect();
    let shards: Vec<String> = (1..=3)
        .map(|i| format!("model-{i:05}-of-00003.safetensors"))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a": shards[0], "b": shards[1], "c": shards[2], "d": shards[0]}});
    files.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    for (i, s) in shards.iter().enumerate() {
        files.push((s.clone(), vec![i as u8; 300_000 + i]));
    }
    // An unlisted shard-like file is not fetched.
    files.push(("model-extra.safetensors".into(), vec![9; 10]));
    hub.add_repo(REPO, COMMIT, files);
    hub.delay(Duration::from_millis(300));
    let cache = temp_cache("shards");
    let o = opts(&cache, &hub.url());
    let seen = std::sync::Mutex::new((0u64, 0u64));
    let progress = |done: u64, total: u64| *seen.lock().unwrap() = (done, total);
    let r = pull(&HubId::parse(REPO).unwrap(), &o, Some(&progress)).unwrap();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(
            std::fs::read(r.dir.join(s)).unwrap(),
            vec![i as u8; 300_000 + i]
        );
    }
    assert!(!r.dir.join("model-extra.safetensors").exists());
    assert!(
        hub.max_concurrent() >= 2,
        "max concurrent {}",
        hub.max_concurrent()
    );
    let (done, total) = *seen.lock().unwrap();
    assert_eq!((done, total), (r.bytes, r.bytes));
    assert_eq!(r.files, 11);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_download_larger_than_the_free_disk_is_refused_before_it_starts() {
    let hub = hub_with_tiny();
    hub.list_size(REPO, MODEL, 1 << 60);
    let cache = temp_cache("space");
    let e = pull(
        &HubId::parse(REPO).unwrap(),
        &opts(&cache, &hub.url()),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiny-org/tiny-tied: not enough disk space in"),
        "{e}"
    );
    // 2^60 bytes listed for the weights + 11.4 MB of other files, in MB rounded up.
    assert!(
        e.contains("the download needs 1152921504619 MB more"),
        "{e}"
    );
    assert!(!hub.requests().iter().any(|r| r.path.contains("resolve")));
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn list_and_remove() {
    let hub = hub_with_tiny();
    let cache = temp_cache("list");
    let o = opts(&cache, &hub.url());
    assert!(list(&cache).unwrap().is_empty());
    resolve_model_with(&id(REPO), &o, None).unwrap();
    let models = list(&cache).unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m.repo, REPO);
    let want: u64 = FakeHub::dir_files(&tiny_dir())
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum();
    assert_eq!(m.size, want);
    assert_eq!(m.refs, [("main".to_string(), COMMIT.to_string())]);
    assert_eq!(m.snapshots, [(COMMIT.to_string(), true)]);

    let hid = HubId::parse(REPO).unwrap();
    let e = remove(&cache, &HubId::parse("tiny-org/tiny-tied@main").unwrap()).unwrap_err();
    assert!(e.to_string().contains("without @revision"), "{e}");
    assert_eq!(remove(&cache, &hid).unwrap(), want);
    assert!(list(&cache).unwrap().is_empty());
    let e = remove(&cache, &hid).unwrap_err().to_string();
    assert!(e.contains("tiny-org/tiny-tied is not in the cache"), "{e}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn environment_as_huggingface_hub_reads_it() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let o = HubOptions::from_vars(vars(&[("HOME", "/home/u")]));
    assert_eq!(o.cache, Path::new("/home/u/.cache/huggingface/hub"));
    assert_eq!(o.endpoint, "https://huggingface.co");
    assert!(!o.offline && o.token.is_none());
    let o = HubOptions::from_vars(vars(&[
        ("HOME", "/home/u"),
        ("HF_HOME", "/data/hf"),
        ("HF_ENDPOINT", "http://mirror.local/"),
        ("HF_TOKEN", " hf_abc\n"),
        ("HF_HUB_OFFLINE", "1"),
    ]));
    assert_eq!(o.cache, Path::new("/data/hf/hub"));
    assert_eq!(o.endpoint, "http://mirror.local");
    assert_eq!(o.token.as_deref(), Some("hf_abc"));
    assert!(o.offline);
    let o = HubOptions::from_vars(vars(&[
        ("HF_HOME", "/data/hf"),
        ("HF_HUB_CACHE", "/fast/hub"),
        ("HF_HUB_OFFLINE", "0"),
    ]));
    assert_eq!(o.cache, Path::new("/fast/hub"));
    assert!(!o.offline);
}
