//! The explorer: a read-only web page a node serves on its own port, for
//! auditors and operators in a browser. It shows ledger entries decoded by
//! type, the signed and cosigned heads, and accounts; the page itself checks
//! each entry's inclusion proof and the head's signature with WebCrypto.
//!
//! It shows only what the ledger shows every member, and never a secret.
//! It has no login: whoever reaches its port reads the ledger, so it binds to
//! localhost unless `[explorer] listen` says otherwise. The page's files are
//! compiled into the binary (`assets/`), so serving it needs no JavaScript
//! toolchain.

pub mod view;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use yilian_federated::coordinator::Histories;
use yilian_ledger::Ledger;

use view::Refusal;

/// The `[explorer]` section of `node.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplorerConfig {
    /// Where the page is served (default `127.0.0.1:7480`, this machine only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7480))
}

impl Default for ExplorerConfig {
    fn default() -> Self {
        ExplorerConfig {
            listen: default_listen(),
        }
    }
}

/// A running explorer; dropping it stops the server.
pub struct Explorer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Explorer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Explorer {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// What the page reads: the ledger, and the round histories of the tasks
/// this node coordinates, if it does.
#[derive(Clone)]
struct Sources {
    ledger: Ledger,
    rounds: Option<Histories>,
}

/// Binds `listen` and serves the explorer over `ledger` (and the rounds of
/// the tasks `rounds` runs, when this node coordinates learning).
pub async fn serve(
    listen: SocketAddr,
    ledger: Ledger,
    rounds: Option<Histories>,
) -> std::io::Result<Explorer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(Sources { ledger, rounds });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the explorer stopped");
        }
    });
    Ok(Explorer { addr, task })
}

fn router(sources: Sources) -> Router {
    let api = Router::new()
        .route("/api/head", get(head))
        .route("/api/entries", get(entries))
        .route("/api/entries/{index}", get(entry))
        .route("/api/accounts/{account}", get(account))
        .route("/api/search", get(search))
        .route("/api/tasks/{task}", get(task))
        .route("/api/keys/{owner}/{key}", get(key_audit))
        .route("/api/zk", get(zk_queries));
    ASSETS
        .iter()
        .fold(api, |r, &(path, content_type, body)| {
            r.route(path, get(move || async move { asset(content_type, body) }))
        })
        .fallback(|| async { Refusal::NotFound("no such page".into()) })
        .with_state(sources)
}

/// The page's files, compiled in: path, content type, body. uPlot 1.6.32
/// is from npm, MIT (assets/vendor/README.md).
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "/vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("assets/vendor/uPlot.min.css"),
    ),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page runs only its own script and talks only to this server.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// A refusal answers with its status and `{"error": reason}`.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "explorer request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type Answer = Result<Json<Value>, Refusal>;

/// Query parameters arrive as text, so a bad one gets this endpoint's own
/// message rather than the framework's.
fn number(q: &HashMap<String, String>, name: &'static str) -> Result<Option<u64>, Refusal> {
    q.get(name).map(|v| view::whole_number(name, v)).transpose()
}

async fn head(State(Sources { ledger, .. }): State<Sources>) -> Json<Value> {
    Json(view::head(&ledger))
}

async fn entries(
    State(Sources { ledger, .. }): State<Sources>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    view::entries(&ledger, number(&q, "before")?, number(&q, "limit")?).map(Json)
}

async fn entry(State(Sources { ledger, .. }): State<Sources>, Path(index): Path<String>) -> Answer {
    view::entry(&ledger, view::whole_number("index", &index)?).map(Json)
}

async fn account(
    State(Sources { ledger, .. }): State<Sources>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let id = view::account_param("account", &account)?;
    view::account(&ledger, &id, number(&q, "from")?).map(Json)
}

async fn search(
    State(Sources { ledger, .. }): State<Sources>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let text = q.get("q").map(String::as_str).unwrap_or("");
    view::search(&ledger, text, number(&q, "from")?).map(Json)
}

async fn task(State(sources): State<Sources>, Path(task): Path<String>) -> Answer {
    let rounds = match &sources.rounds {
        Some(h) => h.of(&task).await,
        None => None,
    };
    view::task(&sources.ledger, &task, rounds.as_deref()).map(Json)
}

async fn key_audit(
    State(Sources { ledger, .. }): State<Sources>,
    Path((owner, key)): Path<(String, String)>,
) -> Answer {
    view::key_audit(&ledger, &view::account_param("owner", &owner)?, &key).map(Json)
}

async fn zk_queries(
    State(Sources { ledger, .. }): State<Sources>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    view::zk_queries(&ledger, number(&q, "from")?, number(&q, "limit")?).map(Json)
}
