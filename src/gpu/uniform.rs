//! Launch parameters as slices of a few shared uniform buffers, rather than a buffer per
//! launch: a forward's submit then tracks a handful of buffers instead of one per launch.

/// Bytes of each buffer the launches' parameters are placed in: 256 launches' worth at the
/// common 256-byte offset alignment.
const UNIFORM_CHUNK_BYTES: u64 = 64 * 1024;

/// The chunk launches' parameters are being placed in, and how much of it is used.
#[derive(Default)]
pub(super) struct UniformArena {
    buffer: Option<wgpu::Buffer>,
    used: u64,
}

/// A launch's parameters: a slice of a shared uniform buffer.
#[derive(Clone, Debug)]
pub(crate) struct Uniform {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Uniform {
    /// The binding of the slice.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

impl UniformArena {
    /// Places `bytes` at the next `align`ed offset of the current chunk (a new chunk where it
    /// is full: the old one lives on in the bind groups that use it), written through `queue`
    /// ahead of any later submit, so before every launch that reads them.
    pub(super) fn place(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        align: u64,
        bytes: &[u8],
    ) -> Uniform {
        let size = (bytes.len() as u64).next_multiple_of(16);
        let mut offset = self.used.next_multiple_of(align);
        let buffer = match &self.buffer {
            Some(b) if offset + size <= b.size() => b.clone(),
            _ => {
                let chunk = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("launch parameters"),
                    size: UNIFORM_CHUNK_BYTES.max(size),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.buffer = Some(chunk.clone());
                offset = 0;
                chunk
            }
        };
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        queue.write_buffer(&buffer, offset, &padded);
        self.used = offset + size;
        Uniform {
            buffer,
            offset,
            size,
        }
    }
}
