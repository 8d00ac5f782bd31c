//! Replays the committed corpus and a proptest of arbitrary and mutated
//! inputs through every fuzz target, on the stable toolchain. No input may
//! panic or allocate more than [`ALLOCATION_BOUND`] at once; a hang shows as
//! a test that never ends.
//!
//! `YILIAN_FUZZ_CASES=N` runs N cases of each proptest instead.
//! `YILIAN_WRITE_CORPUS=1 cargo test -p yilian-fuzz` rewrites the `ok-*`
//! seeds from `yilian_fuzz::seeds` after an encoding changes on purpose.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use yilian_fuzz::{Outcome, TARGETS, Target, seeds};

static SEEDS: LazyLock<Vec<seeds::Seed>> = LazyLock::new(seeds::all);

/// The most one input (a few KiB) may make a decoder hold at once.
const ALLOCATION_BOUND: usize = 64 << 20;

/// Counts this thread's live heap bytes and their peak, so that each test
/// thread measures only the input it runs.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(size);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// The allocator only counts; System does the allocating.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        note_free(layout.size());
        // SAFETY: as `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs one input, failing the test on a panic or an unbounded allocation.
fn run(target: &Target, input: &[u8]) -> Outcome {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let outcome = (target.run)(input);
    let peak = PEAK.with(Cell::get) - base;
    assert!(
        peak <= ALLOCATION_BOUND,
        "{} held {peak} bytes at once for a {}-byte input",
        target.name,
        input.len()
    );
    outcome
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_are_committed_and_accepted() {
    let write = std::env::var_os("YILIAN_WRITE_CORPUS").is_some();
    let all = &*SEEDS;
    for target in TARGETS {
        assert!(
            all.iter().any(|(t, _, _)| *t == target.name),
            "{} has no seed",
            target.name
        );
    }
    for (name, file, bytes) in all {
        let path = corpus_dir(name).join(file);
        if write {
            std::fs::create_dir_all(corpus_dir(name)).expect("corpus dir");
            std::fs::write(&path, bytes).expect("write seed");
        }
        let target = yilian_fuzz::target(name);
        assert_eq!(
            run(target, bytes),
            Outcome::Accepted,
            "{name}/{file} is refused"
        );
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == *bytes,
            "corpus/{name}/{file} differs from its seed; rerun with YILIAN_WRITE_CORPUS=1 if the encoding changed on purpose"
        );
    }
}

/// Every committed input, seeds and findings alike, runs without a panic;
/// `ok-*` ones are accepted and `bad-*` ones (saved findings) refused.
#[test]
fn committed_corpus_replays() {
    for target in TARGETS {
        let files = corpus(target.name);
        assert!(!files.is_empty(), "corpus/{} is empty", target.name);
        for (file, bytes) in files {
            let outcome = run(target, &bytes);
            if file.starts_with("ok-") {
                assert_eq!(outcome, Outcome::Accepted, "{}/{file}", target.name);
            }
            if file.starts_with("bad-") {
                assert_eq!(outcome, Outcome::Refused, "{}/{file}", target.name);
            }
        }
    }
}

/// `YILIAN_FUZZ_CASES` scales a run up (a longer, stable-toolchain fuzz).
fn cases(default: u32) -> u32 {
    std::env::var("YILIAN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A mutation of a seed: flip, insert, delete or overwrite a few bytes, or
/// splice in a length-like value, so that inputs stay near valid ones.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Word(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u32::MAX as u64),
                Just(1 << 31),
                any::<u64>()
            ]
        )
            .prop_map(|(i, w)| Edit::Word(i, w)),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    if bytes.is_empty() {
        bytes.push(0);
    }
    let at = |i: &usize, len: usize| i % len;
    match e {
        Edit::Flip(i, b) => {
            let i = at(i, bytes.len());
            bytes[i] ^= b;
        }
        Edit::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Edit::Delete(i) => {
            let i = at(i, bytes.len());
            bytes.remove(i);
        }
        Edit::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Edit::Word(i, w) => {
            let i = at(i, bytes.len());
            for (k, b) in w.to_le_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// Arbitrary bytes, through every target.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for target in TARGETS {
            run(target, &bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4096), ..ProptestConfig::default() })]

    /// Seeds with a few edits, through their own target.
    #[test]
    fn mutated_seeds_never_panic(pick in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let all = &*SEEDS;
        let (name, _, seed) = &all[pick % all.len()];
        let mut bytes = seed.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        run(yilian_fuzz::target(name), &bytes);
    }
}
