//! GPU tensors: NCHW storage buffers with their shape and precision (float32 unless asked).

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::precision::Precision;
use crate::signal::{drive, signal};

/// Bytes per element of a float32 tensor.
pub const ELEMENT_BYTES: u64 = 4;
/// Storage bindings are whole multiples of this many bytes (a WebGPU rule): an f16 tensor of an
/// odd length is bound with one spare element.
const BINDING_GRANULE: u64 = 4;
/// Bytes of a vec4, the unit of kernels that read tensors four values at a time.
pub(crate) const VEC4_BYTES: u64 = 16;

/// A rank-4 NCHW tensor living in a GPU storage buffer, float32 unless made otherwise.
///
/// The buffer may be larger than the tensor: the executor places its intermediate values at
/// offsets in pooled buffers. A tensor occupies `numel * precision.bytes()` bytes from
/// [`Tensor::offset`] (always 0 for the tensors this crate hands out). Cloning shares the
/// buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    offset: u64,
    shape: [usize; 4],
    precision: Precision,
}

/// Number of elements of an NCHW shape.
pub fn numel(shape: [usize; 4]) -> usize {
    shape.iter().product()
}

fn shape_bytes(op: &'static str, what: &str, shape: [usize; 4]) -> Result<u64> {
    if shape.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} has shape {shape:?}, with a zero dimension; every dimension must be at least 1"),
        ));
    }
    Ok(shape
        .iter()
        .try_fold(ELEMENT_BYTES, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX))
}

/// Checks that a shape has no zero dimension and that a kernel can bind its bytes.
pub(crate) fn check_shape(
    ctx: &GpuContext,
    op: &'static str,
    what: &str,
    shape: [usize; 4],
) -> Result<()> {
    let bytes = shape_bytes(op, what, shape)?;
    ctx.check_binding_size(op, &format!("{what} {shape:?}"), bytes)
}

/// Checks that a shape has no zero dimension and that a buffer can hold its bytes.
fn check_allocation(ctx: &GpuContext, op: &'static str, shape: [usize; 4]) -> Result<()> {
    let bytes = shape_bytes(op, "the tensor", shape)?;
    ctx.check_buffer_size(op, &format!("the tensor {shape:?}"), bytes)
}

/// Bytes a buffer for a tensor of `shape` in `precision` gets: whole f32 vec4s, enough for
/// every binding a kernel makes of it.
pub(crate) fn padded_bytes(shape: [usize; 4], precision: Precision) -> u64 {
    (numel(shape) as u64 * precision.bytes()).next_multiple_of(VEC4_BYTES)
}

impl Tensor {
    /// Allocates a tensor (zeros: wgpu clears new buffers). It may be larger than one storage
    /// binding (a large batch, say); such a tensor can be copied and downloaded, and ops refuse
    /// it with [`Error::LimitExceeded`].
    pub fn empty(ctx: &GpuContext, shape: [usize; 4]) -> Result<Self> {
        Self::empty_as(ctx, shape, Precision::F32)
    }

