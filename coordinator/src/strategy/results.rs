//! Collecting one round's updates: what the engine hands a strategy when the round closes.

use super::plan::{FoldMode, TaskPlan};
use crate::aggregate::{AggregateError, ExactSum, Finite, MAX_WEIGHT};
use prost::Message;
use shoal_proto::v1::{
    Contribution, Contributions, Fence, PartialHeader, PartialPart, UpdateHeader, partial_part,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Encoded size of the contributions one message of a partial sum carries (about 3,000
/// clients): well inside every message limit.
pub const CONTRIBUTION_BATCH_BYTES: usize = 256 << 10;

/// One client's contribution to a round, after transport decoding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientUpdate {
    /// Stable id of the client.
    pub client_id: String,
    /// Weight of the update: the examples it was computed on.
    pub weight: u64,
    /// Parameters, gradient, centroid sums or local centres, as the task asked: the vector
    /// an in-process client made, shared, or the one decoded from the wire (`Arc::make_mut`
    /// to change it). Logged as a plain sequence of values.
    #[serde(with = "shared_values")]
    pub payload: Arc<Vec<f32>>,
    /// Integer side data (k-means counts).
    pub counts: Vec<u64>,
    /// Metrics the client reported (loss, accuracy, inertia...).
    pub metrics: BTreeMap<String, f64>,
}

impl ClientUpdate {
    /// The update an [`UpdateHeader`] announces, with the `payload` that followed it.
    pub fn from_wire(header: UpdateHeader, payload: impl Into<Arc<Vec<f32>>>) -> Self {
        Self {
            client_id: header.client_id,
            weight: header.num_examples,
            payload: payload.into(),
            counts: header.counts,
            metrics: header.metrics.into_iter().collect(),
        }
    }
}

/// A shared payload in serde: the sequence of its values, as a `Vec<f32>` is written.
mod shared_values {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(values: &Arc<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
        values.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<f32>>, D::Error> {
        Vec::<f32>::deserialize(d).map(Arc::new)
    }
}

/// What the coordinator keeps of every contributor: its weight and reported metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientReport {
    /// Weight of its update.
    pub weight: u64,
    /// Metrics it reported.
    pub metrics: BTreeMap<String, f64>,
}

/// Several clients' updates of one round, summed exactly by a sub-aggregator: what it sends
/// upstream instead of the updates themselves. Folding it is folding those updates, to the bit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartialSum {
    /// The exact totals of the folded payloads ([`ExactSum::totals`]).
    pub totals: Vec<i128>,
    /// Element-wise total of the clients' counts.
    pub counts: Vec<u64>,
    /// Every client folded in, with its weight and metrics: the coordinator counts these.
    pub reports: BTreeMap<String, ClientReport>,
}

impl PartialSum {
    /// The partial sum a [`PartialHeader`] announces, with the `totals` that followed it.
    pub fn from_wire(header: PartialHeader, totals: Vec<i128>) -> Self {
        Self {
            totals,
            counts: header.counts,
            reports: header
                .contributions
                .into_iter()
                .map(|c| {
                    let report = ClientReport {
                        weight: c.num_examples,
                        metrics: c.metrics.into_iter().collect(),
                    };
                    (c.client_id, report)
                })
                .collect(),
        }
    }

    /// Adds `other` into this sum: the sum of both sets of clients, as if folded together
    /// (integer totals add exactly; one beyond range is refused upstream).
    pub fn absorb(&mut self, other: &PartialSum) {
        for (total, t) in self.totals.iter_mut().zip(&other.totals) {
            *total = total.saturating_add(*t);
        }
        for (count, c) in self.counts.iter_mut().zip(&other.counts) {
            *count = count.saturating_add(*c);
        }
        self.reports
            .extend(other.reports.iter().map(|(id, r)| (id.clone(), r.clone())));
    }

