//! A member dialing its peers keeps the revocation list too: once a peer's
//! certificate is revoked, the live connection to it is cut (the next call
//! on the existing channel fails) and a new one is refused after the
//! handshake, naming the node.

mod common;

use common::{call, members, serve};
use yilian_identity::grpc::connect_lazy_watched;
use yilian_identity::tls::RevocationList;

#[tokio::test]
async fn a_peer_revoked_mid_session_is_cut_and_not_dialed_again() {
    let [server, dialer] = members("revocation", ["server", "dialer"]);
    let addr = serve(&server, Default::default()).await;
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
