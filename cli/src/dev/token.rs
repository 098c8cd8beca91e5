//! The admin token of `meridian dev`.
//!
//! Owns making it once per data directory (`admin.token`, mode 0600, kept
//! across restarts so a token in use stays valid), handing it to every
//! global replica as its bootstrap token, and saying where it is. The CLI
//! finds it there by default (`crate::auth`). It must never print the
//! token itself.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::TryRngCore;

use super::plan::{Plan, Role};
use crate::error::{CliError, Result};

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| CliError::other(format!("the system's random source failed: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh token in the global tier's format, `mrd_<16 hex>_<64 hex>`
/// (8 random bytes of public id, 32 of secret, from the OS CSPRNG).
pub fn generate() -> Result<String> {
    Ok(format!("mrd_{}_{}", random_hex(8)?, random_hex(32)?))
}

/// The admin token file of `data`, made (mode 0600) when missing.
pub fn ensure(data: &Path) -> Result<PathBuf> {
    let path = crate::auth::dev_token_path(data);
    if path.exists() {
        return Ok(path);
    }
    let token = generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError::other(format!("creating {}: {e}", path.display())))?;
    writeln!(file, "{token}")
        .map_err(|e| CliError::other(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

/// Makes the admin token of `data` and has every global replica of `plan`
/// store it as its bootstrap token; returns the file. A replica planned
/// with `--insecure` (`meridian dev --insecure`: plain text, every tier
/// open) is started with `--no-auth` instead, which it warns about: a
/// token sent in plain text protects nothing, and the test harnesses that
/// run an insecure federation dial it without one.
pub fn apply(data: &Path, plan: &mut Plan) -> Result<PathBuf> {
    let path = ensure(data)?;
    for p in plan.processes_mut() {
        if p.role != Role::Global {
            continue;
        }
        if p.spec.args.iter().any(|a| a == "--insecure") {
            p.spec.args.push("--no-auth".into());
        } else {
            p.spec.args.push("--bootstrap-token-file".into());
            p.spec.args.push(path.display().to_string());
        }
    }
    Ok(path)
}
