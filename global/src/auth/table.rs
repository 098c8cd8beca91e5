//! The access table: for every operation of the federation API (a
//! `Federation` RPC, or an HTTP route by its OpenAPI operation id, which is
//! the RPC's name where there is one), the role a caller needs.
//!
//! Owns that table, in one place for gRPC and HTTP alike, and the role
//! check the layers make before a handler runs. Tenant checks (which jobs
//! a viewer sees) happen in the service, on the job or schedule a call
//! names (`scoped`). An operation missing here is refused: tests compare
//! this table with the service descriptor and the HTTP router, so a new
//! route cannot be served without an entry. It must never grant by
//! default.

use meridian_proto::v1::Role;

use super::Principal;
use crate::error::{GlobalError, Result};

/// What a caller needs for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (health, the API's own description, metrics).
    Public,
    /// Any valid token; the service filters what it answers.
    Authenticated,
    /// Viewer, submitter or admin; the service answers NOT_FOUND for jobs
    /// and schedules of tenants not on the token.
    View,
    /// Submitter or admin, on the tenant of the job or schedule.
    Submit,
    /// Operator or admin.
    Operate,
    /// Admin.
    Administer,
}

/// Every operation of the API and its access, by name.
pub const TABLE: &[(&str, Access)] = &[
    ("SubmitJob", Access::Submit),
    ("SubmitJobs", Access::Submit),
    ("GetJob", Access::View),
    ("ListJobs", Access::View),
    ("ListJobsByBody", Access::View),
    ("CancelJob", Access::Submit),
    ("HoldJob", Access::Submit),
    ("ReleaseJob", Access::Submit),
    ("SetJobPriority", Access::Submit),
    ("WatchJobs", Access::View),
    ("ListJobTasks", Access::View),
    ("GetTaskLogs", Access::View),
    ("FollowTaskLogs", Access::View),
    ("ListRegions", Access::Authenticated),
    ("DrainRegion", Access::Operate),
    ("UndrainRegion", Access::Operate),
    ("ListNodes", Access::Operate),
    ("CordonNode", Access::Operate),
    ("UncordonNode", Access::Operate),
    ("DrainNode", Access::Operate),
    ("CreateSchedule", Access::Submit),
    ("GetSchedule", Access::View),
    ("ListSchedules", Access::View),
    ("PauseSchedule", Access::Submit),
    ("ResumeSchedule", Access::Submit),
    ("DeleteSchedule", Access::Submit),
    ("GetUsage", Access::Authenticated),
    ("CreateToken", Access::Administer),
    ("ListTokens", Access::Administer),
    ("RevokeToken", Access::Administer),
    ("ListAuditRecords", Access::Administer),
    ("Metrics", Access::Public),
    ("Healthz", Access::Public),
    ("OpenApi", Access::Public),
];

/// The access of operation `name`; `None` for an operation the table does
/// not know (refused).
pub fn access(name: &str) -> Option<Access> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The operations that change something, which the audit log records.
pub fn is_mutating(name: &str) -> bool {
    matches!(
        name,
        "SubmitJob"
            | "SubmitJobs"
            | "CancelJob"
            | "HoldJob"
            | "ReleaseJob"
            | "SetJobPriority"
            | "DrainRegion"
            | "UndrainRegion"
            | "CordonNode"
            | "UncordonNode"
            | "DrainNode"
            | "CreateSchedule"
            | "PauseSchedule"
            | "ResumeSchedule"
            | "DeleteSchedule"
            | "CreateToken"
            | "RevokeToken"
    )
}

/// PERMISSION_DENIED, naming the missing role, unless `principal`'s role
/// may make calls of `access`.
pub fn check(principal: &Principal, access: Access) -> Result<()> {
    let needed = match access {
        Access::Public | Access::Authenticated => return Ok(()),
        Access::View if matches!(principal.role, Role::Viewer | Role::Submitter) => return Ok(()),
        Access::Submit if principal.role == Role::Submitter => return Ok(()),
        Access::Operate if principal.role == Role::Operator => return Ok(()),
        _ if principal.is_admin() => return Ok(()),
        Access::View => "viewer or submitter",
        Access::Submit => "submitter",
        Access::Operate => "operator",
        Access::Administer => "admin",
    };
    Err(GlobalError::PermissionDenied(format!(
        "role {needed} required (this token is {})",
        super::role_name(principal.role)
    )))
}
