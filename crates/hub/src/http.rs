//! The two Hub routes we use, over `ureq` (blocking, rustls):
//! - `GET {endpoint}/api/models/{owner}/{name}/revision/{revision}?blobs=true`: the commit and every
//!   file with its size, git blob id and (for LFS files) sha256;
//! - `GET {endpoint}/{owner}/{name}/resolve/{commit}/{file}` (optionally with `Range: bytes=N-`): the
//!   bytes, usually after a redirect to a CDN (the token is not sent to another host).

use std::time::Duration;

use ureq::config::RedirectAuthHeaders;

use crate::{HubError, HubId, HubOptions};

/// One file of a repository at a commit, as the API lists it.
#[derive(Clone, Debug)]
pub(crate) struct RemoteFile {
    /// Path in the repository (`rfilename`).
    pub name: String,
    pub size: u64,
    /// The cache's blob name, as `huggingface_hub` chooses it: the sha256 for LFS files, the git
    /// blob sha1 otherwise.
    pub etag: String,
    /// What the downloaded bytes must hash to.
    pub check: Check,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Sha256(String),
    /// sha1 of `"blob {len}\0" + bytes` (a git blob id).
    GitSha1(String),
}

/// The commit a revision points to and the files there.
pub(crate) struct RepoInfo {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

pub(crate) struct Client<'a> {
    agent: ureq::Agent,
    opts: &'a HubOptions,
    id: &'a HubId,
}

/// The largest API answer we read (the file list of a large repository is a few hundred KB).
const MAX_JSON: u64 = 32 << 20;

impl<'a> Client<'a> {
    pub fn new(opts: &'a HubOptions, id: &'a HubId) -> Client<'a> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .user_agent(concat!("qwen3vl/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client { agent, opts, id }
    }

    fn get(
        &self,
        url: &str,
        range_from: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, HubError> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.opts.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if range_from > 0 {
            req = req.header("Range", format!("bytes={range_from}-"));
        }
        req.call().map_err(|e| self.network(e))
    }

    /// A transport error (no status): the Hub cannot be reached.
    pub fn network(&self, e: ureq::Error) -> HubError {
        HubError::Network {
            endpoint: self.opts.endpoint.clone(),
            msg: e.to_string(),
        }
    }

    /// 401 / 403 / 404 and other failures, worded for the user.
    fn status_error(
        &self,
        url: &str,
        resp: &mut ureq::http::Response<ureq::Body>,
        file: Option<&str>,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: String = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let id = self.id.to_string();
        let endpoint = self.opts.endpoint.clone();
        let token_set = self.opts.token.is_some();
        match (status, code.as_str()) {
            (404, _) | (_, "RepoNotFound" | "RevisionNotFound" | "EntryNotFound") => {
                let what = match (code.as_str(), file) {
                    ("RevisionNotFound", _) => format!("revision {:?}", self.id.revision()),
                    ("EntryNotFound", Some(f)) | ("", Some(f)) => format!("file {f}"),
                    ("RepoNotFound", _) => "model".into(),
                    _ => format!("model or revision {:?}", self.id.revision()),
                };
                if status == 401 && code == "RepoNotFound" {
                    // The Hub answers 401 for private and missing repos alike without a token.
                    return HubError::Unauthorized {
                        id,
                        endpoint,
                        token_set,
                    };
                }
                HubError::NotFound { id, what, endpoint }
            }
            (401, _) => HubError::Unauthorized {
                id,
                endpoint,
                token_set,
            },
            (403, _) | (_, "GatedRepo") => HubError::Forbidden {
                id,
                repo: self.id.repo(),
                endpoint,
                token_set,
            },
            _ => HubError::Http {
                url: url.to_string(),
                status,
                body,
            },
        }
    }

    /// The commit of the revision asked for and its files.
    pub fn repo_info(&self) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.opts.endpoint,
            self.id.repo(),
            encode(self.id.revision())
        );
        let mut resp = self.get(&url, 0)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&url, &mut resp, None));
        }
        let bad = |msg: String| HubError::BadResponse {
            url: url.clone(),
            msg,
        };
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_string()
            .map_err(|e| bad(format!("reading the answer: {e}")))?;
        parse_repo_info(&text).map_err(bad)
    }

    /// `GET .../resolve/{commit}/{file}` from byte `from`. Returns the response once its status says
    /// bytes follow: 200 (from 0) or 206 (from `from`); `restart` is true when the server ignored the
    /// range and sends the whole file.
    pub fn open_file(
        &self,
        commit: &str,
        file: &str,
        from: u64,
    ) -> Result<(ureq::Body, bool), HubError> {
        let url = self.file_url(commit, file);
        let mut resp = self.get(&url, from)?;
        match resp.status().as_u16() {
            200 => Ok((resp.into_body(), from > 0)),
            206 if from > 0 => {
                // Content-Range: bytes <from>-<end>/<total>
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(from) {
                    return Err(HubError::BadResponse {
                        url,
                        msg: format!(
                            "asked for bytes from {from}, got Content-Range starting at {start:?}"
                        ),
                    });
                }
                Ok((resp.into_body(), false))
            }
            _ => Err(self.status_error(&url, &mut resp, Some(file))),
        }
    }

    pub fn file_url(&self, commit: &str, file: &str) -> String {
        let path: Vec<String> = file.split('/').map(encode).collect();
        format!(
            "{}/{}/resolve/{commit}/{}",
            self.opts.endpoint,
            self.id.repo(),
            path.join("/")
        )
    }
}

