use super::*;

const G: Duration = Duration::from_secs(30);

#[test]
fn the_shipped_example_parses() {
    let text = include_str!("../../../../deploy/policy.example.toml");
    let p = Policy::parse(text, "policy.example.toml", G).unwrap();
    assert!(!p.selectors.is_empty());
}

#[test]
fn full_selector() {
    let p = Policy::parse(
        r#"
        dry_run = true
        [limits]
        per_minute = 3
        cooldown = "10s"
        [protect]
        comms = ["sshd"]
        local_ports = [22]
        [[selector]]
        name = "ws"
        match = { comm = "ws-*", local_port = 8080, remote_cidr = "10.0.0.0/8", reason = "peer_unreachable" }
        grace = "45s"
        allow_unknown_owner = true
        actions = [
          { action = "rpc", url = "http://127.0.0.1:9000/reap", timeout = "1s", retries = 1 },
          { action = "signal", signal = "SIGRTMIN+1", after = "5s" },
          { action = "destroy", after = "10s" },
        ]
        "#,
        "p.toml",
        G,
    )
    .unwrap();
    assert!(p.dry_run);
    assert_eq!(p.limits.per_minute, 3);
    assert_eq!(p.limits.per_owner_per_minute, 10, "defaults fill the rest");
    let s = &p.selectors[0];
    assert!(s.allow_unknown_owner);
    assert!(s.matches.comm.as_ref().unwrap().matches("ws-gateway"));
    assert_eq!(s.matches.reason, Some(Reason::PeerUnreachable));
    assert_eq!(s.actions.len(), 3);
    assert_eq!(s.actions[2].after(), Duration::from_secs(10));
    match &s.actions[0] {
        Stage::Rpc { target: Some(RpcTarget::Http { authority, .. }), .. } => assert_eq!(authority, "127.0.0.1:9000", "parsed at load"),
        other => panic!("{other:?}"),
    }
    match &s.actions[1] {
        Stage::Signal { signal, .. } => assert_eq!(*signal, Sig(35)),
        other => panic!("{other:?}"),
    }
    assert!(!Policy::default().selectors.iter().any(|s| s.allow_unknown_owner));
}

fn err(text: &str) -> String {
    Policy::parse(text, "/etc/detector/policy.toml", G).unwrap_err().to_string()
}

#[test]
fn bad_values_name_file_line_and_field() {
    let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"signal\", signal = \"SIGNOPE\" }]\n");
    assert!(e.contains("/etc/detector/policy.toml") && e.contains("line 3") && e.contains("SIGNOPE"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\nmatch = { remote_cidr = \"10.0.0.0/99\" }\nactions = [{ action = \"report\" }]\n");
    assert!(e.contains("line 3") && (e.contains("remote_cidr") || e.contains("10.0.0.0/99")), "{e}");
    let e = err("[limits]\ncooldwn = \"5s\"\n");
    assert!(e.contains("line 2") && e.contains("cooldwn"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"explode\" }]\n");
    assert!(e.contains("explode"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\ngrace = \"later\"\nactions = [{ action = \"report\" }]\n");
    assert!(e.contains("line 3") && e.contains("later"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\nmatch = { reason = \"peer_gone\" }\nactions = [{ action = \"report\" }]\n");
    assert!(e.contains("peer_gone"), "{e}");
}

#[test]
fn semantic_mistakes_are_named() {
    let e = err("[[selector]]\nname = \"x\"\nactions = []\n");
    assert!(e.contains("\"x\"") && e.contains("actions"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\ngrace = \"5s\"\nactions = [{ action = \"report\" }]\n");
    assert!(e.contains("shorter than the agent's --grace"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\" }]\n");
    assert!(e.contains("exactly one of `url`"), "{e}");
    let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"https://a\" }]\n");
    assert!(e.contains("http://"), "{e}");
}

#[test]
fn absurd_values_are_refused_without_panicking() {
    for (text, want) in [
        ("[limits]\nper_minute = 0\n", "at least 1"),
        ("[limits]\nper_owner_per_minute = 0\n", "at least 1"),
        ("[limits]\ncooldown = \"100000000000000000000y\"\n", "cooldown"),
        ("[limits]\ncooldown = \"30d\"\n", "longer than a week"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"destroy\", after = \"9999999999999999999s\" }]\n", "after"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"http://a/\", path = \"/b\" }]\n", "`path` goes with `unix`"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"http://a/\", timeout = \"0s\" }]\n", "timeout"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"http://a/\", retries = 1000 }]\n", "retries"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"signal\", signal = 32 }]\n", "reserved by glibc"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"signal\", signal = \"33\" }]\n", "reserved by glibc"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"signal\", signal = 65 }]\n", "out of range"),
        ("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"http://h:99999/\" }]\n", "port"),
        ("[protect]\ncomms = [\"containerd-shim-runc-v2\"]\n", "exes"),
    ] {
        let e = err(text);
        assert!(e.contains(want), "{text:?} gave {e}");
    }
}

#[test]
fn signals_use_glibc_numbering_whatever_libc_built_the_agent() {
    assert_eq!("SIGUSR1".parse::<Sig>().unwrap().0, libc::SIGUSR1);
    assert_eq!("term".parse::<Sig>().unwrap().0, libc::SIGTERM);
    assert_eq!("SIGRTMIN".parse::<Sig>().unwrap().0, 34);
    assert_eq!("SIGRTMIN+1".parse::<Sig>().unwrap().0, 35, "not the agent's own libc::SIGRTMIN()+1");
    assert_eq!("RTMAX-2".parse::<Sig>().unwrap().0, 62);
    assert_eq!("36".parse::<Sig>().unwrap().0, 36, "plain numbers are taken as they are");
    assert!("SIGRTMIN+1".parse::<Sig>().unwrap().is_realtime() && !Sig(libc::SIGUSR1).is_realtime());
    assert!("SIGRTMIN+99".parse::<Sig>().is_err());
    assert!("0".parse::<Sig>().is_err());
    assert!("SIGRTMIN+x".parse::<Sig>().is_err());
}

#[test]
fn flags_make_one_catch_all_selector_and_signal_needs_an_explicit_one() {
    let p = Policy::from_flags(Action::Destroy, None, None, true).unwrap();
    assert!(p.dry_run && p.selectors.len() == 1 && !p.selectors[0].allow_unknown_owner);
    let e = Policy::from_flags(Action::Signal, None, None, false).unwrap_err().to_string();
    assert!(e.contains("--signal") && e.contains("SIGRTMIN+1"), "{e}");
    assert!(Policy::from_flags(Action::Signal, Some("SIGRTMIN+1"), None, false).is_ok());
    let e = Policy::from_flags(Action::Rpc, None, Some("ftp://x"), false).unwrap_err().to_string();
    assert!(e.contains("http://"), "{e}");
}
