//! One pass: sample every tracked socket (or only those whose grace deadline has come) through
//! the kernel walk and sock_diag, hand the samples to the judge, forget what is gone, have the
//! stalls attributed, and assemble the report.
use super::{attribute::Stalled, kernel_link::KernelLink, sweep::Sweep};
use crate::{
    metrics::{Metrics, PodStall},
    report::StalledSocket,
    sample::{
        DiagSocket, Lookup,
        netns::NetnsPool,
        walk::{Samples, Walker},
    },
    tracker::{Forget, Tracked},
};

/// Lookups asked and answered at a time.
const LOOKUP_CHUNK: usize = 1024;

impl Sweep {
    /// Samples, judges and reports; with `only_due`, only sockets whose grace deadline has come
    /// by then. `kernel` (none for `detector scan`): its walk, when the kernel walks socket
    /// storage, samples the sockets it keeps, and its events have the last word on sockets a
    /// sample found gone.
    pub fn pass(&mut self, pool: &mut NetnsPool, mut kernel: Option<&mut KernelLink>, m: &Metrics, only_due: Option<u64>) -> Vec<StalledSocket> {
        let (started, started_ms) = (std::time::Instant::now(), self.now_ms());
        let mut walked = kernel.as_deref_mut().and_then(|k| k.walker.as_mut()).and_then(|w| self.walk(w, m));
        let epoch = kernel.as_deref().and_then(|k| k.epochs.as_ref()).map(|e| e.value());
        let mut gone = self.sample_all(pool, walked.as_mut(), m, only_due, epoch);
        if let Some(k) = kernel {
            gone = self.settle(gone, k, m);
        }
        self.judge.forget(gone, m);
        if let Some(w) = walked {
            self.judge.take_up(w, m);
        }
        let used = self.judge.namespaces();
        pool.retain(|inum| used.contains(&inum));
        // What this pass tried: with `only_due`, the sockets due by then (a socket the walk
        // samples is sampled anyway, at or after `started_ms`); otherwise every socket.
        let due = self.judge.next_due(only_due.unwrap_or(started_ms));
        self.schedule.passed(due, started.elapsed());
        self.assemble(m)
    }

    /// Sockets found gone may have closed after the last drain of the events, their `Closed`
    /// waiting in the ring (the close program sends it before the kernel unhashes the socket,
    /// so it is there by the time a lookup misses): the ring is drained again first, and only
    /// the entries it left as they were leave as `gone`. So `gone` keeps meaning "ended without
    /// its close event" (a close the programs missed, or a socket tracked again after it).
    fn settle(&mut self, gone: Vec<(u64, Forget)>, kernel: &mut KernelLink, m: &Metrics) -> Vec<(u64, Forget)> {
        if !gone.iter().any(|&(_, why)| why == Forget::Gone) {
            return gone;
        }
        let id = |t: &Tracked| (t.tuple, t.first_send_ns);
        let before: Vec<_> = gone.iter().map(|&(sk, _)| self.judge.tracker.get(sk).map(id)).collect();
        self.drain(kernel, m);
        gone.into_iter().zip(before).filter(|&((sk, _), was)| was.is_some() && self.judge.tracker.get(sk).map(id) == was).map(|(g, _)| g).collect()
    }

    /// One walk, as samples by socket; `None` (sock_diag samples this pass) when it fails.
    fn walk(&self, w: &mut Walker, m: &Metrics) -> Option<Samples> {
        let asked = self.now_ms();
        match w.walk() {
            Ok(walk) => Some(Samples::new(walk, w.hz(), asked, self.now_ms())),
            Err(e) => {
                log::warn!("sampling walk: {e}; sock_diag samples this pass");
                m.sample_errors.inc();
                None
            }
        }
    }

    /// Samples and judges; returns the sockets to forget. Sockets in socket storage take their
    /// sample from `walked`; the judge names the others, looked up here through sock_diag in
    /// batches per network namespace. `epoch`: where sock_diag samples socket storage, the
    /// agent's current epoch (see `kernel_link::Epochs`).
    fn sample_all(&mut self, pool: &mut NetnsPool, walked: Option<&mut Samples>, m: &Metrics, only_due: Option<u64>, epoch: Option<u32>) -> Vec<(u64, Forget)> {
        let (mut gone, lookups) = self.judge.take_walk(walked, only_due, m);
        for (netns, (socks, hint)) in lookups {
            m.sock_diag_lookups.inc_by(socks.len() as u64);
            // In chunks: the lookups and answers of a whole table at once would be megabytes.
            for chunk in socks.chunks(LOOKUP_CHUNK) {
                let lookups: Vec<Lookup> = chunk.iter().map(|(_, l)| *l).collect();
                let answers: Vec<Result<Option<DiagSocket>, String>> = match pool.conn(netns, Some(hint)) {
                    Ok(c) => c.lookup_many(&lookups).into_iter().map(|a| a.map_err(|e| e.to_string())).collect(),
                    Err(e) => vec![Err(e.to_string()); lookups.len()],
                };
                for (&(sk, _), answer) in chunk.iter().zip(answers) {
                    if let Some(why) = self.judge.take_answer(sk, answer, epoch, m) {
                        gone.push((sk, why));
                    }
                }
            }
        }
        self.judge.sampled(only_due);
        gone
    }

    /// Attributes the stalled sockets, counts open stalls by reason, and builds the report:
    /// in a fair order across owners (see `detail`), in full for the first `DETAIL_MAX`, the
    /// rest counted by reason (`undetailed`).
    fn assemble(&mut self, m: &Metrics) -> Vec<StalledSocket> {
        let (detailed, rest) = self.judge.stalls_in_order();
        self.judge.mark_detailed(&detailed);
        let tracker = &self.judge.tracker;
        self.attribution.attribute(detailed.iter().filter_map(|&sk| {
            let t = tracker.get(sk)?;
            Some(Stalled { sk, inode: t.last.map_or(0, |d| d.inode), sender: t.sender.tgid })
        }));
        let attribution = &mut self.attribution;
        let out = self.judge.report(
            &detailed,
            &rest,
            |sk| {
                let holders = attribution.holders_of(sk);
                let pod = holders.first().and_then(|h| h.pod_uid.as_deref()).and_then(|u| attribution.pod(u)).cloned();
                (holders, pod)
            },
            m,
        );
        self.attribution.keep_only(&detailed.iter().copied().collect());
        m.set_pod_stalls(pod_stalls(&out));
        out
    }
}

/// The stalls whose pod is named, for the opt-in pod family (a socket with no pod is no pod's).
fn pod_stalls(report: &[StalledSocket]) -> impl Iterator<Item = PodStall<'_>> {
    report.iter().filter_map(|s| Some(PodStall { namespace: s.pod_namespace.as_deref()?, pod: s.pod_name.as_deref()?, reason: s.reason.as_str() }))
}
