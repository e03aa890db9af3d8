//! The agent's claim and release requests, run by a few threads at once.
//! One at a time, a member that takes over a thousand units (a dead
//! member's share) spends a thousand etcd round trips in a row before the
//! last unit starts; a handful in flight cut that by as much, and etcd
//! orders the transactions itself. Outcomes go back to the agent's loop,
//! which alone changes the claim state.

#![forbid(unsafe_code)]

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::claims::ClaimOutcome;
use super::etcd::{Created, Etcd, EtcdOptions};

/// Requests in flight at most.
pub const WRITERS: usize = 8;

pub enum Write {
    /// Create `key` with `value` bound to `lease` if it does not exist.
    Claim { unit: String, key: String, value: Vec<u8>, lease: i64 },
    /// Delete `key` if it is still the claim created at `token`.
    Release { unit: String, key: String, token: i64 },
}

/// What a writer did, for the agent's loop.
pub enum Written {
    Claimed {
        unit: String,
        lease: i64,
        outcome: ClaimOutcome,
        error: Option<String>,
    },
    /// `error`: the delete failed (the claim then goes with the lease).
    Released {
        unit: String,
        error: Option<String>,
    },
}

/// Starts the writers; they end when the returned sender is dropped.
pub fn spawn(options: &EtcdOptions, report: impl Fn(Written) -> bool + Clone + Send + 'static) -> Sender<Write> {
    let (tx, rx) = unbounded::<Write>();
    for n in 0..WRITERS {
        let rx: Receiver<Write> = rx.clone();
        let options = options.clone();
        let report = report.clone();
        std::thread::Builder::new()
            .name(format!("etcd-write-{n}"))
            .spawn(move || {
                let mut etcd = Etcd::new(options);
                for write in rx {
                    if !report(perform(&mut etcd, write)) {
                        return;
                    }
                }
            })
            .expect("a thread for etcd writes");
    }
    tx
}

fn perform(etcd: &mut Etcd, write: Write) -> Written {
    match write {
        Write::Claim { unit, key, value, lease } => {
            let (outcome, error) = match etcd.create_if_absent(&key, &value, lease) {
                Ok(Created::Yes { revision }) => (ClaimOutcome::Won { token: revision }, None),
                Ok(Created::Exists(kv)) => {
                    let member = super::agent::claim_holder(&kv.value);
                    (ClaimOutcome::Taken { member, token: kv.create_revision }, None)
                }
                Err(e) => (ClaimOutcome::Failed, Some(e.to_string())),
            };
            Written::Claimed { unit, lease, outcome, error }
        }
        Write::Release { unit, key, token } => {
            let error = etcd.delete_if_created_at(&key, token).err().map(|e| e.to_string());
            Written::Released { unit, error }
        }
    }
}
