//! Whole rounds of the protocol between in-memory agents and a coordinator.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::{FlError, RejectReason};

fn ids(n: usize) -> Vec<AgentId> {
    let mut v: Vec<AgentId> = (0..n)
        .map(|i| {
            let mut a = [0u8; 32];
            a[..8].copy_from_slice(&(i as u64 * 7919 + 3).to_le_bytes());
            a
        })
        .collect();
    v.sort();
    v
}

fn setup(n: usize, degree: usize, threshold: usize, dim: usize) -> Setup {
    Setup {
        task: [5; 32],
        round: 3,
        cohort: ids(n),
        degree,
        threshold,
        graph_seed: [8; 32],
        dim,
    }
}

/// Agents that drop before a step never send that step's message.
#[derive(Default)]
struct Drops {
    before_shares: BTreeSet<usize>,
    before_input: BTreeSet<usize>,
    before_reveal: BTreeSet<usize>,
}

struct Round {
    server: Server,
    clients: BTreeMap<AgentId, Client>,
    inputs: BTreeMap<AgentId, Vec<u32>>,
}

fn start(s: &Setup, rng: &mut StdRng) -> Round {
    let mut server = Server::new(s.clone());
    let mut clients = BTreeMap::new();
    let mut inputs = BTreeMap::new();
    for a in &s.cohort {
        let (c, ad) = Client::new(s.clone(), *a, rng).unwrap();
        server.advert(a, ad).unwrap();
        clients.insert(*a, c);
        inputs.insert(*a, (0..s.dim).map(|_| rng.random_range(0..1000)).collect());
    }
    Round {
        server,
        clients,
        inputs,
    }
}

/// Runs steps 2 and 3, up to the survivor list.
fn to_reveal(r: &mut Round, s: &Setup, drops: &Drops) -> Result<Unmask, FlError> {
    let idx = |a: &AgentId| s.cohort.binary_search(a).unwrap();
    let keys = r.server.close_keys()?;
    for (a, k) in keys {
        if drops.before_shares.contains(&idx(&a)) {
            continue;
        }
        let shares = r.clients.get_mut(&a).unwrap().share_keys(&k).unwrap();
        r.server.shares(&a, shares).unwrap();
    }
    let routed = r.server.close_shares()?;
    for (a, sh) in routed {
        if drops.before_input.contains(&idx(&a)) {
            continue;
        }
        let m = r
            .clients
            .get_mut(&a)
            .unwrap()
            .masked_input(&sh, &r.inputs[&a])
            .unwrap();
        r.server.masked_input(&a, m).unwrap();
    }
    r.server.close_inputs()
}

/// Runs steps 2 to 4, then finishes.
fn run(r: &mut Round, s: &Setup, drops: &Drops) -> Result<Outcome, FlError> {
    let unmask = to_reveal(r, s, drops)?;
    for a in &unmask.survivors(&s.cohort).unwrap() {
        if drops
            .before_reveal
            .contains(&s.cohort.binary_search(a).unwrap())
        {
            continue;
        }
        let rev = r.clients.get_mut(a).unwrap().reveal(&unmask).unwrap();
        r.server.reveal(a, rev).unwrap();
    }
    r.server.finish()
}

fn plain_sum(r: &Round, who: &[AgentId]) -> Vec<u32> {
    let mut sum = vec![0u32; r.inputs.values().next().unwrap().len()];
    for a in who {
        for (s, v) in sum.iter_mut().zip(&r.inputs[a]) {
            *s = s.wrapping_add(*v);
        }
    }
    sum
}

#[test]
fn the_sum_is_the_plain_sum_on_complete_and_sparse_graphs() {
    for (n, k, t) in [(10, 9, 5), (60, 12, 7), (3, 2, 2)] {
        let s = setup(n, k, t, 50);
        let mut rng = StdRng::seed_from_u64(n as u64);
        let mut r = start(&s, &mut rng);
        let out = run(&mut r, &s, &Drops::default()).unwrap();
        assert_eq!(out.survivors, s.cohort);
        assert!(out.dropped.is_empty());
        assert_eq!(out.sum, plain_sum(&r, &s.cohort), "n={n}");
    }
}

