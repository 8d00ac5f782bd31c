//! What the identity crate's tests share: admitted identities, a gRPC
//! server with no services behind the mutual-TLS listener, and one call.

use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::grpc::{ConnectionLimits, error_chain, incoming_within};
use yilian_identity::{Identity, Role};

/// Members `names` of a fresh network `network`, admitted by its authority.
pub fn members<const N: usize>(network: &str, names: [&str; N]) -> [Identity; N] {
    let ca = Authority::create(network).unwrap();
    names.map(|name| {
        ca.admit(&AdmissionRequest::new("org", Role::Member, name))
            .unwrap()
    })
}

/// A server with no services as `node`, within `limits`; its address.
pub async fn serve(node: &Identity, limits: ConnectionLimits) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = incoming_within(listener, node, Default::default(), limits).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming),
    );
    addr
}

/// One gRPC call on `ch` to a method no server has: served means the
/// node answers `UNIMPLEMENTED` (grpc-status 12).
pub async fn call(ch: &mut Channel) -> Result<(), String> {
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| error_chain(&e))?;
    let req = http::Request::post("/yilian.Test/Nothing")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let resp = ch.call(req).await.map_err(|e| error_chain(&e))?;
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..])
    );
    Ok(())
}
