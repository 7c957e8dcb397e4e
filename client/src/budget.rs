//! A bound on the finished updates a process's clients hold at once.
//!
//! A simulated client's update lives from the end of its local work to the end of its push.
//! When work is faster than the network (no local epochs, a big model), finished updates would
//! pile up, one per client waiting to push: 5,000 clients of a 1M-parameter model would hold
//! 20 GB. Clients take their share of an [`UpdateBudget`] before they work and give it back
//! once the push is over, so a fleet holds at most the budget, whatever its size.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of finished updates a fleet holds at once by default: 256 MiB, thousands of small
/// updates (no slower than without a bound) or 64 updates of a million values.
pub const DEFAULT_UPDATE_BUDGET: usize = 256 << 20;

/// Shared by the clients of one process; cheap to clone.
#[derive(Debug, Clone)]
pub struct UpdateBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl UpdateBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits until an update of `values` f32 values fits, and holds its share until the
    /// returned permit is dropped. An update larger than the whole budget waits for all of
    /// it: such updates are held one at a time.
    pub async fn hold(&self, values: u64) -> Option<OwnedSemaphorePermit> {
        let kib = values.saturating_mul(4).div_ceil(1024);
        let kib = u32::try_from(kib)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        self.kib.clone().acquire_many_owned(kib).await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn updates_past_the_budget_wait_for_earlier_ones_to_go() {
        let budget = UpdateBudget::new(10 * 4096);
        // Ten updates of 4 KiB fill a budget of 40 KiB.
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(budget.hold(1024).await.unwrap());
        }
        let next = budget.hold(1024);
        tokio::pin!(next);
        assert!(
            futures::poll!(next.as_mut()).is_pending(),
            "an eleventh update must wait"
        );
        held.pop();
        assert!(futures::poll!(next.as_mut()).is_ready());
        // Larger than the whole budget: waits for all of it, then goes alone.
        drop(held);
        let huge = budget.hold(1 << 30).await.unwrap();
        assert_eq!(huge.num_permits(), 40);
    }
}
