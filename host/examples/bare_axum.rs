//! The baseline for HTTP benchmarks: a bare axum handler returning fixed JSON,
//! with the same runtime and server setup as memhost but no middleware,
//! auth or database. `cargo run --release --example bare_axum -- 127.0.0.1:18999`

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18999".into());
    let app = Router::new().route(
        "/",
        get(|| async {
            axum::Json(serde_json::json!({
                "success": true,
                "data": {"id": "01a204fb-964a-739c-bbbd-f2b9bcb02b2a", "text": "Alice likes green tea in the morning"},
                "meta": {"request_id": "req_fixed", "processing_time_ms": 0.01}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("bare axum listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}
