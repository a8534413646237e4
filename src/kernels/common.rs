//! What the kernels share: the on/off switch and the test for the Flex f32
//! path, the Flex tensor views and constructors, the rows per rayon task, the
//! pointer that parallel tasks write through, and the tests' helpers.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process (on by default).
/// Off, every call takes the plain tensor operations: for benchmarks that
/// measure what the kernels buy, and for checking one against the other.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// "fused" or "plain", as the benchmarks report [`enabled`].
pub fn kernels_name() -> &'static str {
    if enabled() { "fused" } else { "plain" }
}

/// The fused kernels apply to f32 tensors on the Flex CPU backend.
pub(super) fn flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().inner() == Device::flex()
}

/// Rows per rayon task: enough work per task to pay for the scheduling.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// The f32 elements of `t` in row-major order (copied only if `t` is a strided view).
pub(super) fn contiguous_f32(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

pub(super) fn flex_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `t` with no negative strides (copied row-major if it had any), so that
/// [`strided_f32`] can read it in place.
pub(super) fn forward_strides(t: FlexTensor) -> FlexTensor {
    if t.layout().strides().iter().all(|&s| s >= 0) {
        t
    } else {
        t.to_contiguous()
    }
}

/// The f32 elements of `t` from its first one on, and its strides (which
/// [`forward_strides`] made non-negative).
pub(super) fn strided_f32(t: &FlexTensor) -> (&[f32], Vec<usize>) {
    let strides = t.layout().strides().iter().map(|&s| s as usize).collect();
    (&t.storage::<f32>()[t.layout().start_offset()..], strides)
}

/// A result buffer's base pointer, shared by rayon tasks that write disjoint
/// parts of it (their rows, columns, head or block), while the buffer
/// outlives the parallel loop: each user says which parts are whose.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the tasks that share it write disjoint elements through it, and the
// buffer outlives the parallel loop (each use site states its partition).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` places on (a method, so that closures capture
    /// the `Send` wrapper, not its raw pointer field).
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// Copies the top-left `rows × cols` of a kernel's block (row stride
    /// `block_stride`) to rows `row0..` and columns `col0..` of the row-major
    /// result of width `n`: the part of the block inside the result.
    ///
    /// # Safety
    /// Those elements lie inside the result and no other thread writes them;
    /// `block` holds `rows` rows of `block_stride`.
    pub(super) unsafe fn write_block(
        &self,
        block: &[f32],
        block_stride: usize,
        [row0, col0]: [usize; 2],
        [rows, cols]: [usize; 2],
        n: usize,
    ) {
        for r in 0..rows {
            let src = &block[r * block_stride..r * block_stride + cols];
            // SAFETY: forwarded from the caller.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add((row0 + r) * n + col0), cols)
            };
        }
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use crate::rng::Rng;

    pub(crate) fn random<const D: usize>(
        shape: [usize; D],
        seed: u64,
        device: &Device,
    ) -> Tensor<D> {
        let mut rng = Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    pub(crate) fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Runs `f` with the fused kernels and with plain operations on the same
    /// inputs, backpropagates the same random upstream gradient through both,
    /// and returns the largest difference in output and in each input gradient.
    pub(crate) fn compare<const D: usize, const E: usize>(
        inputs: (Tensor<D>, Tensor<E>),
        f: impl Fn(Tensor<D>, Tensor<E>, bool) -> Tensor<D>,
    ) -> [f32; 3] {
        let device = Device::flex().autodiff();
        let upstream = random(inputs.0.dims(), 99, &inputs.0.device());
        let run = |fused: bool| {
            let a = Tensor::<D>::from_data(inputs.0.to_data(), &device).require_grad();
            let b = Tensor::<E>::from_data(inputs.1.to_data(), &device).require_grad();
            let out = f(a.clone(), b.clone(), fused);
            let up = Tensor::<D>::from_data(upstream.to_data(), &device);
            let grads = (out.clone() * up).sum().backward();
            let ga = a.grad(&grads).unwrap();
            let gb = b.grad(&grads).unwrap();
            (out, ga, gb)
        };
        let (o1, a1, b1) = run(true);
        let (o2, a2, b2) = run(false);
        [
            max_abs_diff(o1, o2),
            max_abs_diff(a1, a2),
            max_abs_diff(b1, b2),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::random;
    use super::*;

    #[test]
    fn the_fused_path_is_taken_only_for_f32_on_flex() {
        let device = Device::flex();
        let x = random([1, 2, 4], 3, &device);
        assert!(flex_f32(&x));
        assert!(flex_f32(&Tensor::<3>::from_data(
            x.to_data(),
            &device.clone().autodiff()
        )));
        assert!(!flex_f32(&x.cast(DType::BF16)));
    }
}
