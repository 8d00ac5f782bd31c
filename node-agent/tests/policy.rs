//! The device owner's policy, kept by real `yilian-agent` processes against
//! a coordinator with a real ledger over mutual-TLS QUIC: an agent outside
//! its training windows sits every round out and earns nothing while the
//! task goes on without it; an agent over its byte budget stops, says why,
//! and waits for the next day. `yilian-agent status` reports both, with
//! each reward's proof checked again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use yilian_federated::coordinator::{Coordinator, TrainingSubmission};
use yilian_identity::Role;
use yilian_identity::tls::RevocationList;
use yilian_models::Dataset;
use yilian_testkit::{Network, wait_until};

const AGENT: &str = env!("CARGO_BIN_EXE_yilian-agent");

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// A coordinator on the network's ledger running one breast-cancer task.
async fn coordinator(
    net: &Network,
    id: &str,
    rounds: u32,
    per_round: usize,
    min: usize,
) -> Coordinator {
    let node = Coordinator::serve(
        "127.0.0.1:0".parse().unwrap(),
        net.load("node"),
        RevocationList::default(),
        Some(net.ledger.clone()),
        &net.path("coordinator"),
    )
    .await
    .unwrap();
    let all = Dataset::breast_cancer(&data_dir().join("breast_cancer.csv")).unwrap();
    let (_, validation) = all.split(0.2, 3);
    let csv = net.path("validation.csv");
    validation.write_csv(&csv, "y").unwrap();
    let task = format!(
        r#"id = "{id}"
rounds = {rounds}
agents_per_round = {per_round}
min_agents = {min}
local_epochs = 1
batch_size = 16
validation = "validation.csv"
reward_budget = 1000
round_timeout_ms = 60000
optimizer = {{ adam = {{ lr = 0.02 }} }}
[model]
input = [30]
layers = [{{ linear = {{ out = 2 }} }}, "softmax"]
[schema]
features = 30
label_column = "y"
classes = 2
"#
    );
    node.submit(TrainingSubmission {
        task_toml: task,
        validation_csv: std::fs::read(&csv).unwrap(),
        initial_weights: Vec::new(),
    })
    .await
    .unwrap();
    node
}

/// A device `name`, admitted, with a shard of the data and an agent.toml
/// whose `[policy.schedule]` is `schedule`.
async fn device(
    net: &Network,
    node: &Coordinator,
    name: &str,
    shard: u64,
    schedule: &str,
) -> PathBuf {
    net.admit(Role::Device, name).await;
    let dir = net.path(&format!("{name}-agent"));
    std::fs::create_dir_all(&dir).unwrap();
    let all = Dataset::breast_cancer(&data_dir().join("breast_cancer.csv")).unwrap();
    let (train, _) = all.split(0.2, 3);
    let mine = &train.partition_iid(4, 11)[shard as usize];
    mine.write_csv(&dir.join("rows.csv"), "y").unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"node = "{}"
identity = "../{name}"
data = "rows.csv"
label_column = "y"

[policy]
max_threads = 1

[policy.schedule]
{schedule}
"#,
            node.local_addr().unwrap()
        ),
    )
    .unwrap();
    config
}

