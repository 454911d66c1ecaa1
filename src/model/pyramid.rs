//! The levels of one forward pass, still on the GPU.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::tensor::Tensor;
use crate::tensor_file::HostTensor;

/// The named levels of one forward, on the GPU, finest first: `p2`..`p5`, then `p6`/`p7` where
/// the layout has extra levels (`p3`.. for RetinaNet).
#[derive(Clone, Debug)]
pub struct Pyramid {
    pub(crate) levels: Vec<(String, Tensor)>,
}

impl Pyramid {
    /// The level called `name` (`"p2"`, `"p3"`, ...).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.levels.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Every level with its name, finest first.
    pub fn levels(&self) -> &[(String, Tensor)] {
        &self.levels
    }

    /// Every level's name and shape, finest first.
    pub fn shapes(&self) -> Vec<(String, [usize; 4])> {
        self.levels
            .iter()
            .map(|(n, t)| (n.clone(), t.shape()))
            .collect()
    }

    /// Copies every level to host memory, blocking the thread; see [`Pyramid::download_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, ctx: &GpuContext) -> Result<Vec<(String, HostTensor)>> {
        pollster::block_on(self.download_async(ctx))
    }

    /// Copies every level to host memory without blocking the thread.
    pub async fn download_async(&self, ctx: &GpuContext) -> Result<Vec<(String, HostTensor)>> {
        let mut out = Vec::with_capacity(self.levels.len());
        for (name, t) in &self.levels {
            let data = t.download_async(ctx).await?;
            out.push((name.clone(), HostTensor::new(t.shape().to_vec(), data)?));
        }
        Ok(out)
    }
}
