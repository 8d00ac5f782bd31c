//! The KMS over gRPC with mutual TLS identities from a real admission
//! authority, audited on a real ledger: the devnet act end to end, a sealed
//! node unsealed by operator shares, and role checks on the wire.

use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Role};
use yilian_kms::client::Client;
use yilian_kms::seal;
use yilian_kms::service::{self, pb};
use yilian_ledger::{Ledger, Payload, Transaction};

struct Net {
    _dir: tempfile::TempDir,
    ids: Vec<Identity>,
    addr: String,
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
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("kms-test").unwrap();
    let ids: Vec<Identity> = NAMES
        .iter()
        .map(|(n, r)| ca.admit(&AdmissionRequest::new("org", *r, *n)).unwrap())
        .collect();
    let ledger = Ledger::open(
        &dir.path().join("ledger.redb"),
        ids[0].signing_key().clone(),
    )
    .unwrap();
    let authority: SigningKey = ca.signing_key();
    ledger
        .submit(
            Transaction::new(Payload::Genesis {
                network: "kms-test".into(),
                authority: authority.verifying_key().to_bytes(),
            })
            .sign(&authority),
        )
        .await
        .unwrap();
    for id in &ids {
        let p = id.principal();
        ledger
            .submit(
                Transaction::new(Payload::Admit {
                    org: p.org.clone(),
                    role: p.role,
                    name: p.name.clone(),
                    public_key: p.public_key,
                    serial: p.serial.clone(),
                    not_after_ms: u64::MAX,
                })
                .sign(&authority),
            )
            .await
            .unwrap();
    }
    let (server, shares) = if sealed {
        let (_root, shares) = seal::split_root_key(2, 3).unwrap();
        let (_, server) = service::sealed(dir.path(), ledger.clone(), ids[0].signing_key().clone());
        (server, Some(shares))
    } else {
        let (node, server) =
            service::with_key_file(dir.path(), ledger.clone(), ids[0].signing_key().clone())
                .unwrap();
        let _ = node;
        (server, None)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = yilian_identity::grpc::incoming(listener, &ids[0], Default::default()).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(incoming),
    );
    (
        Net {
            _dir: dir,
            ids,
            addr,
        },
        shares,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_act_runs_end_to_end_over_mutual_tls() {
    let (n, _) = net(false).await;
    let cast = yilian_kms::devnet::Cast {
        owner: &n.ids[1],
        trustees: [&n.ids[2], &n.ids[3], &n.ids[4]],
        reader: &n.ids[5],
        recipient: &n.ids[6],
    };
    yilian_kms::devnet::act(&n.addr, cast).await.unwrap();

    // Role checks on the wire: a trustee cannot own keys, a device cannot approve.
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
    let e = guest
        .encrypt("devnet-vault", b"x", b"", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let mut owner = Client::connect(&n.addr, &n.ids[1]).await.unwrap();
    let e = owner.encrypt("missing", b"x", b"", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_refuses_until_operators_unseal_it() {
    let (n, shares) = net(true).await;
    let shares = shares.unwrap();
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
