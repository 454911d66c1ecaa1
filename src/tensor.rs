//! GPU tensors: storage buffers with their NCHW shape, precision (float32 unless asked) and
//! layout (NCHW unless asked).

use std::sync::Arc;

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
    layout: MemoryFormat,
    /// Shared with the executor's output pool when the executor handed this tensor out: the
    /// pool reuses the buffer once no tensor holds the lease any more. Held for its count,
    /// never read.
    #[allow(dead_code)]
    lease: Option<Arc<()>>,
}

/// Channels of a [`MemoryFormat::ChannelsLast`] tensor are zero padded to a multiple of this: whole
/// 16-wide (or 8-wide) matrix tiles of the cooperative-matrix convolution.
pub const CHANNELS_LAST_ALIGN: usize = 16;

/// How a tensor's elements are ordered in its buffer. The shape is always given as NCHW.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MemoryFormat {
    /// Row-major `[N][C][H][W]`: what the library takes and returns.
    #[default]
    Nchw,
    /// Channels-last, row-major `[N][H][W][C']` with `C'` the channel count rounded up to a
    /// multiple of [`CHANNELS_LAST_ALIGN`]; the padding channels hold zeros. The tensor-core
    /// convolutions read a tile of pixels by channels of it as one strided matrix.
    ChannelsLast,
}

impl MemoryFormat {
    /// The distance between two pixels' values of one channel, in elements: 1 for NCHW, the
    /// padded channel count for channels-last.
    pub fn pixel_stride(self, channels: usize) -> usize {
        match self {
            MemoryFormat::Nchw => 1,
            MemoryFormat::ChannelsLast => channels.next_multiple_of(CHANNELS_LAST_ALIGN),
        }
    }

    /// Elements the storage of `shape` holds (padding channels included).
    pub fn storage_len(self, shape: [usize; 4]) -> usize {
        let [n, c, h, w] = shape;
        match self {
            MemoryFormat::Nchw => n * c * h * w,
            MemoryFormat::ChannelsLast => n * h * w * self.pixel_stride(c),
        }
    }

    /// The storage index of element (n, c, y, x) of `shape`.
    pub fn index(self, shape: [usize; 4], [n, c, y, x]: [usize; 4]) -> usize {
        let [_, cs, h, w] = shape;
        match self {
            MemoryFormat::Nchw => ((n * cs + c) * h + y) * w + x,
            MemoryFormat::ChannelsLast => ((n * h + y) * w + x) * self.pixel_stride(cs) + c,
        }
    }

    /// The value `params.channels_last` of the kernels that take either layout: 0 for NCHW, the
    /// padded channel count for channels-last.
    pub(crate) fn wgsl_flag(self, channels: usize) -> u32 {
        match self {
            MemoryFormat::Nchw => 0,
            MemoryFormat::ChannelsLast => self.pixel_stride(channels) as u32,
        }
    }

    /// `data` (row-major NCHW of `shape`, checked by the caller to hold all of it) reordered
    /// into this layout's storage.
    pub(crate) fn to_storage(self, shape: [usize; 4], data: &[f32]) -> Vec<f32> {
        if self == MemoryFormat::Nchw {
            return data.to_vec();
        }
        let mut out = vec![0.0; self.storage_len(shape)];
        let mut i = 0;
        for n in 0..shape[0] {
            for c in 0..shape[1] {
                for y in 0..shape[2] {
                    for x in 0..shape[3] {
                        out[self.index(shape, [n, c, y, x])] = data[i];
                        i += 1;
                    }
                }
            }
        }
        out
    }

    /// This layout's storage of `shape` (checked by the caller to hold all of it) reordered to
    /// row-major NCHW.
    pub(crate) fn to_nchw(self, shape: [usize; 4], storage: &[f32]) -> Vec<f32> {
        if self == MemoryFormat::Nchw {
            return storage[..numel(shape)].to_vec();
        }
        let mut out = Vec::with_capacity(numel(shape));
        for n in 0..shape[0] {
            for c in 0..shape[1] {
                for y in 0..shape[2] {
                    for x in 0..shape[3] {
                        out.push(storage[self.index(shape, [n, c, y, x])]);
                    }
                }
            }
        }
        out
    }
}

