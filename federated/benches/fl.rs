//! Federated-learning figures that matter to users, printed as a table:
//!
//! 0. the machine: cores, load average, latency of one synced 4 KiB write;
//! 1. round wall time with 10, 100, 500 and 1,000 agents over loopback QUIC
//!    with mutual TLS (tiny model: logistic regression on digits), plain and
//!    with secure aggregation, against the same agents' local training done
//!    in-process with no network (the coordination overhead), and per agent;
//! 2. protocol bytes per agent per round, plain and under SecAgg+ (every
//!    message of a whole in-memory secure round, encoded as on the wire);
//! 3. the RDP accountant's time;
//! 4. local training throughput (samples/s) of the digits MLP and the small
//!    CNN with candle on the CPU.
//!
//! Run: `cargo bench -p yilian-federated --bench fl`. On a loaded machine,
//! `YILIAN_FL_BENCH_AGENTS=10,100,250` picks other agent counts for part 1.

use std::path::Path;
use std::time::Instant;

use yilian_federated::AgentPolicy;
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::coordinator::Coordinator;
use yilian_federated::protocol::{Message, WeightsPurpose, encode, weight_messages};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_models::{Dataset, ModelSpec, Optimizer, TrainConfig};

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// Each agent holds 20 rows (drawn with overlap when agents are many).
fn shards(agents: usize, digits: &Dataset) -> Vec<Dataset> {
    (0..agents)
        .map(|i| {
            digits.subset(
                &(0..20)
                    .map(|k| (i * 20 + k) % digits.len())
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// The same agents' training for one round, in-process, with no network.
fn local_training_time(agents: usize, digits: &Dataset) -> f64 {
    let spec = ModelSpec::logistic_regression(64, 10);
    let w = spec.init_weights(0).unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 16,
        optimizer: Optimizer::Sgd { lr: 0.1 },
        proximal: None,
        seed: 1,
    };
    let start = Instant::now();
    for d in shards(agents, digits) {
        yilian_models::train(&spec, &w, &d, &cfg).unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) of this process's threads named `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let ticks: u64 = tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            // Fields after the parenthesised name: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    // Clock ticks are 1/100 s on Linux.
    ticks as f64 / 100.0
}

/// A task's wall time per round, the coordinator engine thread's CPU per
/// round, and how many agent connections failed and were retried.
struct RoundCost {
    wall: f64,
    engine_cpu: f64,
    retries: usize,
}

async fn round_time(
    agents: usize,
    rounds: u32,
    secure: bool,
    digits: &Dataset,
    validation: &Dataset,
) -> RoundCost {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("bench").unwrap();
    let coord = ca
        .admit(&AdmissionRequest::new("o", Role::Member, "node"))
        .unwrap();
    let node = Coordinator::serve(
        "127.0.0.1:0".parse().unwrap(),
        coord,
        RevocationList::default(),
        None,
        &dir.path().join("c"),
    )
    .await
    .unwrap();
    let addr = node.local_addr().unwrap();
    validation
        .write_csv(&dir.path().join("validation.csv"), "y")
        .unwrap();
    let id = format!("bench-{agents}");
    let task = format!(
        r#"id = "{id}"
rounds = {rounds}
agents_per_round = {agents}
min_agents = {agents}
local_epochs = 1
batch_size = 16
validation = "validation.csv"
reward_budget = 1000
round_timeout_ms = 600000
optimizer = {{ sgd = {{ lr = 0.1 }} }}
[model]
input = [64]
layers = [{{ linear = {{ out = 10 }} }}, "softmax"]
[schema]
features = 64
label_column = "y"
classes = 10
"#
    );
    let task = if secure {
        task.replace(
            "local_epochs = 1",
            "local_epochs = 1\nsecure_aggregation = true",
        ) + "[secagg]\nclip = 10.0\nmin_group = 5\n"
    } else {
        task
    };
    std::fs::write(dir.path().join("task.toml"), task).unwrap();
    let identities: Vec<Identity> = (0..agents)
        .map(|i| {
            ca.admit(&AdmissionRequest::new("o", Role::Device, format!("d{i}")))
                .unwrap()
        })
        .collect();
    let shards = shards(agents, digits);
    node.submit(yilian_federated::coordinator::TrainingSubmission {
        task_toml: std::fs::read_to_string(dir.path().join("task.toml")).unwrap(),
        validation_csv: std::fs::read(dir.path().join("validation.csv")).unwrap(),
        initial_weights: Vec::new(),
    })
    .await
    .unwrap();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (id, data) in identities.into_iter().zip(shards) {
        // An agent whose connection fails tries again, as a device would:
        // the task waits for every agent.
        handles.push(tokio::spawn(async move {
            let mut retries = 0;
            loop {
                let cfg = AgentConfig {
                    node: addr,
                    server_name: "localhost".into(),
                    data: data.clone(),
                    label_column: "y".into(),
                    policy: AgentPolicy::default(),
                    single_task: true,
                    earlier_today: Default::default(),
                };
                if agent::run(&id, cfg, |_| {}).await.is_ok() {
                    return retries;
                }
                retries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }));
    }
    let mut retries = 0;
    for h in handles {
        retries += h.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let engine_cpu = thread_cpu_seconds("fl-engine");
    assert_eq!(node.history(&id).await.unwrap().len(), rounds as usize);
    RoundCost {
        wall: elapsed / f64::from(rounds),
        engine_cpu: engine_cpu / f64::from(rounds),
        retries,
    }
}

fn frame_bytes(messages: &[Message]) -> usize {
    messages.iter().map(|m| encode(m).unwrap().len()).sum()
}

/// Mean bytes per agent (both directions, frames as on the wire) of one
/// whole in-memory SecAgg+ round of `n` agents in groups of at least 5,
/// for a model of `params` weights.
fn secure_bytes_per_agent(n: usize, params: usize) -> f64 {
    secure_bytes_by_step(n, params).iter().map(|(_, b)| b).sum()
}

/// The same, by step: mean bytes per agent of each message kind.
fn secure_bytes_by_step(n: usize, params: usize) -> Vec<(&'static str, f64)> {
    use rand::SeedableRng;
    use yilian_federated::secagg::{Client, Encoding, FromAgent, Server, Setup, ToAgent, graph};
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let ids: Vec<[u8; 32]> = (0..n)
        .map(|i| {
            let mut a = [0u8; 32];
            a[..8].copy_from_slice(&(i as u64).to_be_bytes());
            a
        })
        .collect();
    let to = |m: ToAgent| {
        encode(&Message::SecAggToAgent {
            task_id: "t".into(),
            message: m,
        })
        .unwrap()
        .len()
    };
    let from = |m: FromAgent| {
        encode(&Message::SecAggFromAgent {
            task_id: "t".into(),
            message: m,
        })
        .unwrap()
        .len()
    };
    // setup, advert, keys, shares up, shares down, masked input, unmask, reveal
    let mut by = [0usize; 8];
    for mut cohort in yilian_federated::contribution::random_groups(ids, 5, &mut rng) {
        cohort.sort_unstable();
        let degree = graph::default_degree(cohort.len());
        let setup = Setup {
            task: [1; 32],
            round: 0,
            cohort: cohort.clone(),
            degree,
            threshold: yilian_federated::secure_round::threshold(0.6, degree),
            graph_seed: [2; 32],
            dim: params,
        };
        let encoding = Encoding::new(10.0, 0.0, cohort.len());
        let mut server = Server::new(setup.clone());
        let mut clients = std::collections::BTreeMap::new();
        for a in &cohort {
            by[0] += to(ToAgent::Setup {
                setup: setup.clone(),
                encoding,
            });
            let (c, ad) = Client::new(setup.clone(), *a, &mut rng).unwrap();
            by[1] += from(FromAgent::Advert(ad.clone()));
            server.advert(a, ad).unwrap();
            clients.insert(*a, c);
        }
        for (a, keys) in server.close_keys().unwrap() {
            by[2] += to(ToAgent::Keys(keys.clone()));
            let sh = clients.get_mut(&a).unwrap().share_keys(&keys).unwrap();
            by[3] += from(FromAgent::Shares(sh.clone()));
            server.shares(&a, sh).unwrap();
        }
        for (a, sh) in server.close_shares().unwrap() {
            by[4] += to(ToAgent::Shares(sh.clone()));
            let m = clients
                .get_mut(&a)
                .unwrap()
                .masked_input(&sh, &vec![7; params])
                .unwrap();
            by[5] += from(FromAgent::Input(m.clone()));
            server.masked_input(&a, m).unwrap();
        }
        let unmask = server.close_inputs().unwrap();
        for a in unmask.survivors(&setup.cohort).unwrap() {
            by[6] += to(ToAgent::Unmask(unmask.clone()));
            let r = clients.get_mut(&a).unwrap().reveal(&unmask).unwrap();
            by[7] += from(FromAgent::Reveal(r.clone()));
            server.reveal(&a, r).unwrap();
        }
        server.finish().unwrap();
    }
    let names = [
        "setup",
        "advert",
        "keys",
        "shares up",
        "shares down",
        "masked input",
        "unmask",
        "reveal",
    ];
    names
        .into_iter()
        .zip(by)
        .map(|(name, b)| (name, b as f64 / n as f64))
        .collect()
}

fn throughput(spec: &ModelSpec, data: &Dataset) -> f64 {
    let w = spec.init_weights(1).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 32,
        optimizer: Optimizer::Adam { lr: 0.01 },
        proximal: None,
        seed: 1,
    };
    // Warm up once so allocation and first-call costs are excluded.
    yilian_models::train(spec, &w, &data.subset(&(0..64).collect::<Vec<_>>()), &cfg).unwrap();
    let start = Instant::now();
    let out = yilian_models::train(spec, &w, data, &cfg).unwrap();
    (out.samples * cfg.epochs as usize) as f64 / start.elapsed().as_secs_f64()
}

/// The baseline for candle's training: the same MLP (64-64-10, ReLU,
/// softmax cross-entropy, Adam at 0.01, batch 32, 2 epochs over the same
/// data) trained by a minimal loop over a GEMM crate (matrixmultiply),
/// forward and backward by hand, with every buffer allocated once.
/// Returns samples/s.
fn hand_mlp_throughput(data: &Dataset) -> f64 {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    const H: usize = 64;
    const C: usize = 10;
    const B: usize = 32;
    let f = data.n_features;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // One flat parameter vector (w1 f×H, b1 H, w2 H×C, b2 C), row-major,
    // so that Adam runs over it in one pass.
    let (w1, b1, w2) = (0, f * H, f * H + H);
    let b2 = w2 + H * C;
    let total = b2 + C;
    let mut p: Vec<f32> = (0..total)
        .map(|i| {
            let fan_in = if i < b1 { f } else { H };
            (rand::Rng::random::<f32>(&mut rng) * 2.0 - 1.0) / (fan_in as f32).sqrt()
        })
        .collect();
    let (mut g, mut m, mut v) = (vec![0f32; total], vec![0f32; total], vec![0f32; total]);
    let (mut x, mut h, mut out, mut dh) = (
        vec![0f32; B * f],
        vec![0f32; B * H],
        vec![0f32; B * C],
        vec![0f32; B * H],
    );
    let mut order: Vec<usize> = (0..data.len()).collect();
    let (beta1, beta2, lr, eps) = (0.9f32, 0.999f32, 0.01f32, 1e-8f32);
    let mut t = 0i32;
    // C (m×n) = alpha A (m×k) B (k×n) + beta C, with explicit strides so
    // that transposes are views.
    // matrixmultiply's kernels take raw pointers and strides.
    #[allow(clippy::too_many_arguments, unsafe_code)]
    fn gemm(
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &mut [f32],
        rsc: usize,
    ) {
        assert!(a.len() > (m - 1) * rsa + (k - 1) * csa);
        assert!(b.len() > (k - 1) * rsb + (n - 1) * csb);
        assert!(c.len() >= (m - 1) * rsc + n);
        // SAFETY: the asserts above keep every index the strides reach
        // inside the slices.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                beta,
                c.as_mut_ptr(),
                rsc as isize,
                1,
            );
        }
    }
    let start = Instant::now();
    for _ in 0..2 {
        order.shuffle(&mut rng);
        for chunk in order.chunks(B) {
            let n = chunk.len();
            for (r, &i) in chunk.iter().enumerate() {
                x[r * f..(r + 1) * f].copy_from_slice(&data.features[i * f..(i + 1) * f]);
            }
            // Forward: h = relu(x w1 + b1), out = softmax(h w2 + b2).
            gemm((n, f, H), &x, (f, 1), &p[w1..b1], (H, 1), 0.0, &mut h, H);
            for r in 0..n {
                for j in 0..H {
                    h[r * H + j] = (h[r * H + j] + p[b1 + j]).max(0.0);
                }
            }
            gemm((n, H, C), &h, (H, 1), &p[w2..b2], (C, 1), 0.0, &mut out, C);
            for (r, &i) in chunk.iter().enumerate() {
                let row = &mut out[r * C..(r + 1) * C];
                for (j, o) in row.iter_mut().enumerate() {
                    *o += p[b2 + j];
                }
                let max = row.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0.0;
                for o in row.iter_mut() {
                    *o = (*o - max).exp();
                    sum += *o;
                }
                // d loss / d logits = (softmax - one hot) / n.
                for o in row.iter_mut() {
                    *o /= sum * n as f32;
                }
                row[data.labels[i] as usize] -= 1.0 / n as f32;
            }
            // Backward: grads of w2, b2, then through relu to w1, b1.
            let (gw1, rest) = g.split_at_mut(b1);
            let (gb1, rest) = rest.split_at_mut(H);
            let (gw2, gb2) = rest.split_at_mut(H * C);
            gemm((H, n, C), &h, (1, H), &out, (C, 1), 0.0, gw2, C);
            gemm((n, C, H), &out, (C, 1), &p[w2..b2], (1, C), 0.0, &mut dh, H);
            gb2.fill(0.0);
            gb1.fill(0.0);
            for r in 0..n {
                for j in 0..C {
                    gb2[j] += out[r * C + j];
                }
                for j in 0..H {
                    if h[r * H + j] <= 0.0 {
                        dh[r * H + j] = 0.0;
                    }
                    gb1[j] += dh[r * H + j];
                }
            }
            gemm((f, n, H), &x, (1, f), &dh, (H, 1), 0.0, gw1, H);
            t += 1;
            let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
            for i in 0..total {
                m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
    }
    std::hint::black_box(&p);
    (2 * data.len()) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let digits = Dataset::digits(&data_dir().join("digits.csv.gz")).unwrap();
    let (train, validation) = digits.split(0.1, 1);
    let mut report = yilian_testkit::Report::start("fl");

    println!(
        "== round wall time over loopback QUIC (mutual TLS), logistic regression 64->10 (650 params), 3 rounds, plain and secure"
    );
    let counts: Vec<usize> = std::env::var("YILIAN_FL_BENCH_AGENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![10, 100, 500, 1000]);
    let mut base = None;
    for n in counts {
        let local = local_training_time(n, &train);
        let plain = round_time(n, 3, false, &train, &validation).await;
        let secure = round_time(n, 3, true, &train, &validation).await;
        let (t, s) = (plain.wall, secure.wall);
        let (first, per_first) = *base.get_or_insert((n, t / n as f64));
        report.record(
            &format!("plain round, {n} agents"),
            t,
            "s",
            "local training",
            local,
        );
        report.record(
            &format!("secure round, {n} agents"),
            s,
            "s",
            "plain round",
            t,
        );
        println!(
            "{n:>4} agents: plain {t:>8.3} s/round ({:>6.1}x local training {local:.3} s; {:>6.2} ms/agent, {:>4.2}x per agent at {first}); engine CPU {:.3} s/round ({:.2} of wall); secure {s:>8.3} s/round ({:>4.2}x plain), engine CPU {:.3} s/round; {} retried connections",
            t / local,
            t * 1000.0 / n as f64,
            (t / n as f64) / per_first,
            plain.engine_cpu,
            plain.engine_cpu / t,
            s / t,
            secure.engine_cpu,
            plain.retries + secure.retries
        );
    }

    println!("\n== protocol bytes per agent per round vs raw model size (f32)");
    for spec in [
        ModelSpec::logistic_regression(64, 10),
        ModelSpec::mlp(64, 64, 10),
        ModelSpec::small_cnn(8, 10),
        ModelSpec::mlp(64, 1024, 10),
    ] {
        let w = spec.init_weights(0).unwrap();
        let raw = w.len() * 4;
        let mut msgs = vec![Message::RoundStart {
            task_id: "t".into(),
            round: 1,
            config: TrainConfig {
                epochs: 1,
                batch_size: 16,
                optimizer: Optimizer::Sgd { lr: 0.1 },
                proximal: None,
                seed: 1,
            },
        }];
        msgs.extend(weight_messages(WeightsPurpose::Global, 1, &w));
        msgs.extend(weight_messages(WeightsPurpose::Update, 1, &w));
        msgs.push(Message::UpdateDone {
            round: 1,
            samples: 100,
            loss: 0.5,
        });
        msgs.push(Message::RoundResult {
            round: 1,
            accuracy: 0.9,
            contribution: 0.01,
            reward: 10,
            proof: None,
        });
        let bytes = frame_bytes(&msgs);
        println!(
            "{:>8} params: raw model {:>9} B, per round (down + up) {:>9} B = {:.3}x of 2 raw copies",
            w.len(),
            raw,
            bytes,
            bytes as f64 / (2 * raw) as f64
        );
    }

    println!(
        "\n== protocol bytes per agent per round, SecAgg+ against plain (650 and 4,810 params)"
    );
    for params in [650usize, 4810] {
        let w = vec![0.5f32; params];
        let plain = frame_bytes(&weight_messages(WeightsPurpose::Global, 1, &w))
            + frame_bytes(&weight_messages(WeightsPurpose::Update, 1, &w));
        for n in [10usize, 100, 1000] {
            let extra = secure_bytes_per_agent(n, params);
            // Secure: the global model still goes down; the update goes up only masked.
            let secure =
                frame_bytes(&weight_messages(WeightsPurpose::Global, 1, &w)) as f64 + extra;
            let ratio = report.record(
                &format!("secure bytes per agent, {params} params, {n} agents"),
                secure,
                "B",
                "plain",
                plain as f64,
            );
            println!(
                "{params:>6} params, {n:>4} agents: plain {plain:>8} B, secure {secure:>9.0} B ({ratio:.2}x)"
            );
        }
    }

    println!("by step at 1,000 agents, 650 params (mean bytes per agent):");
    for (step, b) in secure_bytes_by_step(1000, 650) {
        println!("  {step:<13} {b:>8.0} B");
    }

    println!("\n== RDP accountant (subsampled Gaussian, default orders)");
    let start = Instant::now();
    let mut acc = yilian_federated::dp::RdpAccountant::new();
    let mut eps = 0.0;
    for _ in 0..100 {
        acc.compose_subsampled_gaussian(0.01, 1.1, 1);
        eps = acc.epsilon(1e-5);
    }
    let per = start.elapsed().as_secs_f64() * 1e3 / 100.0;
    println!(
        "one round composed and epsilon read: {per:.3} ms (epsilon after 100 rounds at q=0.01, sigma=1.1: {eps:.3})"
    );

    println!(
        "\n== local training throughput with candle (CPU, Adam, batch 32, {} samples, 2 epochs)",
        train.len()
    );
    let mlp = throughput(&ModelSpec::mlp(64, 64, 10), &train);
    let cnn = throughput(&ModelSpec::small_cnn(8, 10), &train);
    hand_mlp_throughput(&train.subset(&(0..64).collect::<Vec<_>>()));
    let hand = hand_mlp_throughput(&train);
    report.figure(
        "digits MLP 64-64-10 training with candle",
        mlp,
        "samples/s",
        "the same MLP by hand over matrixmultiply",
        hand,
    );
    report.figure(
        "small CNN (conv 8x3x3, pool 2, 32, 10) training",
        cnn,
        "samples/s",
        "the MLP",
        mlp,
    );
    report.finish();
}
