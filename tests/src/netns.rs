//! Network namespaces a test makes (deleted on drop, even when the test panics).
use std::{process::Command, sync::atomic::Ordering};

use crate::{process::SEQ, *};

/// Network namespaces with their loopback up, made by a test or benchmark and deleted on drop.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn create(tag: &str, n: usize) -> Result<Namespaces, String> {
        let mut ns = Namespaces(Vec::with_capacity(n));
        for i in 0..n {
            let name = format!("d{tag}-{}-{i}", std::process::id());
            run("ip", &["netns", "add", &name])?;
            ns.0.push(name.clone());
            run("ip", &["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Two network namespaces joined by a veth pair: `a` (10.213.0.1) and `b` (10.213.0.2).
/// Created by the test and deleted on drop, even when the test panics.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
}

pub const NS_A_ADDR: &str = "10.213.0.1";
pub const NS_B_ADDR: &str = "10.213.0.2";
pub const NS_A_ADDR6: &str = "fd00:213::1";
pub const NS_B_ADDR6: &str = "fd00:213::2";

impl NetnsPair {
    pub fn new() -> NetnsPair {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pair = NetnsPair { a: format!("dtest-{}-{n}-a", std::process::id()), b: format!("dtest-{}-{n}-b", std::process::id()) };
        sh("ip", &["netns", "add", &pair.a]);
        sh("ip", &["netns", "add", &pair.b]);
        pair.exec_ok(&pair.a, &["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &pair.b]);
        for (ns, dev, addr, addr6) in [(&pair.a, "veth0", NS_A_ADDR, NS_A_ADDR6), (&pair.b, "veth1", NS_B_ADDR, NS_B_ADDR6)] {
            pair.exec_ok(ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
            // nodad: usable at once, without duplicate address detection's delay.
            pair.exec_ok(ns, &["ip", "-6", "addr", "add", &format!("{addr6}/64"), "dev", dev, "nodad"]);
            pair.exec_ok(ns, &["ip", "link", "set", dev, "up"]);
            pair.exec_ok(ns, &["ip", "link", "set", "lo", "up"]);
        }
        pair
    }

    pub fn exec_ok(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    /// A peer process inside namespace `ns` (`ip netns exec` execs it: same pid).
    pub fn peer(&self, ns: &str, bin: &str, args: &[&str]) -> Peer {
        let mut full = vec!["netns", "exec", ns, bin];
        full.extend_from_slice(args);
        Peer::spawn("ip", &full)
    }

    /// Cuts the link from `b`'s side: `a`'s packets to `b` go nowhere, nothing comes back.
    pub fn cut_b(&self) {
        self.exec_ok(&self.b, &["ip", "link", "set", "veth1", "down"]);
    }

    /// Deletes the link as a CNI does when `b`'s pod goes away: both ends vanish, and with them
    /// `a`'s route to `b` (nothing `a` sends, retransmits included, leaves the host).
    pub fn delete_link(&self) {
        self.exec_ok(&self.b, &["ip", "link", "del", "veth1"]);
    }
}

impl Default for NetnsPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
