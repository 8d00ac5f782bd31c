//! A server holds at most `ConnectionLimits` authenticated connections, per
//! identity and in all: one more is told why (an HTTP/2 GOAWAY, which the
//! project's client reports as the node's refusal) and closed, the others keep working, and a closed connection
//! gives its place back. Strangers that open TCP connections and never
//! shake hands hold at most `handshakes` places, and admitted clients get
//! in as soon as one of those goes.

use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::grpc::{ConnectionLimits, connect, incoming_within};
use yilian_identity::{Identity, Role};

/// One gRPC call on `ch` to a method no server has: served means the
/// node answers `UNIMPLEMENTED` (grpc-status 12).
async fn call(ch: &mut Channel) -> Result<(), String> {
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let req = http::Request::post("/yilian.Test/Nothing")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let resp = ch.call(req).await.map_err(|e| format!("{e:?}"))?;
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..])
    );
    Ok(())
}

/// A server with no services as `node`, within `limits`; its address.
async fn serve(node: &Identity, limits: ConnectionLimits) -> String {
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

/// A channel and its first call, or the error either gave.
async fn open(addr: &str, id: &Identity) -> Result<Channel, String> {
    let mut ch = connect(addr, id).await.map_err(|e| e.to_string())?;
    call(&mut ch).await?;
    Ok(ch)
}

#[tokio::test]
async fn connections_over_a_limit_are_turned_away_with_the_reason() {
    let ca = Authority::create("limits").unwrap();
    let admit = |name: &str| {
        ca.admit(&AdmissionRequest::new("org", Role::Member, name))
            .unwrap()
    };
    let (node, a, b, c) = (admit("node"), admit("a"), admit("b"), admit("c"));
    let limits = ConnectionLimits {
        per_identity: 2,
        total: 3,
        ..Default::default()
    };
    let addr = serve(&node, limits).await;

    let a1 = open(&addr, &a).await.unwrap();
    let mut a2 = open(&addr, &a).await.unwrap();
    let third = open(&addr, &a).await.unwrap_err();
    assert!(
        third.contains("this identity already has 2 connections open, the most one identity may"),
        "{third}"
    );
    // Another identity still gets in, up to the total.
    let _b1 = open(&addr, &b).await.unwrap();
    let full = open(&addr, &c).await.unwrap_err();
    assert!(
        full.contains("the node has 3 connections open, its limit"),
        "{full}"
    );
    // The connections already open were not disturbed.
    call(&mut a2).await.unwrap();

    // Closing one gives its place back once the server sees it close.
    drop(a1);
    let mut tries = 0;
    let _c1 = loop {
        match open(&addr, &c).await {
            Ok(ch) => break ch,
            Err(e) if tries < 100 && e.contains("its limit") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a freed place was not given back: {e}"),
        }
    };
}

#[tokio::test]
async fn stalled_handshakes_hold_at_most_their_places() {
    let ca = Authority::create("limits").unwrap();
    let admit = |name: &str| {
        ca.admit(&AdmissionRequest::new("org", Role::Member, name))
            .unwrap()
    };
    let (node, a) = (admit("node"), admit("a"));
    let limits = ConnectionLimits {
        handshakes: 2,
        ..Default::default()
    };
    let addr = serve(&node, limits).await;
    // Two strangers connect and say nothing: both places are taken.
    let stalled: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    let client = tokio::spawn({
        let (addr, a) = (addr.clone(), a.clone());
        async move { open(&addr, &a).await }
    });
    // The admitted client waits (in the listen backlog) meanwhile. This
    // can only fail if the cap is not kept: a slow machine makes it pass.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !client.is_finished(),
        "a third handshake ran beside two stalled ones"
    );
    // One stranger leaves: its place goes to the admitted client.
    drop(stalled);
    let _ch = client.await.unwrap().unwrap();
}
