//! The bottom-up path: torchvision's ResNet family (basic blocks for ResNet-18/34; bottlenecks,
//! grouped in ResNeXt and widened in Wide ResNet, for the rest) producing C2..C5.

use crate::graph::ops::{Add, MaxPool2d, MaxPool2dOptions};
use crate::graph::{Graph, Value};
use crate::model::config::{Block, FpnConfig};
use crate::model::layers::{relu, BatchNorm2d, Conv2d};
use crate::weights::VarBuilder;

/// One residual block: its convs and batch norms in order (a ReLU after each but the last), and
/// a 1x1 conv + batch norm projection shortcut where the shape changes; ReLU after the sum.
pub struct ResidualBlock {
    main: Vec<(Conv2d, BatchNorm2d)>,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
    name: String,
}

/// Where a block sits and what it reads: its layer's index (0..4), its input channels and
/// stride.
#[derive(Clone, Copy)]
struct BlockPlace {
    level: usize,
    in_planes: usize,
    stride: usize,
}

impl ResidualBlock {
    /// Reads a block of `config.block` type at `place`: `conv1..2`/`bn1..2` (basic) or
    /// `conv1..3`/`bn1..3` (bottleneck, the 3x3 carrying the stride and the groups) and, where
    /// the shape changes, the shortcut as `{shortcut_name}.0` / `{shortcut_name}.1` (`shortcut`
    /// in the seed's names, `downsample` in torchvision's).
    fn new(vb: &VarBuilder, config: &FpnConfig, place: BlockPlace, shortcut_name: &str) -> Self {
        let BlockPlace {
            level,
            in_planes,
            stride,
        } = place;
        let eps = config.bn_eps;
        let out = config.level_channels(level);
        let width = config.block_width(level);
        let pair = |name: usize, conv: Conv2d, channels: usize| {
            (
                conv,
                BatchNorm2d::new(&vb.pp(format!("bn{name}")), channels, eps),
            )
        };
        let conv = |i: usize| vb.pp(format!("conv{i}"));
        let main = match config.block {
            Block::Basic => vec![
                pair(
                    1,
                    Conv2d::new(&conv(1), in_planes, out, 3, stride, 1, false),
                    out,
                ),
                pair(2, Conv2d::new(&conv(2), out, out, 3, 1, 1, false), out),
            ],
            Block::Bottleneck => vec![
                pair(
                    1,
                    Conv2d::new(&conv(1), in_planes, width, 1, 1, 0, false),
                    width,
                ),
                pair(
                    2,
                    Conv2d::grouped(&conv(2), width, width, 3, stride, 1, config.groups),
                    width,
                ),
                pair(3, Conv2d::new(&conv(3), width, out, 1, 1, 0, false), out),
            ],
        };
        let shortcut = (stride != 1 || in_planes != out).then(|| {
            let vb = vb.pp(shortcut_name);
            (
                Conv2d::new(&vb.pp(0), in_planes, out, 1, stride, 0, false),
                BatchNorm2d::new(&vb.pp(1), out, eps),
            )
        });
        ResidualBlock {
            main,
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
        let mut y = x;
        for (i, (conv, bn)) in self.main.iter().enumerate() {
            y = conv.forward(g, y);
            y = bn.forward(g, y);
            if i + 1 < self.main.len() {
                y = relu(g, y);
            }
        }
        let sum = g.push(format!("{}.add", self.name), Add, &[y, identity]);
        relu(g, sum)
    }
}

/// The backbone: stem (7x7/2 conv, batch norm, ReLU, 3x3/2 max pool) and `config.depth()` of
/// the four layers, with base widths 64, 128, 256, 512 and strides 1, 2, 2, 2.
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<ResidualBlock>>,
}

impl ResNet {
    /// Reads `conv1` (with `config.in_channels` inputs), `bn1` and the layers `config` builds;
    /// `shortcut_name` names the projection shortcuts (see [`ResidualBlock`]).
    pub fn new(vb: &VarBuilder, config: &FpnConfig, shortcut_name: &str) -> Self {
        let mut in_planes = 64;
        let mut layers = Vec::with_capacity(4);
        for (level, &count) in config.blocks.iter().enumerate().take(config.depth()) {
            let vb_layer = vb.pp(format!("layer{}", level + 1));
            let layer = (0..count)
                .map(|b| {
                    let stride = if b == 0 && level > 0 { 2 } else { 1 };
                    let place = BlockPlace {
                        level,
                        in_planes,
                        stride,
                    };
                    in_planes = config.level_channels(level);
                    ResidualBlock::new(&vb_layer.pp(b), config, place, shortcut_name)
                })
                .collect();
            layers.push(layer);
        }
        ResNet {
            conv1: Conv2d::new(&vb.pp("conv1"), config.in_channels, 64, 7, 2, 3, false),
            bn1: BatchNorm2d::new(&vb.pp("bn1"), 64, config.bn_eps),
            layers,
        }
    }

    /// Records the backbone on `x` and returns C2 and up, one per layer built.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Vec<Value> {
        g.set_stage("stem");
        let y = self.conv1.forward(g, x);
        let y = self.bn1.forward(g, y);
        let y = relu(g, y);
        let mut y = g.push("maxpool", MaxPool2d(MaxPool2dOptions::new(3, 2, 1)), &[y]);
        let mut c = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            g.set_stage(format!("layer{}", l + 1));
            for block in layer {
                y = block.forward(g, y);
            }
            c.push(y);
        }
        c
    }
}
