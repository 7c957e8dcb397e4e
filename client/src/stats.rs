//! What a client did over a run, summed over a fleet for its report.

/// What a client did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Updates the coordinator accepted (redelivered ones included).
    pub accepted: u32,
    /// Updates it refused (late, stale round...).
    pub refused: u32,
    /// Times the client reconnected.
    pub reconnects: u32,
    /// Kept updates delivered after a reconnect (store-and-forward).
    pub redelivered: u32,
    /// Kept updates dropped after a reconnect because their round was over for this client.
    pub dropped_stale: u32,
    /// Simulated dropouts: tasks taken and never answered.
    pub dropouts: u32,
    /// Simulated stragglers: pushes held back.
    pub straggles: u32,
    /// Simulated crashes: tasks dropped, then silence, then a fresh join.
    pub crashes: u32,
    /// Tasks whose local work failed (reported to the coordinator).
    pub failed_tasks: u32,
}

impl ClientStats {
    /// Adds `other` into `self`, for fleet totals.
    pub fn add(&mut self, other: &ClientStats) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.reconnects += other.reconnects;
        self.redelivered += other.redelivered;
        self.dropped_stale += other.dropped_stale;
        self.dropouts += other.dropouts;
        self.straggles += other.straggles;
        self.crashes += other.crashes;
        self.failed_tasks += other.failed_tasks;
    }
}