/// A running agent; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn start(config: &Path, args: &[&str]) -> Agent {
        let log = config.with_file_name("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(AGENT)
            .arg("join")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent {
            child,
            log,
            config: config.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> String {
        yilian_testkit::stdout_of(
            Command::new(AGENT)
                .arg("status")
                .arg("--config")
                .arg(&self.config),
        )
    }

    fn status_file(&self) -> yilian_node_agent::Status {
        yilian_node_agent::Status::load(&self.config.with_file_name("agent-state")).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UTC window that holds none of the next two hours.
fn window_elsewhere() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = (now % 86_400) / 60;
    let at = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    format!("windows = [\"{}-{}\"]", at(minute + 120), at(minute + 180))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_its_windows_an_agent_sits_out_and_earns_nothing_while_the_task_goes_on() {
    let net = Network::new("policy-window").await;
    let node = coordinator(&net, "bc-window", 2, 3, 2).await;
    let late = device(&net, &node, "late", 0, &window_elsewhere()).await;
    let a = device(&net, &node, "a", 1, "").await;
    let b = device(&net, &node, "b", 2, "").await;
    let late = Agent::start(&late, &["--once"]);
    // Recruited first, so every round's cohort holds it.
    wait_until(
        "the windowed agent joins",
        Duration::from_secs(60),
        || async { late.status_file().tasks.contains_key("bc-window") },
    )
    .await;
    let (a, b) = (Agent::start(&a, &["--once"]), Agent::start(&b, &["--once"]));
    wait_until("the task ends", Duration::from_secs(120), || async {
        node.history("bc-window")
            .await
            .is_some_and(|h| h.len() == 2)
    })
    .await;
    let history = node.history("bc-window").await.unwrap();
    let late_key = net.load("late").principal().public_key;
    assert!(
        history.iter().all(|r| !r.participants.contains(&late_key)),
        "the windowed agent took part in no round"
    );
    assert_eq!(net.ledger.balance(&late_key), 0);

    wait_until(
        "the windowed agent records its rounds",
        Duration::from_secs(30),
        || async { late.status_file().tasks["bc-window"].sat_out >= 2 },
    )
    .await;
    let st = late.status_file();
    assert_eq!(st.tasks["bc-window"].trained, 0, "{st:?}");
    assert!(st.rewards.is_empty());
    let log = late.log();
    assert!(log.contains("sat out round 0: it is "), "{log}");
    assert!(log.contains("outside the training windows"), "{log}");
    let report = late.status();
    assert!(
        report.contains("task bc-window: 0 of 2 rounds trained"),
        "{report}"
    );
    assert!(report.contains("policy.schedule.windows"), "{report}");

    // The others trained both rounds and hold verified rewards.
    for agent in [&a, &b] {
        wait_until(
            "an agent records its rewards",
            Duration::from_secs(30),
            || async {
                agent
                    .status_file()
                    .tasks
                    .get("bc-window")
                    .is_some_and(|t| t.finished)
            },
        )
        .await;
        let report = agent.status();
        assert!(
            report.contains("task bc-window: 2 of 2 rounds trained"),
            "{report}"
        );
        let st = agent.status_file();
        let total: u64 = st.rewards.iter().map(|r| r.amount).sum();
        assert!(total > 0, "{report}");
        assert!(
            report.contains(&format!(
                "total: {total} units, {total} of them with verified proofs"
            )),
            "{report}"
        );
        assert!(st.sent_total > 0 && st.received_total > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_byte_budget_stops_and_says_why() {
    let net = Network::new("policy-bytes").await;
    let rounds = 40;
    let node = coordinator(&net, "bc-bytes", rounds, 2, 1).await;
    // The mutual-TLS handshake and the offer move some 14 KB, and a round
    // of this 62-parameter model about 1 KB: the budget runs out early on.
    let budget = 24_000;
    let thrifty = device(
        &net,
        &node,
        "thrifty",
        0,
        &format!("max_bytes_per_day = {budget}"),
    )
    .await;
    let other = device(&net, &node, "other", 1, "").await;
    // Long-lived: it stops for the day, not for good.
    let mut thrifty = Agent::start(&thrifty, &[]);
    let _other = Agent::start(&other, &["--once"]);
    wait_until(
        "the thrifty agent stops for the day",
        Duration::from_secs(120),
        || async {
            thrifty
                .status_file()
                .state
                .starts_with("stopped until 00:00 UTC")
        },
    )
    .await;
    let log = thrifty.log();
    assert!(
        log.contains("stopped: today's byte budget is spent"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "policy.schedule.max_bytes_per_day allows {budget}"
        )),
        "{log}"
    );
    // The task goes on and ends without it.
    wait_until("the task ends", Duration::from_secs(120), || async {
        node.history("bc-bytes")
            .await
            .is_some_and(|h| h.len() == rounds as usize)
    })
    .await;
    let st = thrifty.status_file();
    assert!(st.today.bytes >= budget, "{st:?}");
    let trained = st.tasks.get("bc-bytes").map_or(0, |t| t.trained);
    assert!(trained < rounds, "it stopped before the end: {st:?}");
    let key = net.load("thrifty").principal().public_key;
    let history = node.history("bc-bytes").await.unwrap();
    let took_part = history
        .iter()
        .filter(|r| r.participants.contains(&key))
        .count();
    assert_eq!(took_part as u32, trained, "no round after the stop");
    let report = thrifty.status();
    assert!(
        report.contains("now: stopped until 00:00 UTC: today's byte budget is spent"),
        "{report}"
    );
    assert!(
        thrifty.child.try_wait().is_ok_and(|s| s.is_none()),
        "it waits, running"
    );
}

#[test]
fn a_bad_policy_is_refused_by_name_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[policy]\nmax_thread = 2\n", "unknown field `max_thread`"),
        (
            "[policy.schedule]\nwindows = [\"9:00-17:00\"]\n",
            "HH:MM-HH:MM",
        ),
        (
            "[policy.schedule]\nmax_cpu_share = 2.0\n",
            "policy.schedule.max_cpu_share is 2",
        ),
    ];
    for (text, says) in cases {
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, format!("node = \"127.0.0.1:9\"\n{text}")).unwrap();
        let out = Command::new(AGENT)
            .args(["join", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(says), "{text}: {err}");
        assert!(err.contains("agent.toml"), "names the file: {err}");
        assert!(
            !dir.path().join("agent-state").exists(),
            "nothing was written"
        );
    }
}
