//! The KMS over gRPC with mutual TLS identities from a real admission
//! authority, audited on a real ledger: the devnet act end to end, a sealed
//! node unsealed by operator shares, and role checks on the wire.

use tonic::service::Routes;
use yilian_identity::{Identity, Role};
use yilian_kms::client::Client;
use yilian_kms::seal;
use yilian_kms::service::{self, pb};
use yilian_testkit::Network;

struct Net {
    _net: Network,
    ids: Vec<Identity>,
    addr: String,
    sealed: tokio::sync::watch::Receiver<bool>,
}

const NAMES: &[(&str, Role)] = &[
    ("node", Role::Member),
    ("owner", Role::Member),
    ("trustee-a", Role::Trustee),
    ("trustee-b", Role::Trustee),
    ("trustee-c", Role::Trustee),
    ("guest", Role::Device),
    ("heir", Role::Member),
];

async fn net(sealed: bool) -> (Net, Option<Vec<yilian_kms::secret::UnsealShare>>) {
    let net = Network::new("kms-test").await;
    let mut ids = vec![net.load("node")];
    ids.extend(net.admit_all(&NAMES[1..]).await);
    let (dir, ledger, key) = (net.dir.path(), net.ledger.clone(), net.node.signing_key());
    let (kms, server, shares) = if sealed {
        // The store is first opened with the split root, as at set-up, so
        // that shares of any other root are refused.
        let (root, shares) = seal::split_root_key(2, 3).unwrap();
        let audit = yilian_kms::LedgerAudit::new(ledger.clone(), key.clone());
        let store = dir.join("kms.redb");
        drop(yilian_kms::Kms::open(&store, root, audit, yilian_kms::system_clock()).unwrap());
        let (kms, server) = service::sealed(dir, ledger, key.clone());
        (kms, server, Some(shares))
    } else {
        let (kms, server) = service::with_key_file(dir, ledger, key.clone()).unwrap();
        (kms, server, None)
    };
    let sealed = kms.sealed_changes();
    let addr = yilian_testkit::serve(&ids[0], Default::default(), Routes::new(server)).await;
    (
        Net {
            _net: net,
            ids,
            addr,
            sealed,
        },
        shares,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_checked_on_the_wire() {
    let (n, _) = net(false).await;
    // A trustee cannot own keys, a device cannot approve.
    let mut trustee = Client::connect(&n.addr, &n.ids[2]).await.unwrap();
    let e = trustee.create_key("t", false, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut guest = Client::connect(&n.addr, &n.ids[5]).await.unwrap();
    let e = guest
        .raw
        .approve_recovery(pb::ApproveRecoveryRequest {
            recovery_id: "r-x".into(),
            share: vec![0; 64],
            signature: vec![0; 64],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let mut owner = Client::connect(&n.addr, &n.ids[1]).await.unwrap();
    owner.create_key("vault", false, false).await.unwrap();
    let e = guest.encrypt("vault", b"x", b"", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = owner.encrypt("missing", b"x", b"", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_refuses_until_operators_unseal_it() {
    let (n, shares) = net(true).await;
    let shares = shares.unwrap();
    assert!(*n.sealed.borrow(), "a sealed node says it is sealed");
    let mut owner = Client::connect(&n.addr, &n.ids[1]).await.unwrap();
    let e = owner.create_key("k", false, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("sealed"));
    // Only operators (members) unseal.
    let mut guest = Client::connect(&n.addr, &n.ids[5]).await.unwrap();
    let e = guest
        .raw
        .unseal(pb::UnsealRequest {
            share: shares[0].expose().to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = owner
        .raw
        .unseal(pb::UnsealRequest {
            share: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Shares of another KMS combine but do not open this one; the node
    // forgets them and stays sealed.
    let (_, foreign) = seal::split_root_key(2, 3).unwrap();
    let given = |share: &yilian_kms::secret::UnsealShare| pb::UnsealRequest {
        share: share.expose().to_owned(),
    };
    let r = owner.raw.unseal(given(&foreign[0])).await.unwrap();
    assert_eq!(r.into_inner().shares_given, 1);
    let e = owner.raw.unseal(given(&foreign[1])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("root key"), "{}", e.message());
    assert!(*n.sealed.borrow(), "foreign shares leave the node sealed");
    let r = owner
        .raw
        .unseal(pb::UnsealRequest {
            share: shares[2].expose().to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.sealed);
    assert_eq!((r.shares_given, r.threshold), (1, 2));
    let r = owner
        .raw
        .unseal(pb::UnsealRequest {
            share: shares[0].expose().to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.sealed);
    assert!(
        !*n.sealed.borrow(),
        "unsealing is announced to the node's health service"
    );
    owner.create_key("k", false, false).await.unwrap();
    let env = owner
        .encrypt("k", b"after unseal", b"", None)
        .await
        .unwrap();
    assert_eq!(
        owner.decrypt(&env, b"", None).await.unwrap().expose(),
        b"after unseal"
    );
}
