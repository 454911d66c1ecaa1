//! The bottom-up path: a ResNet of bottleneck blocks producing C2..C5.

use crate::graph::{Graph, Op, Value};
use crate::kernels::max_pool2d::MaxPool2dOptions;
use crate::model::layers::{relu, BatchNorm2d, Conv2d};
use crate::weights::VarBuilder;

/// Output channels of a bottleneck relative to its width.
pub const EXPANSION: usize = 4;

/// A bottleneck block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand, each followed by batch
/// norm, plus a 1x1 conv + batch norm shortcut where the shape changes; ReLU after the sum.
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
    name: String,
}

impl Bottleneck {
    /// Reads `conv1..3`, `bn1..3` and, where the shape changes, the projection shortcut's conv
    /// and batch norm as `{shortcut_name}.0` / `{shortcut_name}.1` (`shortcut` in the seed's names,
    /// `downsample` in torchvision's).
    pub fn new(
        vb: &VarBuilder,
        in_planes: usize,
        planes: usize,
        stride: usize,
        eps: f32,
        shortcut_name: &str,
    ) -> Self {
        let out = EXPANSION * planes;
        let shortcut = (stride != 1 || in_planes != out).then(|| {
            (
                Conv2d::new(
                    &vb.pp(shortcut_name).pp(0),
                    in_planes,
                    out,
                    1,
                    stride,
                    0,
                    false,
                ),
                BatchNorm2d::new(&vb.pp(shortcut_name).pp(1), out, eps),
            )
        });
        Bottleneck {
            conv1: Conv2d::new(&vb.pp("conv1"), in_planes, planes, 1, 1, 0, false),
            bn1: BatchNorm2d::new(&vb.pp("bn1"), planes, eps),
            conv2: Conv2d::new(&vb.pp("conv2"), planes, planes, 3, stride, 1, false),
            bn2: BatchNorm2d::new(&vb.pp("bn2"), planes, eps),
            conv3: Conv2d::new(&vb.pp("conv3"), planes, out, 1, 1, 0, false),
            bn3: BatchNorm2d::new(&vb.pp("bn3"), out, eps),
            shortcut,
            name: vb.prefix().to_string(),
        }
    }

    /// Records the block applied to `x`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        // The shortcut first, so that the residual is ready when the main path's last conv runs
        // and the add can fuse into that conv's epilogue.
        let identity = match &self.shortcut {
            Some((conv, bn)) => {
                let s = conv.forward(g, x);
                bn.forward(g, s)
            }
            None => x,
        };
        let y = self.conv1.forward(g, x);
        let y = self.bn1.forward(g, y);
        let y = relu(g, y);
        let y = self.conv2.forward(g, y);
        let y = self.bn2.forward(g, y);
        let y = relu(g, y);
        let y = self.conv3.forward(g, y);
        let y = self.bn3.forward(g, y);
        let sum = g.push(format!("{}.add", self.name), Op::Add, &[y, identity]);
        relu(g, sum)
    }
}

/// The backbone: stem (7x7/2 conv, batch norm, ReLU, 3x3/2 max pool) and four layers of
/// bottlenecks with widths 64, 128, 256, 512 and strides 1, 2, 2, 2.
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Bottleneck>>,
}

/// Bottleneck width of each layer.
pub const LAYER_WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// Channels of C2..C5 (`level` 0..4): each layer's bottleneck width times the expansion.
pub fn level_channels(level: usize) -> usize {
    LAYER_WIDTHS[level] * EXPANSION
}

impl ResNet {
    /// Reads `conv1`, `bn1` and `layer1`..`layer4` with `blocks` bottlenecks each; `shortcut_name`
    /// names the projection shortcuts (see [`Bottleneck::new`]).
    pub fn new(vb: &VarBuilder, blocks: [usize; 4], eps: f32, shortcut_name: &str) -> Self {
        let mut in_planes = 64;
        let mut layers = Vec::with_capacity(4);
        for (l, (&width, &count)) in LAYER_WIDTHS.iter().zip(&blocks).enumerate() {
            let vb_layer = vb.pp(format!("layer{}", l + 1));
            let first_stride = if l == 0 { 1 } else { 2 };
            let layer = (0..count)
                .map(|b| {
                    let stride = if b == 0 { first_stride } else { 1 };
                    let block = Bottleneck::new(
                        &vb_layer.pp(b),
                        in_planes,
                        width,
                        stride,
                        eps,
                        shortcut_name,
                    );
                    in_planes = width * EXPANSION;
                    block
                })
                .collect();
            layers.push(layer);
        }
        ResNet {
            conv1: Conv2d::new(&vb.pp("conv1"), 3, 64, 7, 2, 3, false),
            bn1: BatchNorm2d::new(&vb.pp("bn1"), 64, eps),
            layers,
        }
    }

    /// Records the backbone on `x` and returns [C2, C3, C4, C5].
    pub fn forward(&self, g: &mut Graph, x: Value) -> [Value; 4] {
        g.set_stage("stem");
        let y = self.conv1.forward(g, x);
        let y = self.bn1.forward(g, y);
        let y = relu(g, y);
        let mut y = g.push(
            "maxpool",
            Op::MaxPool2d(MaxPool2dOptions::new(3, 2, 1)),
            &[y],
        );
        let mut c = [0; 4];
        for (l, layer) in self.layers.iter().enumerate() {
            g.set_stage(format!("layer{}", l + 1));
            for block in layer {
                y = block.forward(g, y);
            }
            c[l] = y;
        }
        c
    }
}
