//! Borrow-checked slices over CPU tensors: the one place the CPU fast path turns libtorch
//! storage into Rust slices.
//!
//! A [`HostTensor`] checks once, when made, that its tensor is a contiguous CPU tensor of its
//! element type, then hands out `&[T]` through `&self` and `&mut [T]` through `&mut self`, and
//! the tensor itself for libtorch to write only through `&mut self`: the borrow checker keeps
//! every access through it apart. What it cannot see is another handle to the same storage (a
//! view elsewhere, or a tensor libtorch writes on its own). Wrapping a tensor that may have one
//! is therefore `unsafe`, and each call site says why those handles are not used while this
//! one's slices are. [`HostTensor::zeros`] makes fresh storage and is safe.

use std::marker::PhantomData;

use tch::{Device, Kind, Tensor};

/// Element types a [`HostTensor`] may hold, with libtorch's name for each.
pub trait Element: Copy + 'static {
    const KIND: Kind;
}

impl Element for f32 {
    const KIND: Kind = Kind::Float;
}

impl Element for i64 {
    const KIND: Kind = Kind::Int64;
}

impl Element for u8 {
    const KIND: Kind = Kind::Uint8;
}

/// A contiguous CPU tensor of `T`, with its elements as slices.
pub struct HostTensor<T: Element> {
    tensor: Tensor,
    /// For 2-D tensors, the transposed view (libtorch reads it for `xᵀ·y` products); it shares
    /// the storage, so it is only handed out through `&self`.
    transposed: Option<Tensor>,
    ptr: *mut T,
    len: usize,
    _elements: PhantomData<T>,
}

impl<T: Element> HostTensor<T> {
    /// Wraps `tensor`, checking device, element type and layout.
    ///
    /// # Panics
    /// If `tensor` is not a contiguous CPU tensor of `T`: a bug, not an input error.
    ///
    /// # Safety
    /// While the result lives, no other handle to this storage may be read or written while one
    /// of its slices is, and none may be written while the caller reads through the result.
    pub unsafe fn new(tensor: Tensor) -> Self {
        assert!(
            tensor.device() == Device::Cpu && tensor.kind() == T::KIND && tensor.is_contiguous(),
            "a HostTensor<{}> needs a contiguous CPU tensor of that type, not {:?} on {:?}",
            std::any::type_name::<T>(),
            tensor.kind(),
            tensor.device()
        );
        let transposed = (tensor.dim() == 2).then(|| tensor.tr());
        let (ptr, len) = (tensor.data_ptr() as *mut T, tensor.numel());
        Self { tensor, transposed, ptr, len, _elements: PhantomData }
    }

    /// Fresh zeroed storage of `shape`, reachable only through the result.
    pub fn zeros(shape: &[i64]) -> Self {
        let tensor = Tensor::zeros(shape, (T::KIND, Device::Cpu));
        // SAFETY: the storage was just made and no other handle to it exists; the transposed
        // view `new` makes is only lent out through `&self`.
        unsafe { Self::new(tensor) }
    }

    /// Whether `t` is the tensor this wraps (the same storage and length).
    pub fn wraps(&self, t: &Tensor) -> bool {
        t.data_ptr() as *mut T == self.ptr && t.numel() == self.len
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `new` checked that `ptr` addresses `len` contiguous elements of `T` on the
        // host, kept alive by `self.tensor`; `&self` rules out a live `&mut` slice of it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` rules out any other slice of it, and the
        // tensor handles are only lent out through `self` too.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The tensor, for libtorch to read.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The tensor, for libtorch to write into (`mm_out`, `addmm_out`): no slice of it is live.
    pub fn tensor_mut(&mut self) -> &Tensor {
        &self.tensor
    }

    /// The transposed view of a 2-D tensor, for libtorch to read.
    pub fn transposed(&self) -> &Tensor {
        self.transposed.as_ref().expect("a transposed view of a 2-D HostTensor")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_see_what_libtorch_writes_and_the_reverse() {
        let mut h = HostTensor::<f32>::zeros(&[2, 3]);
        h.as_mut_slice().copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(h.transposed().double_value(&[2, 1]), 6.0);
        let _ = h.tensor_mut().shallow_clone().g_mul_scalar_(2.0);
        assert_eq!(h.as_slice(), [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(h.len(), 6);
    }

    #[test]
    #[should_panic(expected = "needs a contiguous CPU tensor")]
    fn the_element_type_is_checked() {
        let t = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
        // SAFETY: `t` is not used again; the call is expected to panic anyway.
        let _ = unsafe { HostTensor::<f32>::new(t) };
    }

    #[test]
    #[should_panic(expected = "needs a contiguous CPU tensor")]
    fn a_strided_view_is_refused() {
        let t = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)).tr();
        // SAFETY: as above.
        let _ = unsafe { HostTensor::<f32>::new(t) };
    }
}