/// Number of elements of an NCHW shape.
pub fn numel(shape: [usize; 4]) -> usize {
    shape.iter().product()
}

fn shape_bytes(
    op: &'static str,
    what: &str,
    shape: [usize; 4],
    layout: MemoryFormat,
) -> Result<u64> {
    if shape.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} has shape {shape:?}, with a zero dimension; every dimension must be at least 1"),
        ));
    }
    let [n, c, h, w] = shape;
    let stored_c = match layout {
        MemoryFormat::Nchw => c,
        MemoryFormat::ChannelsLast => c
            .checked_next_multiple_of(CHANNELS_LAST_ALIGN)
            .unwrap_or(usize::MAX),
    };
    Ok([n, stored_c, h, w]
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
    check_shape_in(ctx, op, what, shape, MemoryFormat::Nchw)
}

/// [`check_shape`] for a tensor stored in `layout`.
pub(crate) fn check_shape_in(
    ctx: &GpuContext,
    op: &'static str,
    what: &str,
    shape: [usize; 4],
    layout: MemoryFormat,
) -> Result<()> {
    let bytes = shape_bytes(op, what, shape, layout)?;
    ctx.check_binding_size(op, &format!("{what} {shape:?}"), bytes)
}

/// Checks that a shape has no zero dimension and that a buffer can hold its bytes.
fn check_allocation(
    ctx: &GpuContext,
    op: &'static str,
    shape: [usize; 4],
    layout: MemoryFormat,
) -> Result<()> {
    let bytes = shape_bytes(op, "the tensor", shape, layout)?;
    ctx.check_buffer_size(op, &format!("the tensor {shape:?}"), bytes)
}

