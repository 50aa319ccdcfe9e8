//! Fuzzing of every parser that takes outside input: the policy file, API request lines,
//! sock_diag answers (netlink framing and `tcp_info`), tracefs format files. Each target runs a
//! bounded number of cases (`DETECTOR_FUZZ_CASES`, default 10,000) on two kinds of input:
//! arbitrary bytes, and mutations (byte flips, cuts, splices, repeats) of the real inputs kept
//! in `tests/corpus/<target>/` (captured on a real kernel; add a file there to seed a case).
//! The property is the same everywhere: an answer or an error, never a panic, and what the
//! parser accepts is consistent with its input. A failing case is saved by proptest under
//! `tests/fuzz.proptest-regressions` and replayed first on every run.
use std::{path::Path, time::Duration};

use detector::{
    kernel::tracefs::Format,
    reaper::config::Policy,
    sample::{first_with_seq, lookup_answer, tcp_info::TcpInfo},
    surfaces::api::{Request, parse_request},
};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_sock_diag::SockDiagMessage;
use proptest::{prelude::*, test_runner::Config};

fn cases() -> u32 {
    std::env::var("DETECTOR_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    }
}

/// The seed files of one target.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())).map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

/// One way of damaging an input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Cut { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Repeat { from: usize, len: usize },
    Set { at: usize, value: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(from, len)| Mutation::Repeat { from, len }),
        // Boundary values where lengths and counts live.
        (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), Just(b'\n'), Just(b'"'), Just(b';')])
            .prop_map(|(at, value)| Mutation::Set { at, value }),
    ]
}

fn apply(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip { at, bits } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x ^= bits;
                }
            }
            Mutation::Cut { at } => b.truncate(at % n),
            Mutation::Insert { at, bytes } => {
                let at = (at % n).min(b.len());
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Repeat { from, len } => {
                let from = from % n;
                let piece: Vec<u8> = b.iter().skip(from).take(*len).copied().collect();
                b.extend(piece);
            }
            Mutation::Set { at, value } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x = *value;
                }
            }
        }
    }
    b
}

/// A seed of `target`, damaged by up to 8 mutations; or arbitrary bytes.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let mutated = (0..seeds.len(), proptest::collection::vec(mutation(), 0..8)).prop_map(move |(i, ms)| apply(seeds[i].clone(), &ms));
    prop_oneof![4 => mutated, 1 => proptest::collection::vec(any::<u8>(), 0..512)]
}

const GRACE: Duration = Duration::from_secs(30);

proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_files(b in input("policy")) {
        let text = String::from_utf8_lossy(&b);
        if let Ok(p) = Policy::parse(&text, "fuzz.toml", GRACE) {
            // Accepted means usable: every selector has a ladder.
            prop_assert!(p.selectors.iter().all(|s| !s.actions.is_empty()));
        }
    }

    #[test]
    fn api_request_lines(b in input("request")) {
        match parse_request(&b) {
            // What parses is one of the four requests and reads back the same.
            Ok(r) => prop_assert_eq!(parse_request(&serde_json::to_vec(&r).unwrap()).unwrap(), r),
            Err(e) => prop_assert!(e.starts_with("bad request") || e.starts_with("request longer")),
        }
    }

    #[test]
    fn tcp_info_blobs(b in input("tcp_info")) {
        if let Some(i) = TcpInfo::parse(&b) {
            // Fields past the end of a short (older kernel's) struct are absent, never zero.
            prop_assert_eq!(i.bytes_acked.is_some(), b.len() >= 128);
        }
    }

    #[test]
    fn sock_diag_answers(b in input("netlink"), seq in prop_oneof![Just(77u32), Just(78), any::<u32>()]) {
        if let Ok(Some(m)) = first_with_seq(&b, seq) {
            prop_assert_eq!(m.header.sequence_number, seq);
            // A socket only from an answer that carried tcp_info: never "nothing acknowledged".
            if let Ok(Some(d)) = lookup_answer(m, 1) {
                let _ = d.sample.bytes_acked;
            }
        }
        if let Ok(m) = NetlinkMessage::<SockDiagMessage>::deserialize(&b) {
            let _ = lookup_answer(m, 1);
        }
    }

    #[test]
    fn tracefs_format_files(b in input("format")) {
        let text = String::from_utf8_lossy(&b);
        if let Ok(f) = Format::parse("fuzz/fuzz", &text) {
            // Every field found is on a line of the input.
            for name in f.fields.keys() {
                prop_assert!(text.contains(name.as_str()));
            }
        }
    }
}

/// The seeds themselves parse as what they are (a damaged corpus would make the fuzzing blind).
#[test]
fn the_corpus_is_real_input() {
    for seed in corpus("policy") {
        Policy::parse(&String::from_utf8(seed).unwrap(), "seed.toml", GRACE).unwrap();
    }
    for seed in corpus("request") {
        assert!(matches!(parse_request(&seed).unwrap(), Request::Status | Request::Stalled | Request::Sockets | Request::Explain { .. }));
    }
    for seed in corpus("tcp_info") {
        assert!(TcpInfo::parse(&seed).unwrap().bytes_acked.is_some());
    }
    for seed in corpus("format") {
        let f = Format::parse("seed", &String::from_utf8(seed).unwrap()).unwrap();
        assert!(f.fields.contains_key("common_type"), "{f:?}");
    }
    let answers = corpus("netlink");
    let answer = |b: &Vec<u8>, seq| first_with_seq(b, seq).ok().flatten().map(|m| lookup_answer(m, 1));
    assert!(answers.iter().any(|b| matches!(answer(b, 77), Some(Ok(Some(_))))), "no socket in the dump seeds");
    assert!(answers.iter().any(|b| matches!(answer(b, 78), Some(Ok(None)))), "no ENOENT seed");
}
