//! `meridian audit list`: the audit log of mutating calls and refusals
//! (admin).
//!
//! Owns turning the filters into one ListAuditRecords call (or, with
//! `--all`, following its pages) and printing the records. It must never
//! change anything.

use meridian_proto::v1::{AuditRecord, ListAuditRecordsRequest};

use crate::client::{Client, ConnectArgs};
use crate::error::Result;
use crate::render::{self, Output, OutputArgs};

/// `meridian audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first.
    List {
        /// Only calls made with this token id.
        #[arg(long)]
        principal: Option<String>,
        /// Only this action (the RPC's name, e.g. CancelJob).
        #[arg(long)]
        action: Option<String>,
        /// Only calls on this target (job id, region, region/node, schedule
        /// id, token id).
        #[arg(long)]
        target: Option<String>,
        /// Only records at or after this time (Unix milliseconds).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Records per page, 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start from this page token (printed after a full page).
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

/// Runs `meridian audit ...`.
pub async fn run(args: AuditArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    let AuditCommand::List {
        principal,
        action,
        target,
        since,
        limit,
        page_token,
    } = args.command;
    let request = ListAuditRecordsRequest {
        principal: principal.unwrap_or_default(),
        action: action.unwrap_or_default(),
        target: target.unwrap_or_default(),
        since_unix_ms: since,
        limit,
        page_token,
    };
    let r = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.list_audit_records(r).await }
        })
        .await?;
    if args.output.output == Output::Json {
        return render::print_message("ListAuditRecordsResponse", &r);
    }
    print_records(&r.records);
    if !r.next_page_token.is_empty() {
        println!("next page: --page-token {}", r.next_page_token);
    }
    Ok(())
}

fn print_records(records: &[AuditRecord]) {
    let mut t = render::table(&["AT", "PRINCIPAL", "NAME", "ACTION", "TARGET", "OUTCOME"]);
    for r in records {
        t.add_row(vec![
            r.at_unix_ms.to_string(),
            r.principal.clone(),
            r.principal_name.clone(),
            r.action.clone(),
            if r.target.is_empty() {
                "-".into()
            } else {
                r.target.clone()
            },
            r.outcome.clone(),
        ]);
    }
    render::print_table(&t);
}
