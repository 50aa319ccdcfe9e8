use std::net::Ipv4Addr;

use detector_common::{AF_INET, AF_INET6, SockTuple, TCP_ESTABLISHED, TUPLE_LOOKED};

use super::*;
use crate::{
    sample::{DiagSocket, Sample},
    tracker::{Sender, Tracked},
    verdict::{SocketVerdict, Transition},
};

const GRACE: u64 = 3_000;

fn tuple(family: u16, local: [u8; 16], remote: [u8; 16]) -> SockTuple {
    SockTuple { saddr: local, daddr: remote, sport: 8080, dport: 50_000, family, flags: TUPLE_LOOKED, netns: 4026531840, bound_dev_if: 0 }
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn sample(at_ms: u64, queued: u32) -> Sample {
    Sample { at_ms, state: TCP_ESTABLISHED, queued, bytes_acked: 10, unacked: 1, snd_wnd: Some(1000), rto_ms: 204, ..Default::default() }
}

/// A table entry fed samples until it is stalled (or, with `stall` false, stuck for 1 s).
fn entry(t: SockTuple, stall: bool) -> Tracked {
    let sender = Sender { tgid: 42, tid: 43, comm: "ws".into(), cgroup_id: 7 };
    let mut x = Tracked::new(0xffff_8880_0000_1000, t, sender, 1, 1, TCP_ESTABLISHED);
    let mut v = SocketVerdict::new();
    v.observe(&sample(0, 0), GRACE);
    let last = if stall { 4_000 } else { 1_000 };
    for at in [500, last] {
        let s = sample(at, 5_000);
        if let Transition::Stalled(_) = v.observe(&s, GRACE) {
            x.history.note(at, "stalled".into(), true);
        }
        x.history.push(s, true);
        x.last = Some(DiagSocket { cookie: 99, inode: 1234, uid: 0, sample: s });
    }
    x.verdict = Some(v);
    x
}

fn holder() -> Holder {
    Holder {
        pid: 42,
        comm: "ws".into(),
        exe: Some("/usr/bin/ws".into()),
        cmdline: "ws --port 8080".into(),
        start_time: 777,
        fds: vec![9, 12],
        cgroup: Some("/kubepods.slice/x".into()),
        container_id: Some("c".into()),
        pod_uid: Some("u".into()),
        image: None,
    }
}

#[test]
fn a_stalled_socket_reports_its_owner_addresses_and_reason() {
    let t = entry(tuple(AF_INET, v4(Ipv4Addr::new(10, 0, 0, 5)), v4(Ipv4Addr::new(192, 168, 7, 9))), true);
    let pod = PodName { namespace: "shop".into(), name: "ws-1".into() };
    let r = stalled(&t, &vec![holder()].into(), Some(&pod)).expect("stalled");
    assert_eq!((r.pid, r.fd, r.owner_known, r.start_time), (Some(42), Some(9), true, Some(777)));
    assert_eq!(r.local.to_string(), "10.0.0.5:8080");
    assert_eq!(r.remote.to_string(), "192.168.7.9:50000");
    assert_eq!((r.state, r.reason), (TcpState::Established, Reason::PeerNotReading));
    assert_eq!((r.pod_namespace.as_deref(), r.pod_name.as_deref()), (Some("shop"), Some("ws-1")));
    assert_eq!((r.queued_bytes, r.socket_cookie, r.inode, r.sender_pid), (5_000, 99, 1234, 42));
    assert_eq!(r.stalled_for_ms, 3_500);
    assert_eq!(r.kernel_socket, Some(false));
    // JSON keeps the documented shapes: addresses as strings, state and reason as names.
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!((j["local"].as_str(), j["state"].as_str(), j["reason"].as_str()), (Some("10.0.0.5:8080"), Some("ESTABLISHED"), Some("peer_not_reading")));
    assert_eq!(serde_json::from_value::<StalledSocket>(j).unwrap(), r);
}

#[test]
fn without_holders_the_owner_is_unknown_never_guessed() {
    let t = entry(tuple(AF_INET, v4(Ipv4Addr::LOCALHOST), v4(Ipv4Addr::LOCALHOST)), true);
    let r = stalled(&t, &Vec::new().into(), None).unwrap();
    assert_eq!((r.pid, r.fd, r.comm.as_deref(), r.owner_known), (None, None, None, false));
    assert_eq!(r.sender_pid, 42, "the sender stays a hint");
}

#[test]
fn a_dual_stack_peer_reads_as_ipv4_and_a_dump_find_has_no_kernel_flag() {
    let mapped = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
    let mut tup = tuple(AF_INET6, mapped, mapped);
    tup.flags = 0;
    let t = entry(tup, true);
    let r = stalled(&t, &Vec::new().into(), None).unwrap();
    assert_eq!(r.remote.to_string(), "10.1.2.3:50000");
    assert_eq!(tracked(&t, None).local.to_string(), "10.1.2.3:8080");
    assert_eq!(r.kernel_socket, None);
}

#[test]
fn a_socket_not_stalled_has_no_report_line_but_a_row_and_an_explanation() {
    let t = entry(tuple(AF_INET, v4(Ipv4Addr::LOCALHOST), v4(Ipv4Addr::LOCALHOST)), false);
    assert!(stalled(&t, &vec![holder()].into(), None).is_none());
    let row = tracked(&t, Some("shop/ws-1".into()));
    assert_eq!((row.id, row.stalled, row.queued_bytes, row.state), (99, false, Some(5_000), TcpState::Established));
    let e = explain(&t, None, 1_500, GRACE);
    assert!(!e.verdict.stalled);
    assert_eq!((e.verdict.stuck_for_ms, e.verdict.onset_proof), (Some(1_000), Some(OnsetProof::FirstSample)));
    assert_eq!(e.samples.last().map(|s| s.age_ms), Some(500));
}

#[test]
fn the_explanation_of_a_stall_says_what_fixed_its_onset() {
    let t = entry(tuple(AF_INET, v4(Ipv4Addr::LOCALHOST), v4(Ipv4Addr::LOCALHOST)), true);
    let k = KernelRecord { tracked_for_ms: 4_000, retransmits: None, last_retransmit_ms_ago: None, send_hook: Some("tp_btf tcp_sendmsg_locked".into()) };
    let e = explain(&t, Some(k), 5_000, GRACE);
    assert!(e.verdict.stalled);
    assert_eq!((e.verdict.reason, e.verdict.stalled_for_ms), (Some(Reason::PeerNotReading), Some(4_500)));
    assert_eq!(e.verdict.onset.as_deref(), Some(OnsetProof::FirstSample.describe()));
    assert_eq!(e.changes[0].what, "stalled");
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["verdict"]["stalled"], true);
    assert_eq!(serde_json::from_value::<Explain>(j).unwrap(), e);
}