#[test]
fn thirty_percent_dropping_after_masking_still_sums_the_survivors() {
    // 30 % drop after sending masked input: their input counts, but they
    // reveal nothing, so the others' shares must recover their self-masks.
    let s = setup(40, 20, 8, 20);
    let mut rng = StdRng::seed_from_u64(7);
    let mut r = start(&s, &mut rng);
    let drops = Drops {
        before_reveal: (0..40).filter(|i| i % 10 < 3).collect(),
        ..Default::default()
    };
    let out = run(&mut r, &s, &drops).unwrap();
    assert!(out.dropped.is_empty());
    assert_eq!(out.survivors.len(), 40);
    assert_eq!(out.sum, plain_sum(&r, &s.cohort));
    // And 30 % drop before masking: their pairwise masks are removed.
    let mut r = start(&s, &mut rng);
    let drops = Drops {
        before_input: (0..40).filter(|i| i % 10 >= 7).collect(),
        ..Default::default()
    };
    let out = run(&mut r, &s, &drops).unwrap();
    assert_eq!(out.dropped.len(), 12);
    assert_eq!(out.sum, plain_sum(&r, &out.survivors));
}

#[test]
fn agents_lost_before_sharing_are_left_out_cleanly() {
    let s = setup(12, 11, 6, 8);
    let mut rng = StdRng::seed_from_u64(9);
    let mut r = start(&s, &mut rng);
    let drops = Drops {
        before_shares: [0, 5].into(),
        ..Default::default()
    };
    let out = run(&mut r, &s, &drops).unwrap();
    assert_eq!(out.survivors.len(), 10);
    assert_eq!(out.sum, plain_sum(&r, &out.survivors));
}