    /// Its messages on the wire, sent by `aggregator` for the round `fence` names: the header
    /// with the first contributions, the rest in batches of at most [`CONTRIBUTION_BATCH_BYTES`]
    /// (so no message outgrows the limit whatever the number of clients), then the totals in
    /// chunks of at most `chunk_bytes`.
    pub fn to_wire(&self, aggregator: &str, fence: Fence, chunk_bytes: usize) -> Vec<PartialPart> {
        let mut batches = Vec::new();
        let (mut batch, mut batch_bytes) = (Vec::new(), 0);
        for (client_id, report) in &self.reports {
            let contribution = Contribution {
                client_id: client_id.clone(),
                num_examples: report.weight,
                metrics: report.metrics.clone().into_iter().collect(),
            };
            let bytes = contribution.encoded_len();
            if batch_bytes + bytes > CONTRIBUTION_BATCH_BYTES && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += bytes;
            batch.push(contribution);
        }
        batches.push(batch);
        let mut batches = batches.into_iter();
        let header = PartialHeader {
            aggregator_id: aggregator.to_owned(),
            fence: Some(fence),
            contributions: batches.next().unwrap_or_default(),
            sum_len: self.totals.len() as u64,
            counts: self.counts.clone(),
            contribution_count: self.reports.len() as u64,
        };
        std::iter::once(partial_part::Part::Header(header))
            .chain(
                batches
                    .map(|contributions| partial_part::Part::More(Contributions { contributions })),
            )
            .chain(
                shoal_proto::encode_chunks(&self.totals, chunk_bytes)
                    .map(partial_part::Part::Chunk),
            )
            .map(|part| PartialPart { part: Some(part) })
            .collect()
    }
}

/// What arrives for a round: one client's update, or a sub-aggregator's partial sum of
/// several clients' updates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Delivery {
    /// One client's update.
    Update(ClientUpdate),
    /// Several clients' updates, summed exactly.
    Partial(PartialSum),
}

impl Delivery {
    /// The clients it delivers for.
    pub fn clients(&self) -> Vec<&str> {
        match self {
            Delivery::Update(update) => vec![update.client_id.as_str()],
            Delivery::Partial(partial) => partial.reports.keys().map(String::as_str).collect(),
        }
    }
}

/// Folds updates in as they arrive; memory O(model) unless the plan says [`FoldMode::Collect`].
#[derive(Debug)]
pub struct RoundAccumulator {
    weighted: bool,
    update_len: usize,
    counts_len: usize,
    counts_sum_to_weight: Vec<std::ops::Range<usize>>,
    sum: Option<ExactSum>,
    counts: Vec<u64>,
    collected: BTreeMap<String, ClientUpdate>,
    reports: BTreeMap<String, ClientReport>,
}

impl RoundAccumulator {
    /// An empty accumulator for the updates of `task`, as a sub-aggregator folds them (it knows
    /// the round only from its task); `None` when the task's updates are not summed and must
    /// travel whole.
    pub fn for_task(task: &shoal_proto::v1::Task) -> Option<Self> {
        use shoal_proto::v1::FoldKind;
        let fold = match task.fold() {
            FoldKind::WeightedSum => FoldMode::WeightedSum,
            FoldKind::Sum => FoldMode::Sum,
            FoldKind::Collect | FoldKind::Unspecified => return None,
        };
        let update_len = usize::try_from(task.update_len).ok()?;
        let counts_len = usize::try_from(task.counts_len).ok()?;
        let counts_sum_to_weight = task
            .counts_sum_to_weight
            .chunks_exact(2)
            .map(|r| Some(usize::try_from(r[0]).ok()?..usize::try_from(r[1]).ok()?))
            .collect::<Option<Vec<_>>>()?;
        if counts_sum_to_weight
            .iter()
            .any(|r| r.start > r.end || r.end > counts_len)
        {
            return None;
        }
        Some(Self::with_shape(
            fold,
            update_len,
            counts_len,
            counts_sum_to_weight,
        ))
    }

    /// An empty accumulator for a round planned as `plan`.
    pub fn new(plan: &TaskPlan) -> Self {
        Self::with_shape(
            plan.fold,
            plan.update_len,
            plan.counts_len,
            plan.counts_sum_to_weight.clone(),
        )
    }

