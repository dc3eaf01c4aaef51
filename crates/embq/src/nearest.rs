//! Semantic search over the stored embeddings: embeds a query with the configured provider
//! and asks the store for the nearest vectors of that model (`embq search`, the demo's
//! example and the console's search page).

use crate::provider::{Provider, ProviderError};
use crate::queue::{Queue, QueueError, Search};

/// Why a search found nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum NearestError {
    /// The provider could not embed the query.
    #[error("could not embed the query: {0}")]
    Embed(ProviderError),
    /// The provider answered without a vector.
    #[error("the provider returned no vector for the query")]
    NoVector,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] QueueError),
}

/// Embeds `query` with `provider` and returns the `k` stored embeddings of its model nearest
/// to it, only of `source_type` when given.
pub async fn nearest(
    provider: &dyn Provider,
    q: &dyn Queue,
    query: &str,
    k: usize,
    source_type: Option<&str>,
) -> Result<Search, NearestError> {
    let embedded = provider.embed(&[query]).await.map_err(NearestError::Embed)?;
    let Some(vector) = embedded.vectors.into_iter().next() else {
        return Err(NearestError::NoVector);
    };
    Ok(q.search(&vector, provider.model(), k, source_type).await?)
}
