//! STREAM-style memory-bandwidth kernels: copy (`c = a`) and triad (`a = b + s·c`).
//!
//! Bytes are counted as STREAM counts them: every array read once and written once, so a copy
//! moves 2 × 8 × len bytes and a triad 3 × 8 × len (write-allocate traffic is not counted).
//! Work is split in contiguous halves over threads, as [`shoal_coordinator::aggregate`] splits
//! a fold, so the two are measured the same way.

/// Elements per array: 8 Mi f64 = 64 MiB each, twice this machine's 32 MiB L3.
pub const STREAM_LEN: usize = 8 << 20;

/// The triad's scalar, as in STREAM.
pub const TRIAD_SCALAR: f64 = 3.0;

/// Three touched arrays of `f64` for the kernels.
#[derive(Debug, Clone)]
pub struct StreamArrays {
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

impl StreamArrays {
    /// Three arrays of `len` values, written once so every page is resident.
    pub fn new(len: usize) -> Self {
        Self {
            a: vec![1.0; len],
            b: vec![2.0; len],
            c: vec![0.5; len],
        }
    }

    /// Elements per array.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    /// True for empty arrays.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// Bytes one [`copy`](Self::copy) moves, STREAM-counted.
    pub fn copy_bytes(&self) -> u64 {
        2 * 8 * self.len() as u64
    }

    /// Bytes one [`triad`](Self::triad) moves, STREAM-counted.
    pub fn triad_bytes(&self) -> u64 {
        3 * 8 * self.len() as u64
    }

    /// `c = a` (a `memcpy`) over `threads` threads.
    pub fn copy(&mut self, threads: usize) {
        let chunk = chunk_len(self.len(), threads);
        std::thread::scope(|s| {
            for (dst, src) in self.c.chunks_mut(chunk).zip(self.a.chunks(chunk)) {
                s.spawn(move || dst.copy_from_slice(src));
            }
        });
    }

    /// `a = b + s·c` over `threads` threads.
    pub fn triad(&mut self, threads: usize) {
        let chunk = chunk_len(self.len(), threads);
        std::thread::scope(|s| {
            let parts = self
                .a
                .chunks_mut(chunk)
                .zip(self.b.chunks(chunk))
                .zip(self.c.chunks(chunk));
            for ((a, b), c) in parts {
                s.spawn(move || triad_slice(a, b, c, TRIAD_SCALAR));
            }
        });
    }

    /// A value of the output arrays, so the optimiser cannot drop the kernels.
    pub fn checksum(&self) -> f64 {
        self.a[self.len() / 2] + self.c[self.len() / 3]
    }
}

/// The triad loop on one thread.
fn triad_slice(a: &mut [f64], b: &[f64], c: &[f64], s: f64) {
    for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
        *a = b + s * c;
    }
}

/// Elements per thread for `threads` contiguous parts.
fn chunk_len(len: usize, threads: usize) -> usize {
    len.div_ceil(threads.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_compute_what_stream_computes() {
        let mut s = StreamArrays::new(1001);
        s.copy(2);
        assert!(s.c.iter().all(|&x| x == 1.0));
        s.triad(3);
        assert!(s.a.iter().all(|&x| x == 2.0 + TRIAD_SCALAR));
        assert_eq!(s.copy_bytes(), 2 * 8 * 1001);
        assert_eq!(s.triad_bytes(), 3 * 8 * 1001);
    }
}
