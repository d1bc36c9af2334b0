//! Clients of the workers' gRPC service: one lazily connected channel per worker
//! address, shared by prewarm jobs, drains and rebalancing.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_proto::auth::Worker;

/// Worker clients by address; cheap to share.
#[derive(Default)]
pub struct WorkerPool {
    clients: Mutex<HashMap<String, Worker>>,
}

impl WorkerPool {
    /// The client of the worker at `addr` (`None` if it is not a valid address).
    /// Calls time out after two minutes: a block copy is at most a few hundred MiB.
    pub fn client(&self, addr: &str) -> Option<Worker> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let ep = shoal_proto::profile::Profile::MASTER_TO_WORKER.endpoint(addr).ok()?;
        let c = shoal_proto::auth::worker(ep.connect_lazy());
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }
}