#[test]
fn too_few_survivors_fail_the_round_without_a_sum() {
    let s = setup(10, 9, 6, 8);
    let mut rng = StdRng::seed_from_u64(10);
    let mut r = start(&s, &mut rng);
    let drops = Drops {
        before_input: [0, 1, 2, 3, 4].into(),
        ..Default::default()
    };
    match run(&mut r, &s, &drops) {
        Err(FlError::TooFewSurvivors {
            survivors: 5,
            threshold: 6,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(r.server.step(), Step::Input, "nothing moved on");
}

#[test]
fn too_few_revealers_leave_a_secret_unrecoverable() {
    let s = setup(8, 7, 5, 4);
    let mut rng = StdRng::seed_from_u64(11);
    let mut r = start(&s, &mut rng);
    let drops = Drops {
        before_reveal: [0, 1, 2].into(),
        ..Default::default()
    };
    match run(&mut r, &s, &drops) {
        Err(FlError::Unrecoverable { shares: 4, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// What the coordinator receives from one agent is uniform whatever the
/// update: the masked vectors of an all-zero and an all-maximal update
/// both pass a chi-square test for uniform bytes, and neither correlates
/// with the update behind it.
#[test]
fn a_masked_input_is_independent_of_the_update() {
    let dim = 4096;
    let s = setup(5, 4, 3, dim);
    let mut masked = Vec::new();
    for (seed, fill) in [(1u64, 0u32), (2, u32::MAX / 3)] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut r = start(&s, &mut rng);
        let a = s.cohort[0];
        r.inputs.insert(a, vec![fill; dim]);
        let keys = r.server.close_keys().unwrap();
        for (b, k) in keys {
            let sh = r.clients.get_mut(&b).unwrap().share_keys(&k).unwrap();
            r.server.shares(&b, sh).unwrap();
        }
        let routed = r.server.close_shares().unwrap();
        let m = r
            .clients
            .get_mut(&a)
            .unwrap()
            .masked_input(&routed[&a], &r.inputs[&a])
            .unwrap();
        masked.push(m.values);
    }
    for m in &masked {
        let mut counts = [0f64; 256];
        for v in m {
            for b in v.to_le_bytes() {
                counts[b as usize] += 1.0;
            }
        }
        let expected = (dim * 4) as f64 / 256.0;
        let chi2: f64 = counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum();
        // 255 degrees of freedom: the 99.9th percentile is about 330.
        assert!(chi2 < 330.0, "chi-square {chi2}");
    }
    // The bits of the two masked vectors agree about half the time, as two
    // independent uniform vectors do (mean dim*16, sd about 181).
    let same: u32 = masked[0]
        .iter()
        .zip(&masked[1])
        .map(|(a, b)| (!(a ^ b)).count_ones())
        .sum();
    let mean = (dim * 16) as f64;
    assert!((f64::from(same) - mean).abs() < 6.0 * 181.0, "{same}");
}

fn to_reveal_step(s: &Setup, rng: &mut StdRng) -> (Round, Unmask) {
    let mut r = start(s, rng);
    let unmask = to_reveal(&mut r, s, &Drops::default()).unwrap();
    (r, unmask)
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let s = setup(6, 5, 3, 4);
    let mut rng = StdRng::seed_from_u64(12);
    let (a, b) = (s.cohort[0], s.cohort[1]);

    // Step 1: a malformed advertisement and one in someone else's name.
    let mut server = Server::new(s.clone());
    let (_, mut ad) = Client::new(s.clone(), a, &mut rng).unwrap();
    let before = server.clone();
    let mut short = ad.clone();
    short.seed_commitments.0.pop();
    assert_eq!(server.advert(&a, short), Err(RejectReason::BadCommitments));
    assert_eq!(
        server.advert(&b, ad.clone()),
        Err(RejectReason::ImpersonatedSender { claimed: a })
    );
    let mut weak = ad.clone();
    weak.keys.mask = [0; 32];
    assert_eq!(
        server.advert(&a, weak),
        Err(RejectReason::LowOrderKey { agent: a })
    );
    ad.round = 9;
    assert_eq!(
        server.advert(&a, ad),
        Err(RejectReason::WrongRound { got: 9, current: 3 })
    );
    assert_eq!(server, before);

    // Steps 3 and 4 on a full round.
    let (mut r, unmask) = to_reveal_step(&s, &mut rng);
    let before = r.server.clone();
    let replay = MaskedInput {
        round: 3,
        from: a,
        values: vec![0; 4],
    };
    assert_eq!(
        r.server.masked_input(&a, replay),
        Err(RejectReason::WrongStep {
            got: Step::Input,
            expected: Step::Reveal
        })
    );
    let good = r.clients.get_mut(&a).unwrap().reveal(&unmask).unwrap();
    let mut forged = good.clone();
    forged.seeds[0].1[0] ^= 1;
    let owner = forged.seeds[0].0;
    assert_eq!(
        r.server.reveal(&a, forged),
        Err(RejectReason::ForgedShare { owner })
    );
    assert_eq!(
        r.server.reveal(&b, good.clone()),
        Err(RejectReason::ImpersonatedSender { claimed: a })
    );
    let mut both = good.clone();
    both.masks.push(both.seeds[0]);
    assert_eq!(
        r.server.reveal(&a, both),
        Err(RejectReason::NotNeighbour { agent: owner })
    );
    assert_eq!(r.server, before, "no refused message changed the state");
    r.server.reveal(&a, good.clone()).unwrap();
    assert_eq!(r.server.reveal(&a, good), Err(RejectReason::Duplicate));
    // The agent reveals once.
    assert!(matches!(
        r.clients.get_mut(&a).unwrap().reveal(&unmask),
        Err(RejectReason::WrongStep { .. })
    ));
}

#[test]
fn masked_inputs_that_are_replayed_oversized_or_misaddressed_are_refused() {
    let s = setup(6, 5, 3, 4);
    let mut rng = StdRng::seed_from_u64(13);
    let mut r = start(&s, &mut rng);
    let (a, b) = (s.cohort[0], s.cohort[1]);
    let keys = r.server.close_keys().unwrap();
    let mut all = BTreeMap::new();
    for (x, k) in keys {
        let sh = r.clients.get_mut(&x).unwrap().share_keys(&k).unwrap();
        all.insert(x, sh);
    }
    // Shares sent in b's name by a, shares to a non-neighbour, and short ones.
    let before = r.server.clone();
    assert_eq!(
        r.server.shares(&a, all[&b].clone()),
        Err(RejectReason::ImpersonatedSender { claimed: b })
    );
    let mut stray = all[&a].clone();
    stray[0].to = [0xee; 32];
    assert_eq!(
        r.server.shares(&a, stray),
        Err(RejectReason::NotNeighbour { agent: [0xee; 32] })
    );
    let mut cut = all[&a].clone();
    cut[1].ciphertext.truncate(10);
    assert_eq!(
        r.server.shares(&a, cut),
        Err(RejectReason::WrongShape {
            got: 10,
            expected: SEALED_SHARE_LEN
        })
    );
    assert_eq!(
        r.server.shares(&a, all[&a][1..].to_vec()),
        Err(RejectReason::SharesIncomplete {
            got: 4,
            expected: 5
        })
    );
    assert_eq!(r.server, before);
    for (x, sh) in all {
        r.server.shares(&x, sh).unwrap();
    }
    let routed = r.server.close_shares().unwrap();
    let m = r
        .clients
        .get_mut(&a)
        .unwrap()
        .masked_input(&routed[&a], &r.inputs[&a])
        .unwrap();
    let before = r.server.clone();
    let mut long = m.clone();
    long.values.push(1);
    assert_eq!(
        r.server.masked_input(&a, long),
        Err(RejectReason::WrongShape {
            got: 5,
            expected: 4
        })
    );
    let mut old = m.clone();
    old.round = 2;
    assert_eq!(
        r.server.masked_input(&a, old),
        Err(RejectReason::WrongRound { got: 2, current: 3 })
    );
    assert_eq!(r.server, before);
    r.server.masked_input(&a, m.clone()).unwrap();
    let after = r.server.clone();
    assert_eq!(r.server.masked_input(&a, m), Err(RejectReason::Duplicate));
    assert_eq!(r.server, after, "a replay is not added twice");
}

#[test]
fn a_restored_coordinator_finishes_the_round() {
    let s = setup(7, 6, 4, 6);
    let mut rng = StdRng::seed_from_u64(14);
    let (mut r, unmask) = to_reveal_step(&s, &mut rng);
    for a in &unmask.survivors(&s.cohort).unwrap() {
        let rev = r.clients.get_mut(a).unwrap().reveal(&unmask).unwrap();
        r.server.reveal(a, rev).unwrap();
    }
    let bytes = postcard::to_stdvec(&r.server).unwrap();
    let mut restored: Server = postcard::from_bytes(&bytes).unwrap();
    let out = restored.finish().unwrap();
    assert_eq!(out.sum, plain_sum(&r, &s.cohort));
}

/// Nothing the coordinator keeps, at any step, holds an agent's input:
/// its persisted state never contains the encoding of any input's first
/// coordinates, and what it keeps from masked inputs is only their sum.
#[test]
fn the_coordinator_state_never_holds_an_input() {
    let s = setup(8, 7, 4, 64);
    let mut rng = StdRng::seed_from_u64(15);
    let mut r = start(&s, &mut rng);
    let needles: Vec<Vec<u8>> = r
        .inputs
        .values()
        .map(|v| {
            let mut b = postcard::to_stdvec(&v[..8]).unwrap();
            b.remove(0); // the length prefix
            b
        })
        .collect();
    let mut states = vec![postcard::to_stdvec(&r.server).unwrap()];
    let keys = r.server.close_keys().unwrap();
    for (a, k) in keys {
        let sh = r.clients.get_mut(&a).unwrap().share_keys(&k).unwrap();
        r.server.shares(&a, sh).unwrap();
        states.push(postcard::to_stdvec(&r.server).unwrap());
    }
    let routed = r.server.close_shares().unwrap();
    for (a, sh) in routed {
        let m = r
            .clients
            .get_mut(&a)
            .unwrap()
            .masked_input(&sh, &r.inputs[&a])
            .unwrap();
        r.server.masked_input(&a, m).unwrap();
        states.push(postcard::to_stdvec(&r.server).unwrap());
    }
    let unmask = r.server.close_inputs().unwrap();
    for a in &unmask.survivors(&s.cohort).unwrap() {
        let rev = r.clients.get_mut(a).unwrap().reveal(&unmask).unwrap();
        r.server.reveal(a, rev).unwrap();
        states.push(postcard::to_stdvec(&r.server).unwrap());
    }
    for state in &states {
        for n in &needles {
            assert!(
                !state.windows(n.len()).any(|w| w == n.as_slice()),
                "an input is in the coordinator's state"
            );
        }
    }
    assert_eq!(r.server.finish().unwrap().sum, plain_sum(&r, &s.cohort));
}

proptest::proptest! {
    /// Masked input travels as four bytes a word and decodes to itself.
    #[test]
    fn masked_input_round_trips_as_fixed_words(values in proptest::collection::vec(proptest::num::u32::ANY, 0..300)) {
        let m = MaskedInput { round: 3, from: [9; 32], values };
        let bytes = postcard::to_stdvec(&m).unwrap();
        // round (1 byte), sender (32), length varint (at most 2 here), words.
        proptest::prop_assert!(bytes.len() <= 1 + 32 + 2 + 4 * m.values.len());
        proptest::prop_assert_eq!(postcard::from_bytes::<MaskedInput>(&bytes).unwrap(), m);
    }

    /// A byte string that is not whole words is refused, whatever its content.
    #[test]
    fn masked_input_of_partial_words_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..64), extra in 1usize..4) {
        let mut bytes = postcard::to_stdvec(&(3u32, [9u8; 32])).unwrap();
        let n = body.len() / 4 * 4 + extra;
        let mut blob = body.clone();
        blob.resize(n, 0);
        bytes.extend(postcard::to_stdvec(&Blob(&blob)).unwrap());
        proptest::prop_assert!(postcard::from_bytes::<MaskedInput>(&bytes).is_err());
    }
}

/// A byte string as postcard writes one (length, then the bytes).
struct Blob<'a>(&'a [u8]);

impl serde::Serialize for Blob<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

proptest::proptest! {
    /// The survivor bitmap gives back exactly the survivors, in cohort order.
    #[test]
    fn survivor_bitmaps_round_trip(n in 1usize..40, keep in proptest::collection::vec(proptest::bool::ANY, 40)) {
        let cohort = ids(n);
        let survivors: BTreeSet<AgentId> =
            cohort.iter().zip(&keep).filter(|(_, k)| **k).map(|(a, _)| *a).collect();
        let u = Unmask::new(1, &cohort, &survivors);
        let wire: Unmask = postcard::from_bytes(&postcard::to_stdvec(&u).unwrap()).unwrap();
        let back = wire.survivors(&cohort).unwrap();
        proptest::prop_assert_eq!(back, survivors.into_iter().collect::<Vec<_>>());
    }

    /// A bitmap of another length, or with bits past the cohort, is refused.
    #[test]
    fn survivor_bitmaps_that_do_not_fit_the_cohort_are_refused(n in 1usize..40, bits in proptest::collection::vec(proptest::num::u8::ANY, 0..8)) {
        let cohort = ids(n);
        let fits = bits.len() == n.div_ceil(8)
            && (n % 8 == 0 || bits.last().is_none_or(|b| b >> (n % 8) == 0));
        let wire: Unmask = postcard::from_bytes(&postcard::to_stdvec(&(1u32, bits)).unwrap()).unwrap();
        proptest::prop_assert_eq!(wire.survivors(&cohort).is_ok(), fits);
    }
}
