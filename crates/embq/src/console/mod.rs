//! `embq console`: a small web console over the queue, served from the binary with its assets
//! embedded. Pages are rendered on the server with every stored value escaped (`html.rs`); the
//! only script is `assets/console.js` (live refresh), allowed by a Content-Security-Policy that
//! forbids inline script. Who may read and act is decided in `guard.rs`.
//!
//! One file per page: `overview.rs` (counts, charts, workers, budgets), `jobs.rs` (listing and one
//! job), `dead.rs` (dead letters by error, retry and purge), `search.rs`.

mod charts;
mod dead;
mod form;
mod guard;
mod html;
mod jobs;
mod overview;
mod search;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use guard::Access;

use crate::provider::Provider;
use crate::queue::{Queue, QueueError};

/// What the console serves from.
pub struct Console {
    /// The store.
    pub queue: Arc<dyn Queue>,
    /// Embeds search queries (the configured provider).
    pub provider: Arc<dyn Provider>,
    /// The fleet budgets' database URL (PostgreSQL); `None` on SQLite, whose budgets are per worker.
    pub budgets_url: Option<String>,
    /// Who may read and act.
    pub access: Access,
}

/// Shared by every handler.
type Shared = Arc<Console>;

/// The console's routes.
pub fn router(console: Console) -> Router {
    let shared: Shared = Arc::new(console);
    Router::new()
        .route("/", get(overview::page))
        .route("/budget/resume", post(overview::resume))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{id}", get(jobs::one))
        .route("/dead", get(dead::page))
        .route("/dead/confirm", post(dead::confirm))
        .route("/dead/apply", post(dead::apply))
        .route("/search", get(search::page))
        .route("/login", get(guard::login_page).post(guard::login))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard::check))
        .with_state(shared)
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Console,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(console).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("assets/console.css")).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("assets/console.js")).into_response()
}

/// A page-level failure: the store failed, or the request was bad.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The store failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// The request itself was wrong.
    #[error("{0}")]
    Bad(String),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let code = match &self {
            Self::Queue(QueueError::Invalid(_)) | Self::Bad(_) => StatusCode::BAD_REQUEST,
            Self::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        };
        let body = html::layout("Error", "", &format!("<p class=\"error\">{}</p>", html::esc(&self.to_string())));
        (code, body).into_response()
    }
}

/// Handlers' result.
type Page = Result<Response, PageError>;
