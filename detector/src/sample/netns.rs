//! One sock_diag socket per network namespace. sock_diag answers only for the namespace its
//! socket was created in, so the sampler enters each namespace (by a process that lives there)
//! just long enough to open a socket, then returns. Sockets are dropped when their namespace
//! has no tracked sockets left, so the agent never keeps a deleted namespace alive.
use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt};

use nix::sched::{CloneFlags, setns};
use thiserror::Error;

use super::{DiagConn, SampleError};

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("no process found in network namespace {0}")]
    NotFound(u32),
    #[error("entering network namespace {inum}: {err}")]
    Enter { inum: u32, err: nix::Error },
    #[error(transparent)]
    Diag(#[from] SampleError),
    #[error("TCP iterator: {0}")]
    Iter(String),
}

/// Inode number of a process's network namespace.
pub fn netns_of(pid: u32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino() as u32)
}

pub struct NetnsPool {
    own: u32,
    own_file: File,
    conns: HashMap<u32, DiagConn>,
}

impl NetnsPool {
    pub fn new() -> Result<Self, NetnsError> {
        let own_file = File::open("/proc/thread-self/ns/net").map_err(|e| NetnsError::Diag(SampleError::Socket(e)))?;
        let own = own_file.metadata().map(|m| m.ino() as u32).map_err(|e| NetnsError::Diag(SampleError::Socket(e)))?;
        let mut conns = HashMap::new();
        conns.insert(own, DiagConn::open()?);
        Ok(Self { own, own_file, conns })
    }

    pub fn own(&self) -> u32 {
        self.own
    }

    /// The sock_diag socket of namespace `inum`; `hint` is a pid likely to live in it.
    pub fn conn(&mut self, inum: u32, hint: Option<u32>) -> Result<&mut DiagConn, NetnsError> {
        let inum = if inum == 0 { self.own } else { inum };
        if !self.conns.contains_key(&inum) {
            let conn = self.within(inum, hint, DiagConn::open)??;
            self.conns.insert(inum, conn);
        }
        Ok(self.conns.get_mut(&inum).expect("inserted above"))
    }

    /// Runs `f` in namespace `inum` (this thread enters it, then always returns to its own).
    pub fn within<T>(&self, inum: u32, hint: Option<u32>, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let inum = if inum == 0 { self.own } else { inum };
        if inum == self.own {
            return Ok(f());
        }
        let file = find_netns(inum, hint).ok_or(NetnsError::NotFound(inum))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|err| NetnsError::Enter { inum, err })?;
        let out = f();
        setns(&self.own_file, CloneFlags::CLONE_NEWNET).map_err(|err| NetnsError::Enter { inum: self.own, err })?;
        Ok(out)
    }

    /// Drops sockets of namespaces no tracked socket lives in any more.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let own = self.own;
        self.conns.retain(|&inum, _| inum == own || keep(inum));
    }
}

/// Every network namespace that has a process in it: inode → one such pid.
pub fn all_netns() -> std::collections::HashMap<u32, u32> {
    let mut m = std::collections::HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return m };
    for e in rd.filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Some(ino) = netns_of(pid) {
            m.entry(ino).or_insert(pid);
        }
    }
    m
}

fn find_netns(inum: u32, hint: Option<u32>) -> Option<File> {
    let open_if = |pid: &str| -> Option<File> {
        let f = File::open(format!("/proc/{pid}/ns/net")).ok()?;
        (f.metadata().ok()?.ino() as u32 == inum).then_some(f)
    };
    if let Some(f) = hint.and_then(|p| open_if(&p.to_string())) {
        return Some(f);
    }
    // Rare: the owner moved or exited. Look for any process in that namespace.
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .find_map(|pid| open_if(&pid))
}
