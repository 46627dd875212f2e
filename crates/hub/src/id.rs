//! Hub ids: `owner/name[@revision]`, checked before they become URLs or cache paths.

use crate::HubError;

/// A model repository on the Hub and the revision asked for (a branch, tag or commit; `main` if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub owner: String,
    pub name: String,
    /// As written after `@`, or None (the default branch, `main`).
    pub revision: Option<String>,
}

impl HubId {
    /// Parse `owner/name[@revision]`. Owner and name follow the Hub's rules (letters, digits, `-`, `_`,
    /// `.`; not starting or ending with `-` or `.`; no `--` or `..`; at most 96 characters). A revision
    /// may contain `/` (`refs/pr/1`) but no `..`, no leading `/`, no spaces or control characters.
    pub fn parse(s: &str) -> Result<HubId, HubError> {
        let bad = |why: &str| HubError::BadId {
            id: s.to_string(),
            why: why.to_string(),
        };
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (s, None),
        };
        let (owner, name) = repo
            .split_once('/')
            .ok_or_else(|| bad("expected owner/name[@revision]"))?;
        for (what, part) in [("owner", owner), ("name", name)] {
            check_part(part).map_err(|why| bad(&format!("{what} {part:?}: {why}")))?;
        }
        if let Some(rev) = revision {
            check_revision(rev).map_err(|why| bad(&format!("revision {rev:?}: {why}")))?;
        }
        Ok(HubId {
            owner: owner.to_string(),
            name: name.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// `owner/name`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The revision asked for, `main` when none was given.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The cache folder's name: `models--owner--name` (huggingface_hub's `repo_folder_name`).
    pub fn folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}/{}@{r}", self.owner, self.name),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

fn check_part(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("is empty");
    }
    if p.len() > 96 {
        return Err("is longer than 96 characters");
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, '-', '_' and '.'");
    }
    if p.starts_with(['-', '.']) || p.ends_with(['-', '.']) {
        return Err("may not start or end with '-' or '.'");
    }
    if p.contains("--") || p.contains("..") {
        return Err("may not contain '--' or '..'");
    }
    Ok(())
}

fn check_revision(r: &str) -> Result<(), &'static str> {
    if r.is_empty() {
        return Err("is empty");
    }
    if r.len() > 255 {
        return Err("is longer than 255 characters");
    }
    if r.starts_with('/') || r.ends_with('/') || r.contains("//") {
        return Err("may not start or end with '/' or contain '//'");
    }
    if r.split('/').any(|c| c == "." || c == "..") || r.contains("..") {
        return Err("may not contain '..'");
    }
    if r.chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\\' | '?' | '#' | '%' | '@'))
    {
        return Err("may not contain spaces, control characters or any of \\ ? # % @");
    }
    Ok(())
}

/// A full commit id (40 lowercase hex digits).
pub(crate) fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_revisions() {
        let id = HubId::parse("Qwen/Qwen3-VL-2B-Instruct").unwrap();
        assert_eq!(id.repo(), "Qwen/Qwen3-VL-2B-Instruct");
        assert_eq!(id.revision(), "main");
        assert_eq!(id.folder(), "models--Qwen--Qwen3-VL-2B-Instruct");
        assert_eq!(id.to_string(), "Qwen/Qwen3-VL-2B-Instruct");
        let id = HubId::parse("a_b/c.d@refs/pr/1").unwrap();
        assert_eq!(id.revision(), "refs/pr/1");
        assert_eq!(id.to_string(), "a_b/c.d@refs/pr/1");
    }

    #[test]
    fn rejects_what_could_escape_the_cache_or_the_url() {
        for bad in [
            "Qwen",
            "/abs/path",
            "./models/x",
            "a/b/c",
            "../x",
            "a/..",
            "a/.b",
            "a-/b",
            "a/b--c",
            "a/b c",
            "a/b@",
            "a/b@../../etc",
            "a/b@/main",
            "a/b@main/",
            "a/b@ma in",
            "a/b@x?y",
            "a/b@x%2F",
            "",
        ] {
            let e = HubId::parse(bad).unwrap_err().to_string();
            assert!(e.contains("Hub id"), "{bad:?}: {e}");
        }
        assert!(HubId::parse(&format!("a/{}", "x".repeat(97))).is_err());
    }

    #[test]
    fn commit_ids() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit(&"A".repeat(40)));
        assert!(!is_commit(&"a".repeat(39)));
        assert!(!is_commit("main"));
    }
}
