//! Authentication of gRPC calls: a tower layer in front of the
//! `Federation` service.
//!
//! Owns reading the `authorization` metadata of each Federation call,
//! admitting it by the access table (UNAUTHENTICATED / PERMISSION_DENIED
//! before any handler runs, a refusal recorded in the audit log), and
//! running the handler as the call's principal. Other services on the same
//! server pass through untouched: health and reflection are public, and
//! `RegionLink` is the regions' link, whose peers are authenticated by the
//! transport (mutual TLS). It must never log the metadata it reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Auth, Principal, table};
use crate::error::GlobalError;

/// The gRPC path prefix of the service this layer guards.
const FEDERATION: &str = "/meridian.v1.Federation/";

/// The layer.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl AuthLayer {
    /// A layer admitting Federation calls through `auth`.
    pub fn new(auth: Auth) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service the layer wraps around the server's router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Auth,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service goes with this call; the clone waits for the
        // next one (the usual tower pattern for services called later).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(method) = req.uri().path().strip_prefix(FEDERATION).map(str::to_owned) else {
                return inner.call(req).await;
            };
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match admit(&auth, &method, header.as_deref()).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal.clone());
                    super::act_as(principal, inner.call(req)).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

/// Admits a call of operation `method`, recording a refusal.
pub async fn admit(
    auth: &Auth,
    method: &str,
    authorization: Option<&str>,
) -> Result<std::sync::Arc<Principal>, GlobalError> {
    let Some(access) = table::access(method) else {
        return Err(GlobalError::PermissionDenied(format!(
            "{method} has no entry in the access table"
        )));
    };
    match auth.admit(authorization, access).await {
        Ok(p) => Ok(p),
        Err(error) => {
            refused(auth, method, authorization, &error).await;
            Err(error)
        }
    }
}

/// Records a refused call of `method`: by the token's id when it named
/// one (never its secret), anonymous otherwise.
async fn refused(auth: &Auth, method: &str, authorization: Option<&str>, error: &GlobalError) {
    let id = authorization
        .and_then(|h| h.split_whitespace().last())
        .and_then(super::tokens::id_of)
        .unwrap_or(super::ANONYMOUS);
    // The token's name is not looked up for a refusal: its id says which.
    let principal = Principal {
        id: id.to_string(),
        name: String::new(),
        ..Principal::system(super::ANONYMOUS)
    };
    auth.audit
        .record(
            &principal,
            method,
            "",
            &crate::audit::outcome_of(error.code()),
            &error.to_string(),
        )
        .await;
}