    /// [`Tensor::empty`] stored in `precision`; f16 needs a context that
    /// [supports it](GpuContext::supports_f16).
    pub fn empty_as(ctx: &GpuContext, shape: [usize; 4], precision: Precision) -> Result<Self> {
        check_allocation(ctx, "Tensor::empty", shape)?;
        ctx.check_precision("Tensor::empty", precision)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            // Whole vec4s of f32, so that kernels reading the tensor as vec4s can bind all of it.
            size: padded_bytes(shape, precision),
            usage: Self::usage(),
            mapped_at_creation: false,
        });
        Ok(Tensor {
            buffer,
            offset: 0,
            shape,
            precision,
        })
    }

    /// Uploads `data` (row-major NCHW) as a float32 tensor of `shape`.
    pub fn from_slice(ctx: &GpuContext, shape: [usize; 4], data: &[f32]) -> Result<Self> {
        Self::from_slice_as(ctx, shape, data, Precision::F32)
    }

    /// Uploads `data` (row-major NCHW) as a tensor of `shape` stored in `precision` (rounded to
    /// nearest for f16).
    pub fn from_slice_as(
        ctx: &GpuContext,
        shape: [usize; 4],
        data: &[f32],
        precision: Precision,
    ) -> Result<Self> {
        check_allocation(ctx, "Tensor::from_slice", shape)?;
        if data.len() != numel(shape) {
            return Err(Error::invalid(
                "Tensor::from_slice",
                format!(
                    "shape {shape:?} holds {} elements but the data has {}",
                    numel(shape),
                    data.len()
                ),
            ));
        }
        let t = Self::empty_as(ctx, shape, precision)?;
        match precision {
            Precision::F32 => ctx
                .queue()
                .write_buffer(&t.buffer, 0, bytemuck::cast_slice(data)),
            _ => {
                let mut bytes = precision.encode(data);
                // write_buffer copies whole 4-byte words.
                bytes.resize(bytes.len().next_multiple_of(BINDING_GRANULE as usize), 0);
                ctx.queue().write_buffer(&t.buffer, 0, &bytes);
            }
        }
        Ok(t)
    }

    /// Wraps an existing storage buffer as a float32 tensor of `shape`. The buffer must have
    /// `STORAGE | COPY_SRC` usage and hold at least `numel(shape) * 4` bytes.
    pub fn from_buffer(buffer: wgpu::Buffer, shape: [usize; 4]) -> Result<Self> {
        let need = numel(shape) as u64 * ELEMENT_BYTES;
        if shape.contains(&0) || buffer.size() < need {
            return Err(Error::invalid(
                "Tensor::from_buffer",
                format!(
                    "shape {shape:?} needs {need} bytes but the buffer has {}",
                    buffer.size()
                ),
            ));
        }
        // Ops bind tensors as storage, and forwards and downloads copy out of them; only the
        // library's own buffers are copied into.
        let needed = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        if !buffer.usage().contains(needed) {
            return Err(Error::invalid(
                "Tensor::from_buffer",
                format!(
                    "the buffer's usage is {:?}; tensors need {needed:?}",
                    buffer.usage()
                ),
            ));
        }
        Ok(Tensor {
            buffer,
            offset: 0,
            shape,
            precision: Precision::F32,
        })
    }

    /// A tensor at `offset` in a pooled buffer the caller has sized (see [`padded_bytes`]) and
    /// aligned.
    pub(crate) fn view(
        buffer: wgpu::Buffer,
        offset: u64,
        shape: [usize; 4],
        precision: Precision,
    ) -> Self {
        debug_assert!(offset + numel(shape) as u64 * precision.bytes() <= buffer.size());
        Tensor {
            buffer,
            offset,
            shape,
            precision,
        }
    }

    /// Buffer usages every tensor buffer carries.
    pub fn usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// The NCHW shape.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// How the elements are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(self.shape)
    }

    /// Bytes the tensor occupies (not the size of the buffer behind it).
    pub fn byte_size(&self) -> u64 {
        self.numel() as u64 * self.precision.bytes()
    }

    /// Bytes a binding or a copy of the tensor covers: [`Tensor::byte_size`] rounded up to whole
    /// 4-byte words (an f16 tensor of odd length carries one spare element, which every buffer
    /// this crate makes has room for).
    pub(crate) fn word_size(&self) -> u64 {
        let size = self.byte_size().next_multiple_of(BINDING_GRANULE);
        if self.offset + size <= self.buffer.size() {
            size
        } else {
            self.byte_size()
        }
    }

    /// The buffer behind the tensor.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where the tensor starts in [`Tensor::buffer`], in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The binding covering this tensor's [words](Tensor::word_size).
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.word_size()),
        })
    }

    /// The binding covering this tensor's bytes rounded up to whole vec4s, for kernels that
    /// read it as `array<vec4<act>>`; `None` when it does not start on a 16-byte boundary or its
    /// buffer ends before the last vec4 does (a caller's own buffer, say).
    pub(crate) fn vec4_binding(&self) -> Option<wgpu::BindingResource<'_>> {
        let size = self
            .byte_size()
            .next_multiple_of(4 * self.precision.bytes());
        (self.offset.is_multiple_of(VEC4_BYTES) && self.offset + size <= self.buffer.size()).then(
            || {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.buffer,
                    offset: self.offset,
                    size: wgpu::BufferSize::new(size),
                })
            },
        )
    }

    /// Copies the tensor to host memory (as f32 whatever its precision), blocking the thread
    /// until the GPU is done. See
    /// [`Tensor::download_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        pollster::block_on(self.download_async(ctx))
    }

    /// Copies the tensor to host memory; resolves when the GPU has finished the work that writes
    /// it, without blocking the thread.
    pub async fn download_async(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        ctx.check_alive()?;
        let size = self.word_size();
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(&self.buffer, self.offset, &staging, 0, size);
        ctx.queue().submit([encoder.finish()]);
        let (tx, rx) = signal();
        let on_stall = tx.clone();
        // Register before driving: the wait must cover the callback.
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            tx.send(r.map_err(|e| Error::Readback(e.to_string())))
        });
        drive(ctx.device(), on_stall);
        if let Err(e) = rx.await {
            // The staging buffer is ours and alive, so a failed map means the device is gone.
            ctx.mark_lost(format!("a read-back failed: {e}"));
            return Err(ctx.check_alive().err().unwrap_or(e));
        }
        ctx.check_alive()?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        let mut out = self.precision.decode(&view);
        out.truncate(self.numel());
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
