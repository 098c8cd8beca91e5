//! `meridian token ...`: create, list and revoke bearer tokens (admin).
//!
//! Owns turning the subcommands into CreateToken, ListTokens and
//! RevokeToken calls and printing their answers. The secret of a created
//! token is printed once, on its own line (or in the JSON answer), for the
//! caller to store; it must never be printed anywhere else.

use meridian_proto::v1::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Role, TokenInfo,
};

use crate::client::{Client, ConnectArgs};
use crate::error::Result;
use crate::render::{self, Output, OutputArgs};

/// `meridian token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// A token's role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Read the jobs of its tenants.
    Viewer,
    /// Read, submit and change the jobs of its tenants.
    Submitter,
    /// Drain and cordon regions and nodes.
    Operator,
    /// Everything, tokens and the audit log included.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Submitter => Role::Submitter,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// The token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed this once.
    Create {
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A tenant it acts on (viewer and submitter; repeat for several).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// A name for listings and the audit log.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Also list revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Print a fresh token without storing it anywhere: for a
    /// `meridian global --bootstrap-token-file`.
    Generate,
    /// Revoke a token by its id: its next call is refused on every replica.
    Revoke {
        /// The token's id (16 hex digits, as `list` shows it).
        token_id: String,
    },
}

/// Runs `meridian token ...`.
pub async fn run(args: TokenArgs) -> Result<()> {
    if let TokenCommand::Generate = args.command {
        println!("{}", crate::dev::token::generate()?);
        return Ok(());
    }
    let mut client = Client::new(&args.connect)?;
    let output = args.output.output;
    match args.command {
        TokenCommand::Create {
            role,
            tenants,
            name,
        } => {
            let request = CreateTokenRequest {
                name,
                role: Role::from(role) as i32,
                tenants,
            };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.create_token(r).await }
                })
                .await?;
            if output == Output::Json {
                return render::print_message("CreateTokenResponse", &r);
            }
            print_tokens(output, &r.token.into_iter().collect::<Vec<_>>())?;
            println!("{}", r.secret);
            Ok(())
        }
        TokenCommand::List { all } => {
            let request = ListTokensRequest {
                include_revoked: all,
            };
            let r = client
                .call(|mut c| async move { c.list_tokens(request).await })
                .await?;
            print_tokens(output, &r.tokens)
        }
        TokenCommand::Revoke { token_id } => {
            let request = RevokeTokenRequest { token_id };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.revoke_token(r).await }
                })
                .await?;
            print_tokens(output, &r.token.into_iter().collect::<Vec<_>>())
        }
        TokenCommand::Generate => Ok(()),
    }
}

fn role_name(role: i32) -> String {
    Role::try_from(role)
        .map(|r| render::short(r.as_str_name(), "ROLE_"))
        .unwrap_or_else(|_| role.to_string())
}

fn print_tokens(output: Output, tokens: &[TokenInfo]) -> Result<()> {
    if output == Output::Json {
        let items = tokens
            .iter()
            .map(|t| render::to_json("TokenInfo", t))
            .collect::<Result<Vec<_>>>()?;
        return render::print_json(&serde_json::json!({ "tokens": items }));
    }
    let mut t = render::table(&["ID", "NAME", "ROLE", "TENANTS", "CREATED BY", "REVOKED"]);
    for token in tokens {
        t.add_row(vec![
            token.token_id.clone(),
            token.name.clone(),
            role_name(token.role),
            if token.tenants.is_empty() {
                "-".into()
            } else {
                token.tenants.join(",")
            },
            token.created_by.clone(),
            if token.revoked_at_unix_ms == 0 {
                "-".into()
            } else {
                token.revoked_at_unix_ms.to_string()
            },
        ]);
    }
    render::print_table(&t);
    Ok(())
}
