//! A server holds at most `ConnectionLimits` authenticated connections, per
//! identity and in all: one more is told why (an HTTP/2 GOAWAY, which the
//! project's client reports as the node's refusal) and closed, the others keep working, and a closed connection
//! gives its place back. Strangers that open TCP connections and never
//! shake hands hold at most `handshakes` places, and admitted clients get
//! in as soon as one of those goes.

mod common;

use common::{call, members, serve};
use tonic::transport::Channel;
use yilian_identity::Identity;
use yilian_identity::grpc::{ConnectionLimits, connect};

/// A channel and its first call, or the error either gave.
async fn open(addr: &str, id: &Identity) -> Result<Channel, String> {
    let mut ch = connect(addr, id).await.map_err(|e| e.to_string())?;
    call(&mut ch).await?;
    Ok(ch)
}

#[tokio::test]
async fn connections_over_a_limit_are_turned_away_with_the_reason() {
    let [node, a, b, c] = members("limits", ["node", "a", "b", "c"]);
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
    let [node, a] = members("limits", ["node", "a"]);
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