    /// An empty accumulator for updates of `update_len` values and `counts_len` counts,
    /// combined as `fold` says.
    fn with_shape(
        fold: FoldMode,
        update_len: usize,
        counts_len: usize,
        counts_sum_to_weight: Vec<std::ops::Range<usize>>,
    ) -> Self {
        Self {
            weighted: fold == FoldMode::WeightedSum,
            update_len,
            counts_len,
            counts_sum_to_weight,
            sum: (fold != FoldMode::Collect).then(|| ExactSum::single_threaded(update_len)),
            counts: vec![0; counts_len],
            collected: BTreeMap::new(),
            reports: BTreeMap::new(),
        }
    }

    /// Faults in the accumulator's memory ahead of the first update; see [`ExactSum::prefault`].
    pub fn prefault(&mut self) {
        if let Some(sum) = &mut self.sum {
            sum.prefault();
        }
    }

    /// True once an update from `client` was accepted.
    pub fn has(&self, client: &str) -> bool {
        self.reports.contains_key(client)
    }

    /// Updates accepted so far.
    pub fn accepted(&self) -> usize {
        self.reports.len()
    }

    /// Checks everything about `update` that [`RoundAccumulator::accept`] would, changing
    /// nothing: a checked update is then accepted without error.
    pub fn check(&self, update: &ClientUpdate) -> Result<(), AggregateError> {
        self.check_scanned(update, Finite::scan(&update.payload)?)
    }

    /// [`RoundAccumulator::check`] of an update whose payload was already scanned.
    pub fn check_scanned(&self, update: &ClientUpdate, scan: Finite) -> Result<(), AggregateError> {
        self.check_counts(update)?;
        match &self.sum {
            Some(sum) => sum
                .check_scanned(self.weight_of(update), &update.payload, scan)
                .map(|_| ()),
            None => scan.max_abs(&update.payload, self.update_len).map(|_| ()),
        }
    }

    /// The checks on everything but the payload, which [`ExactSum::fold`] validates itself.
    fn check_counts(&self, update: &ClientUpdate) -> Result<(), AggregateError> {
        self.check_counts_of(&update.counts, update.weight)
    }

    /// Checks counts that come with `examples` examples (one client's, or the sum of a
    /// partial's clients): their length, the ranges that must add up to the examples, and
    /// room in the round's totals.
    fn check_counts_of(&self, counts: &[u64], examples: u64) -> Result<(), AggregateError> {
        if counts.len() != self.counts_len {
            return Err(AggregateError::WrongCounts {
                got: counts.len(),
                expected: self.counts_len,
            });
        }
        for range in &self.counts_sum_to_weight {
            let sum = counts[range.clone()]
                .iter()
                .try_fold(0u64, |a, c| a.checked_add(*c));
            if sum != Some(examples) {
                return Err(AggregateError::CountsMismatch {
                    range: range.clone(),
                    sum: sum.unwrap_or(u64::MAX),
                    weight: examples,
                });
            }
        }
        for (total, c) in self.counts.iter().zip(counts) {
            total
                .checked_add(*c)
                .ok_or(AggregateError::OutOfRange(*c as f64))?;
        }
        Ok(())
    }

    fn weight_of(&self, update: &ClientUpdate) -> u64 {
        if self.weighted { update.weight } else { 1 }
    }

    /// Folds in one update; on error nothing changes.
    pub fn accept(&mut self, update: ClientUpdate) -> Result<(), AggregateError> {
        let scan = Finite::scan(&update.payload)?;
        self.accept_deferred(update, scan)?;
        self.flush();
        Ok(())
    }

