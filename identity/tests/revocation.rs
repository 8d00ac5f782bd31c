//! A member dialing its peers keeps the revocation list too: once a peer's
//! certificate is revoked, the live connection to it is cut (the next call
//! on the existing channel fails) and a new one is refused after the
//! handshake, naming the node.

use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;
use yilian_identity::Role;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::grpc::{connect_lazy_watched, incoming};
use yilian_identity::tls::RevocationList;

/// One gRPC call to a method no server has (served: `UNIMPLEMENTED`).
async fn call(ch: &mut Channel) -> Result<(), String> {
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| yilian_identity::grpc::error_chain(&e))?;
    let req = http::Request::post("/yilian.Test/Nothing")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    ch.call(req)
        .await
        .map(|_| ())
        .map_err(|e| yilian_identity::grpc::error_chain(&e))
}

#[tokio::test]
async fn a_peer_revoked_mid_session_is_cut_and_not_dialed_again() {
    let ca = Authority::create("revocation").unwrap();
    let admit = |name: &str| {
        ca.admit(&AdmissionRequest::new("org", Role::Member, name))
            .unwrap()
    };
    let (server, dialer) = (admit("server"), admit("dialer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming(listener, &server, Default::default()).unwrap()),
    );
    // The dialer's own list: the server knows nothing of it.
    let revoked = RevocationList::default();
    let mut ch = connect_lazy_watched(&addr, &dialer, &revoked).unwrap();
    call(&mut ch).await.unwrap();

    revoked.revoke(&server.principal().serial);
    // The live connection is closed under the call (hyper reports only
    // that), or the channel has dialed again and been refused.
    let cut = call(&mut ch).await.unwrap_err();
    assert!(
        cut.contains("connection closed") || cut.contains("has been revoked"),
        "{cut}"
    );
    let mut fresh = connect_lazy_watched(&addr, &dialer, &revoked).unwrap();
    let refused = call(&mut fresh).await.unwrap_err();
    assert!(
        refused.contains(&format!("the certificate of the node at {addr}"))
            && refused.contains("has been revoked"),
        "{refused}"
    );
    // A dialer without the list still reaches it: the server was not touched.
    let mut plain = yilian_identity::grpc::connect(&addr, &dialer)
        .await
        .unwrap();
    call(&mut plain).await.unwrap();
}
