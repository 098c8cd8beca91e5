//! Who is calling, and what they may do: bearer tokens, roles, and the
//! principal of the call in progress.
//!
//! Owns the [`Principal`] a token stands for, the per-operation access table
//! ([`table`]), the token store ([`tokens`]), the gRPC layer ([`grpc`]) and
//! the HTTP middleware ([`http`]) that authenticate every call and check its
//! role before any handler runs, and the tenant checks the service applies
//! to the jobs and schedules a call names ([`scoped`]). The principal of a
//! call travels as a task-local set by the layer around the handler, so
//! every path into the service (gRPC, HTTP) is checked by the same code; an
//! in-process caller with no principal set (the schedule ticker, tests, the
//! simulation) acts as the system. This module must never log, trace or
//! store a token's secret, and never answer a call of one tenant with data
//! of another.

pub mod console;
pub mod grpc;
pub mod http;
pub mod scoped;
pub mod service;
pub mod table;
pub mod tokens;

use std::collections::BTreeSet;
use std::sync::Arc;

use meridian_proto::v1::Role;

use crate::audit::Audit;
use crate::error::{GlobalError, Result};
pub use tokens::Tokens;

/// The principal id recorded for a call made with no valid token.
pub const ANONYMOUS: &str = "anonymous";
/// The principal id of calls to a replica started without authentication.
pub const NO_AUTH: &str = "no-auth";
/// The principal id of in-process calls (the schedule ticker, tests).
pub const SYSTEM: &str = "system";

/// Who a call is made by: a token's id, name, role and tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token id (public), or one of [`NO_AUTH`], [`SYSTEM`].
    pub id: String,
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The tenants of a viewer or submitter token.
    pub tenants: BTreeSet<String>,
}

impl Principal {
    /// An all-powerful principal that is no token: in-process callers and
    /// a replica started with `--no-auth`.
    pub fn system(id: &str) -> Principal {
        Principal {
            id: id.to_string(),
            name: id.to_string(),
            role: Role::Admin,
            tenants: BTreeSet::new(),
        }
    }

    /// Admin implies every other role on every tenant (one token can run
    /// a whole deployment, as in `meridian dev`).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May drain and cordon regions and nodes.
    pub fn is_operator(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Admin)
    }

    /// May read the jobs of `tenant`.
    pub fn can_view(&self, tenant: &str) -> bool {
        self.is_admin()
            || (matches!(self.role, Role::Viewer | Role::Submitter)
                && self.tenants.contains(tenant))
    }

    /// May submit and change the jobs of `tenant`.
    pub fn can_submit(&self, tenant: &str) -> bool {
        self.is_admin() || (self.role == Role::Submitter && self.tenants.contains(tenant))
    }

    /// The tenants whose jobs this principal sees; `None` for all.
    pub fn visible_tenants(&self) -> Option<&BTreeSet<String>> {
        (!self.is_admin()).then_some(&self.tenants)
    }

    /// PERMISSION_DENIED unless this principal may submit to `tenant`;
    /// the message names the missing role.
    pub fn require_submit(&self, tenant: &str) -> Result<()> {
        if self.can_submit(tenant) {
            Ok(())
        } else {
            Err(GlobalError::PermissionDenied(format!(
                "role submitter for tenant {tenant:?} required"
            )))
        }
    }
}

/// Role names as the CLI and the HTTP API spell them.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Submitter => "submitter",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Unspecified => "unspecified",
    }
}

tokio::task_local! {
    static CALLER: Arc<Principal>;
}

/// The principal of the call in progress; the system for in-process calls.
pub fn current() -> Arc<Principal> {
    CALLER
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::new(Principal::system(SYSTEM)))
}

/// Runs `fut` as `principal`'s call.
pub async fn act_as<F: Future>(principal: Arc<Principal>, fut: F) -> F::Output {
    CALLER.scope(principal, fut).await
}

/// A token held in configuration: its `Debug` never shows it, so a
/// logged configuration does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a replica authenticates calls.
#[derive(Clone)]
pub struct Auth {
    /// The token store.
    pub tokens: Tokens,
    /// The audit log, where refusals are recorded.
    pub audit: Audit,
    /// False on a replica started with `--no-auth`: every call acts as
    /// [`NO_AUTH`], an admin.
    pub enabled: bool,
}

impl Auth {
    /// The principal of a call presenting `authorization` (the header's
    /// value, `Bearer <token>`), for an operation of access `access`.
    /// UNAUTHENTICATED without a valid token, PERMISSION_DENIED when its
    /// role cannot make calls of that access.
    pub async fn admit(
        &self,
        authorization: Option<&str>,
        access: table::Access,
    ) -> Result<Arc<Principal>> {
        if !self.enabled {
            return Ok(Arc::new(Principal::system(NO_AUTH)));
        }
        if access == table::Access::Public {
            return Ok(Arc::new(Principal {
                id: ANONYMOUS.to_string(),
                name: String::new(),
                role: Role::Unspecified,
                tenants: BTreeSet::new(),
            }));
        }
        let token =
            authorization.ok_or_else(|| GlobalError::Unauthenticated("no bearer token".into()))?;
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .ok_or_else(|| {
                GlobalError::Unauthenticated("authorization is not `Bearer <token>`".into())
            })?;
        let principal = self.tokens.authenticate(token.trim()).await?;
        table::check(&principal, access)?;
        Ok(Arc::new(principal))
    }
}
