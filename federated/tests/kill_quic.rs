//! The real path under SIGKILL: a child process runs the QUIC coordinator
//! with its ledger; agents in this process train over mutual-TLS QUIC and
//! reconnect whenever it goes away. The test kills the child with SIGKILL
//! at random points across several rounds and restarts it on the same data
//! directory. At the end every (round, agent) reward is on the ledger
//! exactly once and the rewards add up to the budget.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::client::{self, Endpoint};
use yilian_federated::coordinator::Coordinator;
use yilian_federated::{AgentPolicy, pb};
use yilian_identity::ca::Authority;
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_ledger::{Ledger, Payload};

const CHILD_ENV: &str = "YILIAN_FL_QUIC_KILL_CHILD";
const AGENTS: usize = 4;
const ROUNDS: u32 = 6;
const BUDGET: u64 = 6000;

fn open_ledger(dir: &Path) -> Ledger {
    let node = Identity::load(&dir.join("node-1")).unwrap();
    Ledger::open(&dir.join("ledger.redb"), node.signing_key().clone()).unwrap()
}

/// The child: the coordinator with its ledger on `dir`, serving agents on
/// `addr` (QUIC) and its control plane on `control` (gRPC).
#[test]
fn quic_coordinator_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when started by the test below
    };
    let (dir, addrs) = spec.split_once('@').unwrap();
    let (addr, control) = addrs.split_once('@').unwrap();
    let dir = Path::new(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ledger = open_ledger(dir);
        let node = Identity::load(&dir.join("node-1")).unwrap();
        let coordinator = Coordinator::serve(
            addr.parse().unwrap(),
            node.clone(),
            RevocationList::default(),
            Some(ledger),
            &dir.join("coordinator"),
        )
        .await
        .unwrap();
        serve_control(&coordinator, &node, control).await;
        println!("READY");
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

fn spawn_child(dir: &Path, addr: &str, control: &str) -> std::process::Child {
    spawn_ready(
        "quic_coordinator_child_process",
        CHILD_ENV,
        &format!("{}@{addr}@{control}", dir.display()),
    )
}

/// Every reward on the ledger in `dir`, by (round, account).
async fn ledger_rewards(dir: &Path) -> BTreeMap<(u32, [u8; 32]), Vec<u64>> {
    let ledger = open_ledger(dir);
    let mut rewards: BTreeMap<(u32, [u8; 32]), Vec<u64>> = BTreeMap::new();
    for i in ledger.indexed("reward", b"", 0, 100_000).unwrap() {
        if let Payload::Reward {
            task_id,
            round,
            account,
            amount,
        } = ledger.entry(i).unwrap().tx.payload
        {
            assert_eq!(task_id, "bc-kill");
            rewards.entry((round, account)).or_default().push(amount);
        }
    }
    ledger.shutdown().await;
    rewards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_coordinator_killed_at_random_points_pays_every_reward_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-kill").unwrap();
    let coord = certify(&ca, Role::Member, "node-1", dir.path());
    let engineer = certify(&ca, Role::Engineer, "eng", dir.path());
    let devices: Vec<Identity> = (0..AGENTS)
        .map(|i| certify(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    {
        let ledger = open_ledger(dir.path());
        let ids: Vec<&Identity> = devices.iter().chain([&coord, &engineer]).collect();
        genesis(&ledger, &ca, &ids).await;
        ledger.shutdown().await;
    }
    let addr = yilian_testkit::free_udp_addr();
    let control = yilian_testkit::free_addr();
    let mut child = spawn_child(dir.path(), &addr.to_string(), &control);

    let (train, validation, _) = breast_cancer_splits();
    let work = dir.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    validation
        .write_csv(&work.join("validation.csv"), "y")
        .unwrap();
    std::fs::write(
        work.join("task.toml"),
        bc_task_toml("bc-kill", ROUNDS, AGENTS, AGENTS, BUDGET),
    )
    .unwrap();
    let eng = Endpoint {
        node: control.clone(),
        identity: dir.path().join("eng"),
    };
    client::submit(&eng, &work.join("task.toml"), None)
        .await
        .unwrap();

    // Agents that reconnect until the task is done.
    let mut handles = Vec::new();
    for (i, shard) in train.partition_iid(AGENTS, 12).into_iter().enumerate() {
        let id = Identity::load(&dir.path().join(format!("dev-{i}"))).unwrap();
        handles.push(tokio::spawn(async move {
            loop {
                let cfg = AgentConfig {
                    node: addr,
                    server_name: "localhost".into(),
                    data: shard.clone(),
                    label_column: "y".into(),
                    policy: AgentPolicy::default(),
                    single_task: true,
                    earlier_today: Default::default(),
                };
                if agent::run(&id, cfg, |_| {}).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // Kill after rounds 1, 2 or 3, and 4 have closed, each a random few
    // milliseconds later: inside a round, or between a round closing and
    // its ledger writes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261201),
    );
    let targets = [1, rng.random_range(2..=3), 4];
    let mut kills = 0;
    for target in targets {
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if let Ok(s) = client::status(&eng, "bc-kill").await
                    && s.history.len() >= target
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the task made progress");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills += 1;
        child = spawn_child(dir.path(), &addr.to_string(), &control);
    }
    let history = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if let Ok(s) = client::status(&eng, "bc-kill").await
                && s.phase() == pb::TaskPhase::Finished
                && s.history.len() == ROUNDS as usize
            {
                return s.history;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the task finished");
    // An agent whose connection died with a killed coordinator may only
    // notice at its idle timeout; the ledger, not the agents, is checked.
    for h in handles {
        h.abort();
    }
    // The rounds it still owed the ledger when the task finished are
    // written by the running or a restarted coordinator: kill it (once more
    // at an arbitrary point), look, and restart it until all are there.
    let owed = history
        .iter()
        .flat_map(|r| &r.participants)
        .filter(|p| p.reward > 0)
        .count();
    let mut rewards = BTreeMap::new();
    let mut looks = 0;
    for _ in 0..20 {
        looks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        rewards = ledger_rewards(dir.path()).await;
        if rewards.len() >= owed {
            break;
        }
        child = spawn_child(dir.path(), &addr.to_string(), &control);
    }
    for r in &history {
        for p in &r.participants {
            if p.reward > 0 {
                let agent: [u8; 32] = p.agent.as_slice().try_into().unwrap();
                assert_eq!(
                    rewards.get(&(r.round, agent)),
                    Some(&vec![p.reward]),
                    "round {} reward exactly once",
                    r.round
                );
            }
        }
    }
    let total: u64 = rewards.values().flatten().sum();
    assert_eq!(total, BUDGET, "after {kills} kills");
    eprintln!(
        "{kills} SIGKILLs; {} rewards, {total} units, each once; complete at look {looks}",
        rewards.len()
    );
}
