//! Large buffers kept from one batch to the next: a training step's patch rows run to tens of
//! megabytes, and an allocator hands memory that large back to the system when it is freed,
//! so each step would pay again for the kernel zeroing fresh pages (an eighth of a step at
//! batch size 50).

/// Free buffers, taken by size.
#[derive(Default)]
pub(crate) struct Buffers {
    free: Vec<Vec<f32>>,
}

impl Buffers {
    /// A buffer of `len` values whose contents are unspecified: the smallest free one that
    /// holds `len`, or a new one.
    pub(crate) fn take(&mut self, len: usize) -> Vec<f32> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buffer = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            buffer.resize(len, 0.0);
        }
        buffer
    }

    /// Keeps `buffer` for a later [`Buffers::take`].
    pub(crate) fn give(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
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
        assert_eq!((small.len(), small.capacity()), (8, 10));
        let big = buffers.take(50);
        assert_eq!((big.len(), big.capacity()), (50, 100));
        assert_eq!(buffers.take(3).len(), 3);
    }
}
