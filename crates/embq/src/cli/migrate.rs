//! `embq migrate` and `embq index`: the schema, the vector column's type, and its index.

use super::CliError;
use crate::config::Config;
use crate::queue::{IndexOutcome, MigrateOptions, HNSW_INDEX};

/// `embq migrate` options.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Queue again the text of every stored vector made by another model (EMBEDDING_MODEL) or at
    /// other dimensions (EMBEDDING_DIMENSIONS), dropping those the column can no longer hold.
    #[arg(long)]
    pub reembed: bool,
}

/// `embq index …`
#[derive(clap::Subcommand, Debug)]
pub enum IndexCmd {
    /// Build the HNSW cosine index on embq.embeddings (CREATE INDEX CONCURRENTLY: writes go on;
    /// an interrupted build is dropped and built again).
    Create,
}

/// Applies the schema and settles the vector storage, printing what was decided and why.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    let q = crate::queue::connect(&cfg.store()).await?;
    let report = q.migrate_with(MigrateOptions { reembed: args.reembed }).await?;
    for note in &report.notes {
        println!("{note}");
    }
    println!("schema is at version {} ({})", report.version, cfg.database_url);
    Ok(())
}

/// `embq index create`.
pub async fn index(cfg: Config, cmd: IndexCmd) -> Result<(), CliError> {
    let IndexCmd::Create = cmd;
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    match q.create_index().await? {
        IndexOutcome::Present => println!("embq.{HNSW_INDEX} is already in place"),
        IndexOutcome::Built { replaced_invalid, took } => {
            if replaced_invalid {
                println!("dropped embq.{HNSW_INDEX} left invalid by an interrupted build");
            }
            println!("built embq.{HNSW_INDEX} in {:.1} s", took.as_secs_f64());
        }
    }
    Ok(())
}