/// Bytes a buffer for a tensor of `shape` in `precision` and `layout` gets: whole f32 vec4s,
/// enough for every binding a kernel makes of it.
pub(crate) fn padded_bytes(shape: [usize; 4], precision: Precision, layout: MemoryFormat) -> u64 {
    (layout.storage_len(shape) as u64 * precision.bytes()).next_multiple_of(VEC4_BYTES)
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
        Self::empty_with(ctx, shape, precision, MemoryFormat::Nchw)
    }

    /// [`Tensor::empty_as`] stored in `layout`.
    pub fn empty_with(
        ctx: &GpuContext,
        shape: [usize; 4],
        precision: Precision,
        layout: MemoryFormat,
    ) -> Result<Self> {
        Self::empty_with_slack(ctx, shape, precision, layout, 0)
    }

    /// [`Tensor::empty_with`] with `slack` spare bytes after the tensor, which kernels that
    /// read past a tensor's end (and never use what they read there) need.
    pub(crate) fn empty_with_slack(
        ctx: &GpuContext,
        shape: [usize; 4],
        precision: Precision,
        layout: MemoryFormat,
        slack: u64,
    ) -> Result<Self> {
        check_allocation(ctx, "Tensor::empty", shape, layout)?;
        ctx.check_precision("Tensor::empty", precision)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            // Whole vec4s of f32, so that kernels reading the tensor as vec4s can bind all of it.
            size: padded_bytes(shape, precision, layout) + slack.next_multiple_of(VEC4_BYTES),
            usage: Self::usage(),
            mapped_at_creation: false,
        });
        Ok(Tensor {
            buffer,
            offset: 0,
            shape,
            precision,
            layout,
            lease: None,
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
        Self::from_slice_with(ctx, shape, data, precision, MemoryFormat::Nchw)
    }

    /// Uploads `data` (row-major NCHW, whatever `layout` is) as a tensor of `shape` stored in
    /// `precision` and `layout`.
    pub fn from_slice_with(
        ctx: &GpuContext,
        shape: [usize; 4],
        data: &[f32],
        precision: Precision,
        layout: MemoryFormat,
    ) -> Result<Self> {
        check_allocation(ctx, "Tensor::from_slice", shape, layout)?;
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
        let t = Self::empty_with(ctx, shape, precision, layout)?;
        let stored;
        let data = match layout {
            MemoryFormat::Nchw => data,
            MemoryFormat::ChannelsLast => {
                stored = layout.to_storage(shape, data);
                &stored
            }
        };
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
            layout: MemoryFormat::Nchw,
            lease: None,
        })
    }

    /// A tensor at `offset` in a pooled buffer the caller has sized (see [`padded_bytes`]) and
    /// aligned.
    pub(crate) fn view(
        buffer: wgpu::Buffer,
        offset: u64,
        shape: [usize; 4],
        precision: Precision,
        layout: MemoryFormat,
    ) -> Self {
        debug_assert!(
            offset + layout.storage_len(shape) as u64 * precision.bytes() <= buffer.size()
        );
        Tensor {
            buffer,
            offset,
            shape,
            precision,
            layout,
            lease: None,
        }
    }

    /// The same tensor holding `lease`, a share of an output pool entry.
    pub(crate) fn with_lease(self, lease: Arc<()>) -> Self {
        Tensor {
            lease: Some(lease),
            ..self
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

    /// How the elements are ordered in the buffer.
    pub fn memory_format(&self) -> MemoryFormat {
        self.layout
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(self.shape)
    }

    /// Elements the storage holds: [`Tensor::numel`], plus the padding channels of a
    /// channels-last tensor.
    pub fn storage_len(&self) -> usize {
        self.layout.storage_len(self.shape)
    }

    /// Bytes the tensor occupies (not the size of the buffer behind it).
    pub fn byte_size(&self) -> u64 {
        self.storage_len() as u64 * self.precision.bytes()
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

    /// The buffer behind the tensor. The outputs of a forward are reused by a later forward
    /// once every clone of them has been dropped: keep the tensor, not only its buffer, for as
    /// long as you read the buffer.
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

    /// The binding from the tensor's start to the end of its buffer (at most `max_bytes`), for
    /// kernels that read past the tensor's last element.
    pub(crate) fn binding_to_end(&self, max_bytes: u64) -> wgpu::BindingResource<'_> {
        let size =
            (self.buffer.size() - self.offset).min(max_bytes) / BINDING_GRANULE * BINDING_GRANULE;
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(size),
        })
    }

    /// Bytes from the tensor's start to the end of its buffer.
    pub(crate) fn bytes_to_end(&self) -> u64 {
        self.buffer.size() - self.offset
    }

    /// Copies the tensor to host memory (as NCHW f32, whatever its precision and layout),
    /// blocking the thread
    /// until the GPU is done. See
    /// [`Tensor::download_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        pollster::block_on(self.download_async(ctx))
    }

    /// Copies the tensor to host memory; resolves when the GPU has finished the work that writes
    /// it, without blocking the thread.
    pub async fn download_async(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let bytes = self
            .read_bytes(ctx, &[(self.offset, self.word_size())])
            .await?;
        Ok(self.host_values(&bytes))
    }

    /// Copies `rows`, ranges of the first dimension of an NCHW tensor, to host memory (each as
    /// NCHW f32), in one copy and one read: only those rows cross to the host, not the whole
    /// tensor (a Mask R-CNN's masks of the kept detections out of all slots, say). Resolves
    /// when the GPU has finished the work that writes the tensor, without blocking the thread.
    pub async fn download_rows_async(
        &self,
        ctx: &GpuContext,
        rows: &[std::ops::Range<usize>],
    ) -> Result<Vec<Vec<f32>>> {
        let [n, c, h, w] = self.shape;
        if let Some(r) = rows.iter().find(|r| r.start > r.end || r.end > n) {
            return Err(Error::invalid(
                "Tensor::download_rows",
                format!(
                    "rows {r:?} of a tensor of shape {:?}; give ranges within 0..{n}",
                    self.shape
                ),
            ));
        }
        let per_row = c * h * w;
        let values: Vec<_> = rows
            .iter()
            .map(|r| r.start * per_row..r.end * per_row)
            .collect();
        self.download_values_async(ctx, &values).await
    }

    /// Copies `ranges` of an NCHW tensor's values (indices into its row-major values) to host
    /// memory as f32, in one copy and one read: [`Tensor::download_rows_async`] for ranges
    /// that need not be whole rows (a few channels of an image, say).
    pub async fn download_values_async(
        &self,
        ctx: &GpuContext,
        ranges: &[std::ops::Range<usize>],
    ) -> Result<Vec<Vec<f32>>> {
        let numel = self.numel();
        if let Some(r) = ranges.iter().find(|r| r.start > r.end || r.end > numel) {
            return Err(Error::invalid(
                "Tensor::download_values",
                format!(
                    "values {r:?} of a tensor of shape {:?}; give ranges within 0..{numel}",
                    self.shape
                ),
            ));
        }
        let bytes = self.precision.bytes();
        let aligned = |i: usize| (i as u64 * bytes).is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let copyable = self.layout == MemoryFormat::Nchw
            && self.offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            && ranges.iter().all(|r| aligned(r.start) && aligned(r.end));
        if !copyable {
            // Values of another layout, or whose bytes do not start and end on a copy's 4-byte
            // alignment (odd f16 counts), come from the whole tensor.
            let all = self.download_async(ctx).await?;
            return Ok(ranges.iter().map(|r| all[r.clone()].to_vec()).collect());
        }
        let copies: Vec<(u64, u64)> = ranges
            .iter()
            .map(|r| (self.offset + r.start as u64 * bytes, r.len() as u64 * bytes))
            .collect();
        let bytes = self.read_bytes(ctx, &copies).await?;
        let mut at = 0usize;
        Ok(copies
            .iter()
            .map(|&(_, size)| {
                let part = &bytes[at..at + size as usize];
                at += size as usize;
                self.precision.decode(part)
            })
            .collect())
    }

    /// The bytes of `copies` ((offset, size) in the tensor's buffer, each a multiple of 4)
    /// one after the other, read in one copy pass and one map.
    async fn read_bytes(&self, ctx: &GpuContext, copies: &[(u64, u64)]) -> Result<Vec<u8>> {
        ctx.check_alive()?;
        let size: u64 = copies.iter().map(|c| c.1).sum();
        if size == 0 {
            return Ok(Vec::new());
        }
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
        let mut at = 0;
        for &(offset, bytes) in copies {
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(&self.buffer, offset, &staging, at, bytes);
            }
            at += bytes;
        }
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
            return Err(ctx.mark_lost(format!("a read-back failed: {e}")));
        }
        ctx.check_alive()?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        let out = view.to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// The same NCHW values seen as `shape` (as many values), sharing the buffer.
    pub fn reshape(&self, shape: [usize; 4]) -> Result<Tensor> {
        if self.layout != MemoryFormat::Nchw || numel(shape) != self.numel() {
            return Err(Error::invalid(
                "Tensor::reshape",
                format!(
                    "a {:?} tensor of shape {:?} cannot be seen as {shape:?}; an NCHW tensor of \
                     as many values can",
                    self.layout, self.shape
                ),
            ));
        }
        Ok(Tensor {
            shape,
            ..self.clone()
        })
    }

    /// The tensor's values as NCHW f32, from a copy of its stored bytes (at least
    /// [`Tensor::byte_size`] of them).
    pub(crate) fn host_values(&self, bytes: &[u8]) -> Vec<f32> {
        let mut out = self.precision.decode(bytes);
        out.truncate(self.storage_len());
        self.layout.to_nchw(self.shape, &out)
    }

    /// [`Tensor::host_values`] cut into one vector per image of the batch. An NCHW tensor's
    /// images are decoded straight from `bytes`, with no copy of the whole batch between.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn host_images(&self, bytes: &[u8]) -> Vec<Vec<f32>> {
        let [n, c, h, w] = self.shape;
        let per = c * h * w;
        if self.layout != MemoryFormat::Nchw {
            let all = self.host_values(bytes);
            return all.chunks_exact(per.max(1)).map(<[f32]>::to_vec).collect();
        }
        let image_bytes = per * self.precision.bytes() as usize;
        (0..n)
            .map(|i| {
                self.precision
                    .decode(&bytes[i * image_bytes..(i + 1) * image_bytes])
            })
            .collect()
    }
}
