//! `embq search "text"`: the stored embeddings nearest to a query, by cosine similarity.

use super::CliError;
use crate::config::Config;
use crate::vector::cosine;

/// `embq search` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The query text.
    pub query: String,
    /// How many results.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Most stored embeddings to scan.
    #[arg(long, default_value_t = 1_000_000)]
    pub scan_limit: i64,
}

/// Embeds the query with the configured provider and scans the stored vectors.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    if args.query.trim().is_empty() {
        return Err(CliError::Input("the query must not be empty".into()));
    }
    let provider =
        crate::provider::build(&cfg, std::time::Duration::ZERO).map_err(|e| CliError::Other(e.to_string()))?;
    let q = crate::queue::connect(&cfg).await?;
    q.check_schema().await?;
    let embedded = provider
        .embed(&[args.query.as_str()])
        .await
        .map_err(|e| CliError::Other(format!("could not embed the query: {e}")))?;
    let Some(query) = embedded.vectors.into_iter().next() else {
        return Err(CliError::Other("the provider returned no vector for the query".into()));
    };
    let stored = q.embeddings(provider.model(), args.scan_limit).await?;
    if stored.is_empty() {
        println!("no embeddings of model {} are stored yet", provider.model());
        return Ok(());
    }
    let mut scored: Vec<(f32, &crate::queue::StoredEmbedding)> =
        stored.iter().filter(|e| e.vector.len() == query.len()).map(|e| (cosine(&query, &e.vector), e)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (score, e) in scored.into_iter().take(args.k) {
        println!("{score:.4}\t{}/{}/{}", e.source_type, e.source_id, e.content_type);
    }
    Ok(())
}
