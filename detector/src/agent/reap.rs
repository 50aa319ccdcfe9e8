//! Handing a pass's stalled sockets to the reaper, with the proofs each action needs from the
//! sweep's side: the socket still tracked, no holder in TCP_REPAIR, its holders all known and
//! holding it now, and a destroy run in the socket's own network namespace (the sweep owns the
//! namespace sockets).
use super::sweep::Sweep;
use crate::{
    reaper::{
        Reaper, SkipWhy,
        actions::{self, ActionError},
    },
    report::StalledSocket,
    sample::netns::NetnsPool,
};

impl Sweep {
    /// Hands this pass's stalled sockets to the reaper. A socket whose action was skipped
    /// because its owner or holders changed is attributed afresh at the next pass, by a pass
    /// over /proc (a holder outside its sender's family was seen).
    pub(super) fn reap(&mut self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) {
        for cookie in self.reap_once(reaper, stalled, pool) {
            if let Some(sk) = self.judge.by_cookie(cookie).map(|t| t.sk) {
                self.attribution.suspect(sk);
            }
        }
    }

    fn reap_once(&self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) -> Vec<u64> {
        let mut prove = |s: &StalledSocket| -> Result<(), ActionError> {
            let t = self.judge.by_cookie(s.socket_cookie).ok_or_else(|| ActionError::Failed("socket no longer tracked".into()))?;
            if let Some(h) = s.holders.iter().find(|h| h.fds.first().is_some_and(|&fd| actions::holder_in_repair(h.pid, fd))) {
                return Err(ActionError::Skip(SkipWhy::InRepair, format!("pid {} holds it in TCP_REPAIR: a checkpoint holds it", h.pid)));
            }
            self.attribution.are_all(t.sk, s.inode).map_err(|why| ActionError::Skip(SkipWhy::OwnerChanged, why))
        };
        let mut destroy = |s: &StalledSocket| -> Result<(), ActionError> {
            let failed = |e: String| ActionError::Failed(e);
            let t = self.judge.by_cookie(s.socket_cookie).ok_or_else(|| failed("socket no longer tracked".into()))?;
            self.attribution.hold_now(t.sk, s.inode).map_err(|why| ActionError::Skip(SkipWhy::OwnerChanged, why))?;
            // A process in the socket's namespace: the one that found it, its owner, its sender.
            let hint = t.netns_hint.or(s.pid).unwrap_or(t.sender.tgid);
            let conn = pool.conn(t.tuple.netns, Some(hint)).map_err(|e| failed(e.to_string()))?;
            conn.destroy(&t.lookup()).map_err(|e| failed(e.to_string()))
        };
        reaper.tick(stalled, self.now_ms(), &mut prove, &mut destroy)
    }
}
