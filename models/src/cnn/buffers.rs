//! Large buffers kept from one batch to the next: a training step's patch rows run to tens of
//! megabytes, and an allocator hands memory that large back to the system when it is freed,
//! so each step would pay again for the kernel zeroing fresh pages (an eighth of a step at
//! batch size 50).

/// Free buffers of values and of bytes, taken by size.
#[derive(Default)]
pub(crate) struct Buffers {
    values: Pool<f32>,
    bytes: Pool<u8>,
}

impl Buffers {
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

/// Free buffers of one element type.
struct Pool<T> {
    free: Vec<Vec<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self { free: Vec::new() }
    }
}

impl<T: Copy + Default> Pool<T> {
    /// The shortest free buffer at least `len` long (cut to `len`, nothing written), or a
    /// new one. Lengths, not capacities, decide: growing a buffer writes its new part.
    fn take(&mut self, len: usize) -> Vec<T> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let mut buffer = match best {
            Some(i) => self.free.swap_remove(i),
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
        if !buffer.is_empty() {
            self.free.push(buffer);
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
        assert_eq!(buffers.take(3).len(), 3);
        buffers.give_bytes(vec![7; 4]);
        assert_eq!(buffers.take_bytes(2), vec![7, 7]);
    }
}