    /// [`RoundAccumulator::accept`] of an update whose payload was already scanned, leaving
    /// the payload's addition to the next [`RoundAccumulator::flush`] (see
    /// [`ExactSum::defer`]); everything else about the update (counts, report, its place in
    /// the range) is accepted now.
    pub fn accept_deferred(
        &mut self,
        mut update: ClientUpdate,
        scan: Finite,
    ) -> Result<(), AggregateError> {
        // Counts first, then the payload (checked and counted in one call, unchanged on
        // error), and only then the counts change: a refusal at any step changes nothing.
        self.check_counts(&update)?;
        let weight = self.weight_of(&update);
        match &mut self.sum {
            Some(sum) => sum.defer(weight, std::mem::take(&mut update.payload), scan)?,
            None => scan.max_abs(&update.payload, self.update_len).map(|_| ())?,
        }
        for (total, c) in self.counts.iter_mut().zip(&update.counts) {
            *total += *c;
        }
        self.reports.insert(
            update.client_id.clone(),
            ClientReport {
                weight: update.weight,
                metrics: update.metrics.clone(),
            },
        );
        if self.sum.is_none() {
            self.collected.insert(update.client_id.clone(), update);
        }
        Ok(())
    }

    /// Checks everything about `partial` that [`RoundAccumulator::merge`] would, changing
    /// nothing.
    pub fn check_partial(&self, partial: &PartialSum) -> Result<(), AggregateError> {
        self.partial_terms(partial).map(|_| ())
    }

    /// The checks of a partial, and the count and weight its sum folded.
    fn partial_terms(&self, partial: &PartialSum) -> Result<(u32, u64), AggregateError> {
        let Some(sum) = &self.sum else {
            // Kept updates are each needed whole: they travel on their own.
            return Err(AggregateError::NotSummed);
        };
        if partial.totals.len() != sum.len() {
            return Err(AggregateError::WrongLength {
                got: partial.totals.len(),
                expected: sum.len(),
            });
        }
        if partial.reports.is_empty() {
            return Err(AggregateError::NoContributors);
        }
        let mut weight = 0u64;
        let mut examples = 0u64;
        for report in partial.reports.values() {
            if report.weight == 0 || report.weight > MAX_WEIGHT {
                return Err(AggregateError::BadWeight {
                    weight: report.weight,
                    max: MAX_WEIGHT,
                });
            }
            weight += if self.weighted { report.weight } else { 1 };
            examples += report.weight;
        }
        // What every client's counts must satisfy holds for their sums too.
        self.check_counts_of(&partial.counts, examples)?;
        let count = u32::try_from(partial.reports.len())
            .map_err(|_| AggregateError::OutOfRange(partial.reports.len() as f64))?;
        Ok((count, weight))
    }

    /// Folds in a sub-aggregator's partial sum: every client it names counts as delivered
    /// with its own weight and metrics. The caller makes sure none of them was folded before.
    /// On error nothing changes.
    pub fn merge(&mut self, partial: PartialSum) -> Result<(), AggregateError> {
        let (count, weight) = self.partial_terms(&partial)?;
        if let Some(sum) = &mut self.sum {
            sum.merge(&partial.totals, count, weight)?;
        }
        for (total, c) in self.counts.iter_mut().zip(&partial.counts) {
            *total += *c;
        }
        self.reports.extend(partial.reports);
        Ok(())
    }

    /// True if `client`'s update is in what was folded since the last partial sum.
    pub fn holds(&self, client: &str) -> bool {
        self.reports.contains_key(client)
    }

    /// Hands over what was folded so far as a partial sum and starts again from nothing (a
    /// sub-aggregator sending upstream); `None` if nothing was folded since the last time.
    pub fn take_partial(&mut self) -> Option<PartialSum> {
        let sum = self.sum.as_mut()?;
        if self.reports.is_empty() {
            return None;
        }
        sum.flush();
        let totals = sum.totals();
        *sum = ExactSum::single_threaded(sum.len());
        Some(PartialSum {
            totals,
            counts: std::mem::replace(&mut self.counts, vec![0; self.counts_len]),
            reports: std::mem::take(&mut self.reports),
        })
    }

    /// Checks a delivery as [`RoundAccumulator::accept_delivery`] would, changing nothing;
    /// `scan` is an update's payload scan if it was already made.
    pub fn check_delivery(
        &self,
        delivery: &Delivery,
        scan: Option<Finite>,
    ) -> Result<(), AggregateError> {
        match (delivery, scan) {
            (Delivery::Update(update), Some(scan)) => self.check_scanned(update, scan),
            (Delivery::Update(update), None) => self.check(update),
            (Delivery::Partial(partial), _) => self.check_partial(partial),
        }
    }

