//! cgroup v2 trees a test makes (emptied and removed on drop).
use std::{path::PathBuf, sync::atomic::Ordering, time::Duration};

use crate::process::SEQ;

/// The cgroup v2 mount point, if the kernel has one mounted.
pub fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/mounts").ok()?.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mnt))
    })
}

/// A cgroup v2 directory tree made by the test under a private top directory; processes in it
/// are moved back to the root and the directories removed on drop.
pub struct TestCgroup {
    mount: PathBuf,
    top: PathBuf,
    /// The leaf, relative to the mount (as /proc/<pid>/cgroup shows it).
    pub path: String,
}

impl TestCgroup {
    /// Creates `<mount>/detector-test-<pid>-<n>/<rel>`.
    pub fn new(rel: &str) -> Option<TestCgroup> {
        let mount = cgroup2_mount()?;
        let top_name = format!("detector-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = format!("/{top_name}/{rel}");
        std::fs::create_dir_all(mount.join(path.trim_start_matches('/'))).unwrap_or_else(|e| panic!("creating cgroup {path}: {e}"));
        Some(TestCgroup { top: mount.join(&top_name), mount, path })
    }

    pub fn dir(&self) -> PathBuf {
        self.mount.join(self.path.trim_start_matches('/'))
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string()).unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove the tree bottom-up.
        if let Ok(procs) = std::fs::read_to_string(self.dir().join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
            }
        }
        let mut d = self.dir();
        while d.starts_with(&self.top) {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !d.pop() {
                break;
            }
        }
    }
}
