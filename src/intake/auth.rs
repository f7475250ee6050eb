//! Who may send alerts: bearer tokens from a file (Falcosidekick's custom
//! headers), client certificates (Falco's only option, checked by TLS), or
//! nobody in particular when explicitly allowed.

use ring::digest::{SHA256, digest};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path} (--intake-token-file): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} (--intake-token-file) holds no token: write one token per line")]
    Empty { path: PathBuf },
}

type Digest = [u8; 32];

fn hash(token: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// Bearer tokens, one per line of a file; blank lines and `#` comments are
/// ignored. Only their SHA-256 digests are kept in memory.
pub struct Tokens {
    path: PathBuf,
    digests: RwLock<Vec<Digest>>,
}

impl Tokens {
    /// Reads the file; fails when it is unreadable or holds no token.
    pub fn load(path: &Path) -> Result<Arc<Tokens>, TokenError> {
        let digests = read(path)?;
        Ok(Arc::new(Tokens {
            path: path.to_path_buf(),
            digests: RwLock::new(digests),
        }))
    }

    /// True when `presented` is one of the tokens. Takes the same time
    /// whichever token matches, or none.
    pub fn check(&self, presented: &str) -> bool {
        let presented = hash(presented);
        let digests = self.digests.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0);
        for d in digests.iter() {
            found |= d.ct_eq(&presented);
        }
        found.into()
    }

    /// Re-reads the file; keeps the old tokens when it cannot be used.
    /// True when the tokens changed.
    pub fn reload(&self) -> Result<bool, TokenError> {
        let fresh = read(&self.path)?;
        let mut digests = self.digests.write().unwrap_or_else(|p| p.into_inner());
        if *digests == fresh {
            return Ok(false);
        }
        *digests = fresh;
        Ok(true)
    }

    /// Re-reads the file every `interval` until `shutdown`, so a rotated
    /// Secret takes effect without a restart.
    pub fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
                match self.reload() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(path = %self.path.display(), "token file changed: tokens reloaded");
                    }
                    Ok(false) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, "keeping the previous tokens");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<Vec<Digest>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut digests: Vec<Digest> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(hash)
        .collect();
    digests.sort_unstable();
    digests.dedup();
    if digests.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(digests)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// How requests are authenticated.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Option<Arc<Tokens>>,
    /// Client certificates are verified by TLS against `--intake-client-ca`.
    pub client_certificates: bool,
    pub allow_unauthenticated: bool,
}

impl Auth {
    /// True when the request may send alerts. `verified_client` says that
    /// the connection presented a client certificate the CA signed.
    pub fn allows(&self, headers: &http::HeaderMap, verified_client: bool) -> bool {
        if self.allow_unauthenticated || (self.client_certificates && verified_client) {
            return true;
        }
        match (&self.tokens, bearer(headers)) {
            (Some(tokens), Some(presented)) => tokens.check(presented),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile_lite::File {
        tempfile_lite::File::new(content)
    }

    /// A temporary file without a dependency.
    mod tempfile_lite {
        pub struct File(pub std::path::PathBuf);
        impl File {
            pub fn new(content: &str) -> File {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "peregrine-tokens-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, content).unwrap();
                File(path)
            }
            pub fn write(&self, content: &str) {
                std::fs::write(&self.0, content).unwrap();
            }
        }
        impl Drop for File {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn tokens_in_the_file_are_accepted_and_others_are_not() {
        let f = file("# sidekick\n  s3cret  \n\nother\n");
        let t = Tokens::load(&f.0).unwrap();
        assert!(t.check("s3cret"));
        assert!(t.check("other"));
        assert!(!t.check("s3cre"));
        assert!(!t.check(""));
        assert!(!t.check("# sidekick"));
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_broken_one_keeps_the_old_tokens() {
        let f = file("old\n");
        let t = Tokens::load(&f.0).unwrap();
        f.write("new\n");
        assert!(t.reload().unwrap());
        assert!(t.check("new") && !t.check("old"));
        f.write("\n# nothing\n");
        assert!(t.reload().is_err());
        assert!(t.check("new"));
    }

    #[test]
    fn an_empty_token_file_is_refused_at_start_up() {
        let f = file("\n");
        let err = Tokens::load(&f.0).err().unwrap();
        assert!(err.to_string().contains("one token per line"), "{err}");
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