    /// Folds in a delivery of either kind; on error nothing changes.
    pub fn accept_delivery(&mut self, delivery: Delivery) -> Result<(), AggregateError> {
        self.accept_delivery_deferred(delivery, None)?;
        self.flush();
        Ok(())
    }

    /// [`RoundAccumulator::accept_delivery`], an update's addition deferred as in
    /// [`RoundAccumulator::accept_deferred`].
    pub fn accept_delivery_deferred(
        &mut self,
        delivery: Delivery,
        scan: Option<Finite>,
    ) -> Result<(), AggregateError> {
        match delivery {
            Delivery::Update(update) => {
                let scan = match scan {
                    Some(scan) => scan,
                    None => Finite::scan(&update.payload)?,
                };
                self.accept_deferred(update, scan)
            }
            Delivery::Partial(partial) => self.merge(partial),
        }
    }

    /// Adds every deferred payload to the sum, in one pass over it.
    pub fn flush(&mut self) {
        if let Some(sum) = &mut self.sum {
            sum.flush();
        }
    }

    /// Closes the round's collection.
    pub fn finish(mut self) -> RoundResults {
        self.flush();
        RoundResults {
            sum: self.sum,
            counts: self.counts,
            collected: self.collected.into_values().collect(),
            reports: self.reports,
        }
    }
}

/// Everything a closed round produced, in an order that does not depend on arrival.
#[derive(Debug)]
pub struct RoundResults {
    /// The exact (weighted) sum; `None` in [`FoldMode::Collect`].
    pub sum: Option<ExactSum>,
    /// Element-wise total of the clients' counts.
    pub counts: Vec<u64>,
    /// Every update, sorted by client id ([`FoldMode::Collect`] only).
    pub collected: Vec<ClientUpdate>,
    /// Weight and metrics of every contributor, by client id.
    pub reports: BTreeMap<String, ClientReport>,
}

impl RoundResults {
    /// Number of contributing clients.
    pub fn contributors(&self) -> usize {
        self.reports.len()
    }

    /// Total weight of the contributions.
    pub fn total_weight(&self) -> u64 {
        self.reports.values().map(|r| r.weight).sum()
    }

    /// Weight-averaged client metric `key`, over the clients that reported it.
    pub fn weighted_metric(&self, key: &str) -> Option<f64> {
        let (num, den) = self
            .reports
            .values()
            .filter_map(|r| {
                r.metrics
                    .get(key)
                    .map(|v| (v * r.weight as f64, r.weight as f64))
            })
            .fold((0.0, 0.0), |(n, d), (a, b)| (n + a, d + b));
        (den > 0.0).then(|| num / den)
    }

