//! The `meridian` command: parses the command line and hands off to the
//! library crates. No scheduling logic lives here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Hierarchical multi-region federation scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole federation on this machine with embedded SQLite stores.
    Dev {
        /// Where the stores live; restarts with the same directory keep all data.
        #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = "data/dev")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Dev { data_dir } => dev(data_dir).await,
    }
}

async fn dev(data_dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let url = format!("sqlite:{}", data_dir.join("global.db").display());
    let db = meridian_store::open(&url)
        .await
        .with_context(|| format!("opening store {url}"))?;
    let boots = db
        .run(|tx, _| async move {
            tx.add_i64(&meridian_store::tuple::pack(&("dev", "boots")), 1)?;
            Ok::<_, meridian_store::StoreError>(())
        })
        .await;
    boots.context("recording the start in the store")?;
    println!("meridian dev: store ready at {url}");
    println!("not built yet: global tier, regional tier, node agents (see README.md, Status)");
    Ok(())
}
