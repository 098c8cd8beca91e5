//! The consoles' sign-in, seen from the global tier: checking a token for
//! the federation console of this replica and, over the region link, for a
//! region's console.
//!
//! Owns turning a token's [`Principal`] into the console's [`Viewer`] and
//! back (a console action runs as the person signed in), and the answer of
//! `RegionLink.CheckConsoleToken`. Must never return or log a token's
//! secret, and never vouch for a token the store does not hold unrevoked.

use std::sync::Arc;

use futures::future::BoxFuture;
use meridian_console::{ConsoleError, TokenCheck, Viewer};
use meridian_proto::v1::CheckConsoleTokenResponse;
use meridian_store::Retryable;

use super::{Auth, NO_AUTH, Principal};
use crate::error::GlobalError;

/// The principal a console action runs as.
pub fn principal_of(viewer: &Viewer) -> Arc<Principal> {
    Arc::new(Principal {
        id: viewer.id.clone(),
        name: viewer.name.clone(),
        role: viewer.role.token_role(),
        tenants: viewer.tenants.clone(),
    })
}

/// The principal of `token`, as the region link answers it. On a replica
/// without authentication every token stands for the no-auth admin.
pub async fn check(auth: &Auth, token: &str) -> Result<CheckConsoleTokenResponse, GlobalError> {
    let principal = if auth.enabled {
        auth.tokens.authenticate(token).await?
    } else {
        Principal::system(NO_AUTH)
    };
    Ok(CheckConsoleTokenResponse {
        token_id: principal.id,
        name: principal.name,
        role: principal.role as i32,
        tenants: principal.tenants.into_iter().collect(),
    })
}

/// A console error of a failed check.
pub fn console_error(e: GlobalError) -> ConsoleError {
    match e {
        GlobalError::Unauthenticated(m) => ConsoleError::Unauthenticated(m),
        GlobalError::PermissionDenied(m) => ConsoleError::Forbidden(m),
        e if e.is_retryable() => ConsoleError::Unavailable(e.to_string()),
        e => ConsoleError::Failed(e.to_string()),
    }
}

/// The federation console's check: this replica's token store.
pub struct LocalCheck {
    auth: Auth,
}

impl LocalCheck {
    /// A check against `auth`'s tokens.
    pub fn new(auth: Auth) -> LocalCheck {
        LocalCheck { auth }
    }
}

impl TokenCheck for LocalCheck {
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>> {
        Box::pin(async move {
            let answer = check(&self.auth, token).await.map_err(console_error)?;
            Viewer::of_check(answer)
        })
    }
}
