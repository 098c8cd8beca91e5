//! The token store: bearer tokens created, listed, revoked and checked.
//!
//! A token is `mrd_<id>_<secret>`: a public id of 8 random bytes (16 hex
//! digits, what listings and the audit log name) and a secret of 32 random
//! bytes from the operating system's CSPRNG (64 hex digits). The store keeps
//! the id, the name, the role and tenants, and the SHA-256 of the secret;
//! the secret itself is returned once, by [`Tokens::create`]. Every call
//! re-reads its token's record (one key), so a revocation holds on the next
//! call on every replica. This module must never store, log or return a
//! secret after its creation.

use std::collections::BTreeSet;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1::{CreateTokenRequest, Role, TokenInfo};
use meridian_store::{Database, RangeOption, Subspace};
use prost::Message;
use rand::TryRngCore;

use super::Principal;
use crate::error::{GlobalError, Result};
use crate::keys::Keys;

/// Prefix of every token.
pub const PREFIX: &str = "mrd_";
/// Creator recorded for the bootstrap token.
pub const BOOTSTRAP: &str = "bootstrap";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const HASH_BYTES: usize = 32;
/// Longest token name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most tenants on one token.
pub const MAX_TENANTS: usize = 64;

/// A token split into its parts.
struct Parsed<'a> {
    id: &'a str,
    secret: &'a str,
}

fn parse(token: &str) -> Option<Parsed<'_>> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex =
        |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_BYTES) && hex(secret, SECRET_BYTES)).then_some(Parsed { id, secret })
}

