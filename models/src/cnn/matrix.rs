//! Row-major `f32` matrices multiplied by the backend's own product (burn-flex's strided call
//! into the `gemm` crate over every core), without leaving safe code.
//!
//! Transposes and views into the flat parameter vector are metadata only: the product reads
//! them through their strides, so no weight is copied to be multiplied.

use burn::tensor::TensorData;
use burn_flex::FlexTensor;

use crate::error::{ModelError, Result};

/// A matrix, or a strided view of one (a transpose, a block of the parameter vector).
#[derive(Debug)]
pub(crate) struct Matrix {
    tensor: FlexTensor,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// `values` read as `rows` rows of `cols`.
    pub(crate) fn new(values: Vec<f32>, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        Self {
            tensor: FlexTensor::from_data(TensorData::new(values, [rows, cols])),
            rows,
            cols,
        }
    }

    /// The flat vector `values` as a one-row matrix, for [`Matrix::block`] views into it.
    pub(crate) fn flat(values: Vec<f32>) -> Self {
        let len = values.len();
        Self::new(values, 1, len)
    }

    /// The `rows` × `cols` block stored at `offset` of a flat matrix, viewed in place.
    pub(crate) fn block(&self, offset: usize, rows: usize, cols: usize) -> Self {
        let tensor = self
            .tensor
            .reshape([self.rows * self.cols].into())
            .narrow(0, offset, rows * cols)
            .reshape([rows, cols].into());
        Self { tensor, rows, cols }
    }

    /// The transpose, as a view.
    pub(crate) fn t(&self) -> Self {
        Self {
            tensor: self.tensor.transpose(0, 1),
            rows: self.cols,
            cols: self.rows,
        }
    }

    /// `self × other`, a new row-major matrix.
    pub(crate) fn matmul(&self, other: &Matrix) -> Matrix {
        debug_assert_eq!(self.cols, other.rows);
        Self {
            tensor: burn_flex::ops::matmul::matmul(self.tensor.clone(), other.tensor.clone()),
            rows: self.rows,
            cols: other.cols,
        }
    }

    /// The values, row by row. Only for a matrix made by [`Matrix::new`] or a product (a view
    /// would show its whole buffer).
    pub(crate) fn values(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[..self.rows * self.cols]
    }

    /// The values to change in place (copied first if a view still shares them).
    pub(crate) fn values_mut(&mut self) -> &mut [f32] {
        let len = self.rows * self.cols;
        &mut self.tensor.storage_mut::<f32>()[..len]
    }

    /// The values, row by row, taken out (without a copy when nothing else holds them).
    pub(crate) fn into_values(self) -> Result<Vec<f32>> {
        let len = self.rows * self.cols;
        let mut values = self
            .tensor
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
        values.truncate(len);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_of_views_and_transposes_are_the_plain_ones() {
        // 2x3 block at offset 1 of [0, 1, .., 9]: [[1, 2, 3], [4, 5, 6]].
        let flat = Matrix::flat((0..10).map(|v| v as f32).collect());
        let a = flat.block(1, 2, 3);
        let product = a.matmul(&a.t());
        assert_eq!(product.values(), &[14.0, 32.0, 32.0, 77.0]);
        let other = Matrix::new(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2);
        assert_eq!(a.matmul(&other).values(), &[4.0, 5.0, 10.0, 11.0]);
        assert_eq!(
            a.t().matmul(&Matrix::new(vec![1.0, 1.0], 2, 1)).values(),
            &[5.0, 7.0, 9.0]
        );
    }
}