/// Percent-encode everything but unreserved characters (a revision's `/` becomes `%2F`, as
/// `huggingface_hub` quotes it).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The API's answer: `{"sha": commit, "siblings": [{"rfilename", "size", "blobId", "lfs": {"sha256",
/// "size"}}]}`. Every name and hash is checked before it becomes a path.
pub(crate) fn parse_repo_info(text: &str) -> Result<RepoInfo, String> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let commit = v
        .get("sha")
        .and_then(Value::as_str)
        .ok_or("no commit id (`sha`) in the answer")?;
    if !crate::id::is_commit(commit) {
        return Err(format!("commit id {commit:?} is not 40 hex digits"));
    }
    let siblings = v
        .get("siblings")
        .and_then(Value::as_array)
        .ok_or("no file list (`siblings`) in the answer")?;
    let mut files = Vec::new();
    for s in siblings {
        let Some(name) = s.get("rfilename").and_then(Value::as_str) else {
            return Err("a sibling without `rfilename`".into());
        };
        if name.is_empty()
            || name.starts_with('/')
            || name.contains('\\')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("file name {name:?} is not a relative path"));
        }
        let lfs = s.get("lfs").filter(|l| !l.is_null());
        let size = lfs
            .and_then(|l| l.get("size"))
            .or_else(|| s.get("size"))
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{name}: no size (the API was asked with blobs=true)"))?;
        let (etag, check) = match lfs {
            Some(l) => {
                let sha = l
                    .get("sha256")
                    .and_then(Value::as_str)
                    .filter(|h| is_hex(h, 64))
                    .ok_or_else(|| format!("{name}: lfs.sha256 missing or not 64 hex digits"))?
                    .to_ascii_lowercase();
                (sha.clone(), Check::Sha256(sha))
            }
            None => {
                let blob = s
                    .get("blobId")
                    .and_then(Value::as_str)
                    .filter(|h| is_hex(h, 40))
                    .ok_or_else(|| format!("{name}: blobId missing or not 40 hex digits"))?
                    .to_ascii_lowercase();
                (blob.clone(), Check::GitSha1(blob))
            }
        };
        files.push(RemoteFile {
            name: name.to_string(),
            size,
            etag,
            check,
        });
    }
    Ok(RepoInfo {
        commit: commit.to_string(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_info_is_checked() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let sha = "ab".repeat(32);
        let ok = format!(
            r#"{{"sha":"{c}","siblings":[{{"rfilename":"config.json","size":3,"blobId":"{c}"}},
            {{"rfilename":"model.safetensors","size":9,"blobId":"{c}","lfs":{{"sha256":"{sha}","size":9}}}}]}}"#
        );
        let info = parse_repo_info(&ok).unwrap();
        assert_eq!(info.commit, c);
        assert_eq!(info.files[0].check, Check::GitSha1(c.into()));
        assert_eq!(info.files[1].etag, sha);
        assert_eq!(info.files[1].size, 9);
        for (bad, want) in [
            (ok.replace(c, "main"), "commit id"),
            (ok.replace("config.json", "../x"), "not a relative path"),
            (ok.replace("config.json", "/etc/x"), "not a relative path"),
            (ok.replace(&sha, "zz"), "lfs.sha256"),
            (ok.replace(r#""size":3,"#, ""), "no size"),
            ("[]".into(), "no commit id"),
        ] {
            let e = parse_repo_info(&bad).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn encodes_revisions() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("v1.0-rc_2"), "v1.0-rc_2");
    }
}
