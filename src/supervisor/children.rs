//! Every process the supervisor started and has not reaped, by pid, with
//! what it is: one lookup says who handles its exit (`Supervisor::
//! child_exited`). Workers also keep their shared page here, read once
//! more at their exit and then given back to the pool.
//!
//! The core keeps its own pid index (workers and the configuration
//! process, for its decisions); this table is the supervisor's, and also
//! knows the processes the core never sees: the zygote, zygotes retired
//! after a code change, the upgrade's trial run and the cluster agent. A
//! pid in neither is an orphan reaped as PID 1 or subreaper.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use crate::process::shared_page::SharedPage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildRole {
    Worker,
    ConfigProcess,
    Zygote,
    /// Replaced after code it loaded changed on disk; ends by itself.
    RetiredZygote,
    /// `lrpmctl upgrade`'s trial run of the binary on disk.
    UpgradeTrial,
    ClusterAgent,
}

/// A reaped child's entry.
pub(super) struct Reaped {
    pub role: Option<ChildRole>,
    pub page: Option<SharedPage>,
}

#[derive(Default)]
pub(super) struct ChildTable {
    roles: HashMap<i32, ChildRole>,
    pages: HashMap<i32, SharedPage>,
}

impl ChildTable {
    pub fn insert(&mut self, pid: i32, role: ChildRole) {
        self.roles.insert(pid, role);
    }

    /// A worker, forked here or by the zygote, or handed over by an upgrade
    /// (without a page: its address does not survive the exec).
    pub fn insert_worker(&mut self, pid: i32, page: Option<SharedPage>) {
        self.roles.insert(pid, ChildRole::Worker);
        if let Some(page) = page {
            self.pages.insert(pid, page);
        }
    }

    #[cfg(test)]
    pub fn role(&self, pid: i32) -> Option<ChildRole> {
        self.roles.get(&pid).copied()
    }

    /// The zygote became a retired one.
    pub fn retire_zygote(&mut self, pid: i32) {
        if let Some(role @ ChildRole::Zygote) = self.roles.get_mut(&pid) {
            *role = ChildRole::RetiredZygote;
        }
    }

    /// `pid` was reaped (or is about to be, by whoever killed it): its
    /// entry, with the page for the caller to read and give back.
    pub fn remove(&mut self, pid: i32) -> Reaped {
        Reaped { role: self.roles.remove(&pid), page: self.pages.remove(&pid) }
    }

    pub fn page(&self, pid: i32) -> Option<&SharedPage> {
        self.pages.get(&pid)
    }

    pub fn pages(&self) -> impl Iterator<Item = &SharedPage> {
        self.pages.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_what_it_was_registered_as_until_it_is_removed() {
        let mut table = ChildTable::default();
        table.insert(10, ChildRole::Zygote);
        table.insert_worker(11, None);
        table.insert(12, ChildRole::UpgradeTrial);
        assert_eq!(table.role(10), Some(ChildRole::Zygote));
        table.retire_zygote(10);
        table.retire_zygote(11);
        assert_eq!(table.role(10), Some(ChildRole::RetiredZygote));
        assert_eq!(table.role(11), Some(ChildRole::Worker), "only a zygote retires");
        let reaped = table.remove(12);
        assert_eq!(reaped.role, Some(ChildRole::UpgradeTrial));
        assert!(reaped.page.is_none());
        assert_eq!(table.role(12), None);
        assert_eq!(table.remove(12).role, None);
    }
}
