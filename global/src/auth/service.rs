//! The federation API's token and audit calls, and the audit hooks its
//! mutating calls use.
//!
//! Owns CreateToken, ListTokens, RevokeToken and ListAuditRecords as the
//! service runs them (the gRPC and HTTP faces call these), and the helpers
//! that give a mutating call its audited fence ([`audited_fence`]: the OK
//! record rides the call's own transaction) and record its failure or a
//! forwarded call's outcome. It must never return a token's secret except
//! in the answer to the CreateToken that made it.
//!
//! [`audited_fence`]: FederationService::audited_fence

use meridian_control::lease::Fence;
use meridian_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, ListAuditRecordsRequest, ListAuditRecordsResponse,
    ListTokensRequest, ListTokensResponse, RevokeTokenRequest, RevokeTokenResponse,
};
use tonic::Status;

use crate::error::Result;
use crate::federation::FederationService;

impl FederationService {
    /// The leader's fence, carrying the OK audit record of `action` on
    /// `target` by the current principal.
    pub async fn audited_fence(&self, action: &str, target: &str) -> Result<Fence> {
        let fence = self.leadership.fence().await?;
        Ok(self.auth.audit.ride(fence, action, target))
    }

    /// Records `result`'s failure (its success rode the write) and passes
    /// it on.
    pub async fn audit_failure<T>(
        &self,
        action: &str,
        target: &str,
        result: Result<T>,
    ) -> Result<T> {
        if let Err(e) = &result {
            self.auth.audit.failed(action, target, e).await;
        }
        result
    }

    /// Records the outcome of a call forwarded to a region.
    pub async fn audit_forwarded<T>(
        &self,
        action: &str,
        target: &str,
        result: &std::result::Result<T, Status>,
    ) {
        if matches!(result, Err(s) if s.code() == tonic::Code::InvalidArgument) {
            return;
        }
        let principal = super::current();
        let (outcome, detail) = match result {
            Ok(_) => (crate::audit::OK.to_string(), String::new()),
            Err(s) => (crate::audit::outcome_of(s.code()), s.message().to_string()),
        };
        self.auth
            .audit
            .record(&principal, action, target, &outcome, &detail)
            .await;
    }

    /// CreateToken.
    pub async fn create_token(&self, req: &CreateTokenRequest) -> Result<CreateTokenResponse> {
        let result = async {
            super::tokens::validate(req)?;
            let principal = super::current();
            let fence = self.leadership.fence().await?;
            // The record names the new token's id, known only once it is
            // made: the rider is set inside `create`'s transaction, so the
            // token and its record commit together.
            let (info, secret) = self
                .auth
                .tokens
                .create_audited(req, &principal.id, |id| {
                    self.auth.audit.ride(fence.clone(), "CreateToken", id)
                })
                .await?;
            Ok(CreateTokenResponse {
                token: Some(info),
                secret,
            })
        }
        .await;
        self.audit_failure("CreateToken", &req.name, result).await
    }

    /// ListTokens.
    pub async fn list_tokens(&self, req: &ListTokensRequest) -> Result<ListTokensResponse> {
        Ok(ListTokensResponse {
            tokens: self.auth.tokens.list(req.include_revoked).await?,
        })
    }

    /// RevokeToken.
    pub async fn revoke_token(&self, req: &RevokeTokenRequest) -> Result<RevokeTokenResponse> {
        let result = async {
            let fence = self.audited_fence("RevokeToken", &req.token_id).await?;
            self.auth.tokens.revoke(&fence, &req.token_id).await
        }
        .await;
        let token = self
            .audit_failure("RevokeToken", &req.token_id, result)
            .await?;
        Ok(RevokeTokenResponse { token: Some(token) })
    }

    /// ListAuditRecords.
    pub async fn list_audit(
        &self,
        req: &ListAuditRecordsRequest,
    ) -> Result<ListAuditRecordsResponse> {
        self.auth.audit.list(req).await
    }
}
