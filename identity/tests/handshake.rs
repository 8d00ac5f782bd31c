//! A client that opens a TCP connection to a mutual-TLS server and never
//! starts the handshake is cut off after `HANDSHAKE_TIMEOUT`, instead of
//! holding a task and a socket for ever.

use tokio::io::AsyncReadExt;
use yilian_identity::Role;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::grpc::{HANDSHAKE_TIMEOUT, incoming};

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let ca = Authority::create("handshake").unwrap();
    let node = ca
        .admit(&AdmissionRequest::new("org", Role::Member, "node"))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _incoming = incoming(listener, &node, Default::default()).unwrap();

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    // A hang guard well past the timeout, not a timing assertion.
    let read = tokio::time::timeout(HANDSHAKE_TIMEOUT * 6, silent.read(&mut buf))
        .await
        .expect("the server never closed a connection that sent nothing");
    // Closed (EOF) or reset: either way the server let go and sent no data.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
