//! `embq search "text"`: the stored embeddings nearest to a query, by cosine similarity, ranked
//! by PostgreSQL where pgvector holds them and scanned here otherwise.

use super::CliError;
use crate::config::Config;
use crate::nearest::NearestError;
use crate::provider::Provider;
use crate::queue::{Queue, Search, SearchHit, SearchMethod};

/// `embq search` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The query text.
    pub query: String,
    /// How many results.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Only this source type (its write-back table, if it has one).
    #[arg(long)]
    pub source_type: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Longest snippet of a hit's text printed.
const SNIPPET_CHARS: usize = 80;

/// Embeds the query with the configured provider and asks the store for the nearest vectors.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    if args.query.trim().is_empty() {
        return Err(CliError::Input("the query must not be empty".into()));
    }
    if args.k == 0 {
        return Err(CliError::Input("-k must be at least 1".into()));
    }
    let provider = cfg.provider().map_err(|e| CliError::Other(e.to_string()))?;
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    let found = nearest(provider.as_ref(), q.as_ref(), &args.query, args.k, args.source_type.as_deref()).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&found).map_err(|e| CliError::Other(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    if found.hits.is_empty() {
        println!("no embeddings of model {} are stored yet", provider.model());
        return Ok(());
    }
    for h in &found.hits {
        println!("{}", hit_line(h));
    }
    let how = match &found.method {
        SearchMethod::Database => "ranked by PostgreSQL (pgvector)".to_string(),
        SearchMethod::Destination(table) => format!("ranked by PostgreSQL in {table}"),
        SearchMethod::ClientScan => "scanned in this process (no pgvector column)".to_string(),
    };
    eprintln!("{} hits, {how}", found.hits.len());
    Ok(())
}

/// [`crate::nearest::nearest`] with its failures as the CLI reports them.
pub(super) async fn nearest(
    provider: &dyn Provider,
    q: &dyn Queue,
    query: &str,
    k: usize,
    source_type: Option<&str>,
) -> Result<Search, CliError> {
    crate::nearest::nearest(provider, q, query, k, source_type).await.map_err(|e| match e {
        NearestError::Store(e) => CliError::Queue(e),
        other => CliError::Other(other.to_string()),
    })
}

/// One hit as printed: score, key and a one-line snippet of its text, tab-separated.
pub(super) fn hit_line(h: &SearchHit) -> String {
    let text = h.text.as_deref().map(snippet).unwrap_or_else(|| "(text no longer kept)".into());
    format!("{:.4}\t{}/{}/{}\t{text}", h.score, h.source_type, h.source_id, h.content_type)
}

/// One line of at most `SNIPPET_CHARS` characters: whitespace runs (newlines included) become
/// one space, and other control characters are escaped so a stored text cannot drive the terminal.
fn snippet(text: &str) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
        .collect();
    match flat.char_indices().nth(SNIPPET_CHARS) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::snippet;

    #[test]
    fn snippets_are_one_bounded_line() {
        assert_eq!(snippet("a\n  b\tc\r\nd"), "a b c d");
        assert_eq!(snippet("red\u{1b}[31m"), "red\\u{1b}[31m");
        let long = "é".repeat(200);
        let s = snippet(&long);
        assert_eq!(s.chars().count(), 81);
        assert!(s.ends_with('…'));
    }
}
