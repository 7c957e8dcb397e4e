//! Large buffers kept from one batch to the next, and from one training or evaluation to the
//! next: a step's activations and gradients run to megabytes, and an allocator hands memory that
//! large back to the system when it is freed, so each step (or each client's first steps of
//! a round) would pay again for the kernel zeroing fresh pages (an eighth of a step at batch
//! size 50).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Sets of buffers between model calls: at most one per core (as many as can train at once
/// without waiting for each other), so a process keeps at most that many sets (each within
/// [`MAX_KEPT_BYTES`]; about 20 MB for the CNN at batch size 50).
static SPARE: Mutex<Vec<Buffers>> = Mutex::new(Vec::new());

fn spare_sets() -> MutexGuard<'static, Vec<Buffers>> {
    // The list stays consistent whatever a panicking holder did: it only pushes and pops.
    SPARE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Free buffers of values and of bytes, taken by size.
#[derive(Default)]
pub(crate) struct Buffers {
    values: Pool<f32>,
    bytes: Pool<u8>,
}

impl Buffers {
    /// A set kept by an earlier call, or an empty one.
    pub(crate) fn spare() -> Buffers {
        spare_sets().pop().unwrap_or_default()
    }

    /// Keeps this set for a later [`Buffers::spare`], unless as many sets as the machine has
    /// cores are kept already (it is freed then).
    pub(crate) fn put_back(self) {
        if self.values.free.is_empty() && self.bytes.free.is_empty() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut spare = spare_sets();
        if spare.len() < cores {
            spare.push(self);
        }
    }

    /// A buffer of `len` values whose contents are unspecified.
    pub(crate) fn take(&mut self, len: usize) -> Vec<f32> {
        self.values.take(len)
    }

    /// Keeps `buffer` for a later [`Buffers::take`].
    pub(crate) fn give(&mut self, buffer: Vec<f32>) {
        self.values.give(buffer);
    }

    /// A buffer of `len` bytes whose contents are unspecified.
    pub(crate) fn take_bytes(&mut self, len: usize) -> Vec<u8> {
        self.bytes.take(len)
    }

    /// Keeps `buffer` for a later [`Buffers::take_bytes`].
    pub(crate) fn give_bytes(&mut self, buffer: Vec<u8>) {
        self.bytes.give(buffer);
    }
}

/// Most buffers of one element type a set keeps; the least recently returned go first.
const MAX_KEPT: usize = 24;

/// Most bytes of one element type's buffers a set keeps, and the largest buffer it keeps
/// (a peer's huge batch size must not leave gigabytes behind for the life of the process).
const MAX_KEPT_BYTES: usize = 128 << 20;

/// Free buffers of one element type, least recently returned first.
struct Pool<T> {
    free: Vec<Vec<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self { free: Vec::new() }
    }
}

impl<T: Copy + Default> Pool<T> {
    /// The free buffer with the least memory that holds `len` values, cut to `len` (nothing
    /// written) or grown to it (only the new part written, within its memory), or a new one.
    /// Memory, not length, decides, so a large buffer cut short for a small request still
    /// serves the next large one.
    fn take(&mut self, len: usize) -> Vec<T> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| (b.capacity(), std::cmp::Reverse(b.len())))
            .map(|(i, _)| i);
        let mut buffer = match best {
            Some(i) => self.free.remove(i),
            None => Vec::with_capacity(len),
        };
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            buffer.resize(len, T::default());
        }
        buffer
    }

    fn give(&mut self, buffer: Vec<T>) {
        let bytes = |b: &Vec<T>| b.capacity() * std::mem::size_of::<T>();
        if buffer.capacity() == 0 || bytes(&buffer) > MAX_KEPT_BYTES {
            return;
        }
        self.free.push(buffer);
        while self.free.len() > MAX_KEPT
            || self.free.iter().map(bytes).sum::<usize>() > MAX_KEPT_BYTES
        {
            self.free.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_buffer_that_fits_is_reused() {
        let mut buffers = Buffers::default();
        buffers.give(vec![1.0; 100]);
        buffers.give(vec![2.0; 10]);
        let small = buffers.take(8);
        assert_eq!((small.len(), small[0]), (8, 2.0));
        let big = buffers.take(50);
        assert_eq!((big.len(), big[0]), (50, 1.0));
        // Cut short and returned, the large buffer still serves a large request.
        buffers.give(big);
        buffers.give(small);
        let again = buffers.take(90);
        assert_eq!((again.len(), again.capacity(), again[0]), (90, 100, 1.0));
        assert_eq!(buffers.take(3).len(), 3);
        buffers.give_bytes(vec![7; 4]);
        assert_eq!(buffers.take_bytes(2), vec![7, 7]);
    }

    #[test]
    fn a_set_keeps_a_bounded_number_of_bytes() {
        let mut buffers = Buffers::default();
        // Requests of ever new sizes: a set never holds more than its bounds.
        for len in 1..200 {
            let buffer = buffers.take(len * 1000);
            buffers.give(buffer);
            let extra = buffers.take(len * 1000 + 1);
            buffers.give(extra);
        }
        assert!(buffers.values.free.len() <= MAX_KEPT);
        // A buffer larger than the bound is not kept at all.
        buffers.give(Vec::with_capacity(MAX_KEPT_BYTES / 4 + 1));
        let kept: usize = buffers.values.free.iter().map(Vec::capacity).sum();
        assert!(kept * 4 <= MAX_KEPT_BYTES);
    }

    #[test]
    fn no_more_sets_are_kept_than_the_machine_has_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..cores + 2 {
            let mut set = Buffers::default();
            set.give(vec![1.5; 8]);
            set.put_back();
        }
        // Other tests take and put back sets meanwhile; none can pass the bound.
        assert!(spare_sets().len() <= cores);
    }
}