    /// Sum of client metric `key` over the clients that reported it (e.g. inertia).
    pub fn summed_metric(&self, key: &str) -> Option<f64> {
        let mut any = false;
        let total = self
            .reports
            .values()
            .filter_map(|r| r.metrics.get(key))
            .inspect(|_| any = true)
            .sum();
        any.then_some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Work;
    use shoal_proto::v1::{FitConfig, KMeansConfig, TaskKind};

    fn update(id: &str, weight: u64, payload: Vec<f32>, counts: Vec<u64>) -> ClientUpdate {
        ClientUpdate {
            client_id: id.into(),
            weight,
            payload: Arc::new(payload),
            counts,
            metrics: BTreeMap::from([("loss".to_string(), weight as f64)]),
        }
    }

    #[test]
    fn sums_counts_and_weights_metrics() {
        let plan = TaskPlan {
            kind: TaskKind::Fit,
            work: Work::Fit(FitConfig::default()),
            update_len: 2,
            counts_len: 1,
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: vec![],
        };
        let mut acc = RoundAccumulator::new(&plan);
        acc.accept(update("b", 3, vec![1.0, 1.0], vec![5])).unwrap();
        acc.accept(update("a", 1, vec![5.0, 1.0], vec![2])).unwrap();
        assert!(
            acc.accept(update("c", 1, vec![f32::NAN, 1.0], vec![2]))
                .is_err()
        );
        assert!(
            acc.accept(update("d", 1, vec![1.0, 1.0], vec![2, 2]))
                .is_err()
        );
        let r = acc.finish();
        assert_eq!(r.contributors(), 2);
        assert_eq!(r.counts, vec![7]);
        assert_eq!(r.sum.as_ref().unwrap().mean().unwrap(), vec![2.0, 1.0]);
        assert_eq!(r.weighted_metric("loss"), Some((9.0 + 1.0) / 4.0));
        assert_eq!(r.summed_metric("loss"), Some(4.0));
    }

    #[test]
    fn two_partial_sums_absorbed_into_one_fold_to_the_bits_of_both() {
        let plan = TaskPlan {
            kind: TaskKind::Fit,
            work: Work::Fit(FitConfig::default()),
            update_len: 3,
            counts_len: 1,
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: vec![],
        };
        let partial_of = |updates: Vec<ClientUpdate>| {
            let mut acc = RoundAccumulator::new(&plan);
            for u in updates {
                acc.accept(u).unwrap();
            }
            acc.take_partial().unwrap()
        };
        let a = || update("a", 3, vec![0.1, -2.5, 1e-3], vec![4]);
        let b = || update("b", 7, vec![3.25, 0.7, -1e-4], vec![1]);
        let c = || update("c", 2, vec![-0.3, 9.0, 0.0], vec![2]);
        let mut first = partial_of(vec![a(), b()]);
        first.absorb(&partial_of(vec![c()]));
        assert_eq!(first, partial_of(vec![a(), b(), c()]));
    }

    #[test]
    fn collect_mode_keeps_updates_in_client_order() {
        let plan = TaskPlan {
            kind: TaskKind::KmeansInit,
            work: Work::KMeans(KMeansConfig::default()),
            update_len: 1,
            counts_len: 0,
            fold: FoldMode::Collect,
            counts_sum_to_weight: vec![],
        };
        let mut acc = RoundAccumulator::new(&plan);
        acc.accept(update("z", 1, vec![1.0], vec![])).unwrap();
        acc.accept(update("a", 1, vec![2.0], vec![])).unwrap();
        let ids: Vec<_> = acc
            .finish()
            .collected
            .into_iter()
            .map(|u| u.client_id)
            .collect();
        assert_eq!(ids, vec!["a", "z"]);
    }

    #[test]
    fn a_partial_sum_of_any_number_of_clients_travels_in_small_messages() {
        let reports: BTreeMap<String, ClientReport> = (0..100_000)
            .map(|i| {
                let report = ClientReport {
                    weight: 3,
                    metrics: BTreeMap::from([("loss".to_string(), 0.5), ("accuracy".into(), 0.25)]),
                };
                (format!("sim-{i:06}"), report)
            })
            .collect();
        let partial = PartialSum {
            totals: vec![7; 300_000],
            counts: vec![],
            reports,
        };
        let chunk_bytes = shoal_proto::MAX_CHUNK_BYTES;
        let parts = partial.to_wire("agg", Fence::default(), chunk_bytes);
        let mut named = Vec::new();
        let mut declared = 0;
        for part in &parts {
            assert!(part.encoded_len() <= shoal_proto::message_limit(chunk_bytes));
            match part.part.as_ref() {
                Some(partial_part::Part::Header(h)) => {
                    declared = h.contribution_count;
                    named.extend(h.contributions.iter().map(|c| c.client_id.clone()));
                }
                Some(partial_part::Part::More(more)) => {
                    named.extend(more.contributions.iter().map(|c| c.client_id.clone()));
                }
                _ => {}
            }
        }
        assert_eq!(declared, 100_000);
        assert!(named.iter().eq(partial.reports.keys()));
        assert!(
            parts.len() > 10,
            "contributions spread over several messages"
        );
    }
}
