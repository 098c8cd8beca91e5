//! The bearer token a command presents to the global tier.
//!
//! Owns finding it (`--token`, else `MERIDIAN_TOKEN`, else the admin token
//! `meridian dev` wrote in its data directory, `$MERIDIAN_DATA_DIR` or
//! `data/dev`, so a fresh `meridian dev` needs no extra step) and adding it
//! to every call as `authorization: Bearer <token>` through a tonic
//! interceptor. It must never print or log the token.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{CliError, Result};

/// The file, in `meridian dev`'s data directory, holding its admin token.
pub const DEV_TOKEN_FILE: &str = "admin.token";

/// Where `meridian dev` keeps its data unless told otherwise.
pub const DEFAULT_DEV_DATA_DIR: &str = "data/dev";

/// The admin token file of a `meridian dev` data directory.
pub fn dev_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_TOKEN_FILE)
}

/// Reads a token file: its first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("token file {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(CliError::usage(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// The token to present: `given` (from `--token` or `MERIDIAN_TOKEN`),
/// else `meridian dev`'s admin token when its file exists, else none.
pub fn resolve(given: Option<&str>) -> Result<Option<String>> {
    if let Some(token) = given.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_string()));
    }
    let data_dir = std::env::var_os("MERIDIAN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DEV_DATA_DIR));
    let path = dev_token_path(&data_dir);
    if path.exists() {
        return read_token_file(&path).map(Some);
    }
    Ok(None)
}

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone, Default)]
pub struct Bearer {
    value: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.value.is_some() {
            "Bearer(<token>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// An interceptor presenting `token` (none: calls go without one).
    pub fn new(token: Option<&str>) -> Result<Bearer> {
        let value = match token {
            None => None,
            Some(t) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| CliError::usage("--token: not a printable ASCII token"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Bearer { value })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