fn hash(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| GlobalError::Corrupt(format!("the system's random source failed: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh token string (not stored): for `meridian dev` and bootstrap
/// files.
pub fn generate() -> Result<String> {
    Ok(format!(
        "{PREFIX}{}_{}",
        random_hex(ID_BYTES)?,
        random_hex(SECRET_BYTES)?
    ))
}

/// The public id of a token string, when it is one.
pub fn id_of(token: &str) -> Option<&str> {
    parse(token).map(|p| p.id)
}

fn encode(hash: &[u8], info: &TokenInfo) -> Vec<u8> {
    let mut value = hash.to_vec();
    value.extend_from_slice(&info.encode_to_vec());
    value
}

fn decode(value: &[u8]) -> Result<(Vec<u8>, TokenInfo)> {
    if value.len() < HASH_BYTES {
        return Err(GlobalError::Corrupt("token record too short".into()));
    }
    let (hash, info) = value.split_at(HASH_BYTES);
    Ok((hash.to_vec(), TokenInfo::decode(info)?))
}

/// Checks the fields of a CreateToken request.
pub fn validate(req: &CreateTokenRequest) -> Result<()> {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if req.name.is_empty() {
        return Err(GlobalError::invalid("name", "required"));
    }
    if req.name.len() > MAX_NAME_BYTES || !req.name.chars().all(name_ok) {
        return Err(GlobalError::invalid(
            "name",
            format!("1 to {MAX_NAME_BYTES} bytes of letters, digits, '-', '_', '.'"),
        ));
    }
    let role = Role::try_from(req.role).unwrap_or(Role::Unspecified);
    match role {
        Role::Unspecified => Err(GlobalError::invalid(
            "role",
            "required: viewer, submitter, operator or admin",
        )),
        Role::Viewer | Role::Submitter => {
            if req.tenants.is_empty() || req.tenants.len() > MAX_TENANTS {
                return Err(GlobalError::invalid(
                    "tenants",
                    format!("1 to {MAX_TENANTS} tenants for a viewer or submitter token"),
                ));
            }
            for (i, t) in req.tenants.iter().enumerate() {
                if t.is_empty() || t.len() > crate::validate::MAX_TENANT_BYTES {
                    return Err(GlobalError::invalid(
                        format!("tenants[{i}]"),
                        format!("1 to {} bytes", crate::validate::MAX_TENANT_BYTES),
                    ));
                }
            }
            Ok(())
        }
        Role::Operator | Role::Admin => {
            if req.tenants.is_empty() {
                Ok(())
            } else {
                Err(GlobalError::invalid(
                    "tenants",
                    "operator and admin tokens are not scoped to tenants",
                ))
            }
        }
    }
}

/// The token records of one deployment.
#[derive(Clone)]
pub struct Tokens {
    db: Database,
    space: Subspace,
    clock: SharedClock,
}

impl Tokens {
    /// The tokens stored under `keys`.
    pub fn new(db: Database, keys: &Keys, clock: SharedClock) -> Tokens {
        Tokens {
            db,
            space: keys.root().subspace(&("token",)),
            clock,
        }
    }

    fn key(&self, id: &str) -> Vec<u8> {
        self.space.pack(&(id,))
    }

    /// The principal `token` stands for. UNAUTHENTICATED for a malformed,
    /// unknown or revoked token (one message for all three, so a caller
    /// learns nothing of which ids exist).
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let refused = || GlobalError::Unauthenticated("invalid or revoked token".into());
        let parsed = parse(token).ok_or_else(refused)?;
        let key = self.key(parsed.id);
        let stored = self
            .db
            .run(|tx, _| {
                let key = key.clone();
                async move { Ok::<_, GlobalError>(tx.get(&key).await?) }
            })
            .await?
            .ok_or_else(refused)?;
        let (stored_hash, info) = decode(&stored)?;
        // The secret is 256 random bits and what is compared is its hash:
        // timing reveals nothing a caller could steer towards a match.
        if stored_hash != hash(parsed.secret) || info.revoked_at_unix_ms != 0 {
            return Err(refused());
        }
        Ok(Principal {
            id: info.token_id,
            name: info.name,
            role: Role::try_from(info.role).unwrap_or(Role::Unspecified),
            tenants: info.tenants.into_iter().collect(),
        })
    }

    /// Stores a new token under `fence` (whose audit rider, if any,
    /// commits with it) and returns it with its secret.
    pub async fn create(
        &self,
        fence: &Fence,
        req: &CreateTokenRequest,
        created_by: &str,
    ) -> Result<(TokenInfo, String)> {
        self.create_audited(req, created_by, |_| fence.clone())
            .await
    }

    /// [`Tokens::create`], its transaction checking the fence `fence_for`
    /// makes of the new token's id (one carrying the audit record naming
    /// it).
    pub async fn create_audited(
        &self,
        req: &CreateTokenRequest,
        created_by: &str,
        fence_for: impl FnOnce(&str) -> Fence,
    ) -> Result<(TokenInfo, String)> {
        validate(req)?;
        let token = generate()?;
        let parsed = parse(&token).ok_or_else(|| GlobalError::Corrupt("generated token".into()))?;
        let tenants: BTreeSet<String> = req.tenants.iter().cloned().collect();
        let info = TokenInfo {
            token_id: parsed.id.to_string(),
            name: req.name.clone(),
            role: req.role,
            tenants: tenants.into_iter().collect(),
            created_at_unix_ms: self.clock.now_unix_ms(),
            revoked_at_unix_ms: 0,
            created_by: created_by.to_string(),
        };
        let value = encode(&hash(parsed.secret), &info);
        let key = self.key(parsed.id);
        let fence = fence_for(parsed.id);
        self.db
            .run(|tx, _| {
                let (key, value, fence) = (key.clone(), value.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    tx.set(&key, &value)?;
                    Ok::<_, GlobalError>(())
                }
            })
            .await?;
        Ok((info, token))
    }

    /// Stores `token` as an admin token named `bootstrap` unless its id is
    /// stored already (so a revoked bootstrap token stays revoked). Not
    /// fenced: every replica may run it at start, and it only ever writes
    /// the one record it names.
    pub async fn bootstrap(&self, token: &str) -> Result<bool> {
        let parsed = parse(token).ok_or_else(|| {
            GlobalError::invalid(
                "bootstrap token",
                format!("not a token ({PREFIX}<16 hex digits>_<64 hex digits>)"),
            )
        })?;
        let info = TokenInfo {
            token_id: parsed.id.to_string(),
            name: BOOTSTRAP.to_string(),
            role: Role::Admin as i32,
            tenants: Vec::new(),
            created_at_unix_ms: self.clock.now_unix_ms(),
            revoked_at_unix_ms: 0,
            created_by: BOOTSTRAP.to_string(),
        };
        let value = encode(&hash(parsed.secret), &info);
        let key = self.key(parsed.id);
        self.db
            .run(|tx, _| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    if tx.get(&key).await?.is_some() {
                        return Ok::<_, GlobalError>(false);
                    }
                    tx.set(&key, &value)?;
                    Ok(true)
                }
            })
            .await
    }

    /// Every token, by id; revoked ones only when asked.
    pub async fn list(&self, include_revoked: bool) -> Result<Vec<TokenInfo>> {
        let range = RangeOption::from(self.space.range());
        let rows = self
            .db
            .run(|tx, _| {
                let range = range.clone();
                async move { Ok::<_, GlobalError>(tx.get_range(range).await?) }
            })
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let (_, info) = decode(&row.value)?;
            if include_revoked || info.revoked_at_unix_ms == 0 {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Revokes token `id` under `fence`; idempotent. NOT_FOUND for an
    /// unknown id.
    pub async fn revoke(&self, fence: &Fence, id: &str) -> Result<TokenInfo> {
        if id.len() != ID_BYTES * 2 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GlobalError::invalid(
                "token_id",
                format!("{} hex digits", ID_BYTES * 2),
            ));
        }
        let key = self.key(id);
        let now = self.clock.now_unix_ms();
        self.db
            .run(|tx, _| {
                let key = key.clone();
                async move {
                    let stored = tx
                        .get(&key)
                        .await?
                        .ok_or_else(|| GlobalError::NotFound(format!("token {id}")))?;
                    let (hash, mut info) = decode(&stored)?;
                    fence.check(&tx).await?;
                    if info.revoked_at_unix_ms == 0 {
                        info.revoked_at_unix_ms = now;
                        tx.set(&key, &encode(&hash, &info))?;
                    }
                    Ok::<_, GlobalError>(info)
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_its_id_is_public() {
        let token = generate().unwrap();
        let id = id_of(&token).unwrap();
        assert_eq!(id.len(), 16);
        assert!(token.starts_with(&format!("{PREFIX}{id}_")));
        assert_ne!(generate().unwrap(), token);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in [
            "",
            "mrd_",
            "mrd_abc_def",
            "xyz_0011223344556677_00",
            "mrd_zz11223344556677_",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
